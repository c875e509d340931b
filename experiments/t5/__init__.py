"""T5 1.1 encoder-decoder."""
