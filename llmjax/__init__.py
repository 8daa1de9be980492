"""llmjax: scaling-law research in JAX/Flax NNX.

    import llmjax
    model, tokenizer = llmjax.load("runs/tiny")            # model(tokens) -> logits
    gen = llmjax.pipeline("text-generation", model="runs/tiny")

`load` and `pipeline` live in llmjax.generate.api; they are imported on first use, so
`import llmjax` alone does not import jax.
"""

_LAZY = {"load": "llmjax.generate.api", "pipeline": "llmjax.generate.api"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmjax' has no attribute {name!r}")


__all__ = ["load", "pipeline"]
