"""Data: datasets built into ArrayRecord with TFDS, tokenizers, and the grain input pipeline.

Knows nothing of models or training.
"""
