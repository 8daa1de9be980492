"""Evaluation: k-shot prompts and metrics in the lm-evaluation-harness conventions.

`prompts` builds contexts from documents, `metrics` scores what a model returned; both are pure
(no model, no JAX), so results computed here are comparable with lm-evaluation-harness numbers.
"""
