"""BERT, RoPE and relative-position (RPE) masked-LM encoders, as the reference builds them."""
