"""T5 1.1 encoder-decoder and its Amos settings."""
