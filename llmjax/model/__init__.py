"""The decoder-only transformer: config, model, parameter and FLOP counts."""

from llmjax.model.config import ModelConfig
from llmjax.model.transformer import (
    Transformer,
    attention_weights,
    convert_layout,
    init_model,
    reference_attention,
)

__all__ = [
    "ModelConfig",
    "Transformer",
    "attention_weights",
    "convert_layout",
    "init_model",
    "reference_attention",
]
