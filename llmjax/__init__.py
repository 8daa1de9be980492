"""llmjax: scaling-law research in JAX/Flax NNX."""
