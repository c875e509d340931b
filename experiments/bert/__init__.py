"""BERT, RoPE and relative-position (RPE) masked-LM encoders and their Amos settings."""
