"""The decoder-only transformer: config, model, parameter and FLOP counts."""

from llmjax.model.config import ModelConfig
from llmjax.model.flops import FlopCounts, ParamCounts, flops_per_token, param_counts
from llmjax.model.transformer import (
    Transformer,
    attention_weights,
    convert_layout,
    init_model,
    reference_attention,
)

__all__ = [
    "FlopCounts",
    "ModelConfig",
    "ParamCounts",
    "Transformer",
    "attention_weights",
    "convert_layout",
    "flops_per_token",
    "init_model",
    "param_counts",
    "reference_attention",
]
