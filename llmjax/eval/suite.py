"""The probe suite's declaration: `config.evals` (name -> {type, options}), its defaults, and the
check of every entry by its probe type's own schema. Imports no run, no config and no jax, so
the config checker (`llmjax.config`) can use it before anything is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmjax.errors import UserError
from llmjax.eval.tasks import KS, TASK_TYPES, build_task, check_options


def default_evals() -> dict[str, dict[str, Any]]:
    """The default suite: every episode kind of the default corpus at k in KS (associative recall,
    off in the default mix, is probed by the configs that train it), the sentence and facts
    tasks, the ICL score, induction heads and validation perplexity: ~700 records per checkpoint.
    On 2 CPU cores, for experiments/configs/tiny.py: ~7 s for the first checkpoint (compilation
    included), ~3.5 s for each further one of the same run (the compiled programs are reused)."""
    from llmjax.data.synthetic import SyntheticConfig

    weights = SyntheticConfig().episode_weights()
    out: dict[str, dict[str, Any]] = {
        kind: {"type": "episode", "kind": kind, "ks": list(KS), "n": 32}
        for kind, w in weights.items() if w > 0}
    out["sentence"] = {"type": "sentence", "ks": list(KS), "n": 16}
    out["facts"] = {"type": "facts", "n": 64}
    # The 16 most popular entities' facts: seen most often in training (Zipfian popularity).
    out["facts_popular"] = {"type": "facts", "n": 64, "top_entities": 16}
    out["icl"] = {"type": "icl", "n": 64}
    out["induction"] = {"type": "induction", "n_seqs": 16}
    out["perplexity"] = {"type": "perplexity", "n": 32}
    return out


def _as_dict(x: Any) -> Any:
    return x.to_dict() if hasattr(x, "to_dict") else x


def resolve_evals(evals: Mapping[str, Any] | None, tasks: Sequence[str] | None = None, *,
                  tasks_field: str = "--tasks", max_len: int | None = None
                  ) -> dict[str, dict[str, Any]]:
    """The suite to run: `evals` (or the defaults when empty), restricted to `tasks`; an unknown
    task is a UserError naming `tasks_field`, where the names came from. Every entry is checked
    by `check_evals` (with `max_len`, the model's window, when given)."""
    evals = _as_dict(evals) or {}
    if not isinstance(evals, Mapping):
        raise UserError(f"config.evals must map probe names to settings, got "
                        f"{type(evals).__name__}")
    suite: dict[str, dict[str, Any]] = {}
    for key, value in (evals or default_evals()).items():
        value = _as_dict(value)
        if not isinstance(value, Mapping):
            raise UserError(f"evals.{key}={value!r}: allowed: a mapping {{type: ..., options}}")
        suite[str(key)] = dict(value)
    check_evals(suite, max_len=max_len)
    if tasks:
        unknown = [t for t in tasks if t not in suite]
        if unknown:
            raise UserError(f"{tasks_field}: unknown probe(s) {', '.join(unknown)}; this run's "
                            f"suite: {', '.join(suite)}")
        suite = {t: suite[t] for t in tasks}
    return suite


# Options of the probe types that are not tasks (the tasks' own: tasks.TASK_OPTIONS).
OPTIONS = {"icl": {"n", "early", "late"}, "induction": {"n_seqs", "seq_len", "seed"},
           "perplexity": {"n"}}
PROBE_TYPES = (*TASK_TYPES, *OPTIONS)


def check_evals(suite: Mapping[str, Mapping[str, Any]], *, max_len: int | None = None) -> None:
    """UserError naming the first bad entry of a suite, ``evals.<name>.<option>=<value>`` with
    the allowed values, so a typo fails before training or probing starts, not at the first
    checkpoint. Each entry is checked by its type's schema (`tasks.SCHEMAS`: option names, types,
    ranges, rules between options); each task is then built on the default world and asked for
    a couple of documents and its largest-k prompt (~0.1 s for the default suite). `max_len`
    (the window, min(data.seq_len, model.max_seq_len)) adds the checks that depend on it: the
    icl positions and the induction sequence length."""
    from llmjax.data.synthetic import SyntheticConfig, build_world
    from llmjax.data.tokenizer import ByteTokenizer
    from llmjax.eval.tasks import check_spec

    world = tokenizer = None
    for name, spec in suite.items():
        if not isinstance(spec, Mapping):
            raise UserError(f"evals.{name}={spec!r}: allowed: a mapping {{type: ..., options}}")
        if spec.get("type") not in PROBE_TYPES:
            raise UserError(f"evals.{name}.type={spec.get('type')!r}: choose from "
                            f"{', '.join(PROBE_TYPES)}")
        kind = spec["type"]
        if kind in OPTIONS:  # this module's own probes: option names as declared above
            check_options(name, kind, spec, OPTIONS[kind])
        check_spec(name, spec)
        if kind in TASK_TYPES:
            world = world or build_world(SyntheticConfig())
            tokenizer = tokenizer or ByteTokenizer()
            # What probing does, on two documents: draw episodes, fit the largest-k prompt.
            task = build_task(name, {**spec, "n": min(int(spec.get("n", 2)), 2)}, world)
            task.items(max(task.ks), tokenizer, max_len or 1 << 16)
        elif max_len is not None:
            _check_window(name, spec, int(max_len))


def _check_window(name: str, spec: Mapping[str, Any], max_len: int) -> None:
    """The options of icl / induction that must fit the model's window of max_len tokens."""
    window = f"the window is {max_len} tokens"
    if spec["type"] == "icl":
        from llmjax.eval.icl import default_icl_positions

        if max_len < 2:
            raise UserError(f"evals.{name}: the icl score needs a window of >= 2 tokens; {window}")
        early_default, late_default = default_icl_positions(max_len)
        early = int(spec.get("early") or early_default)
        late = int(spec.get("late") or late_default)
        if spec.get("late") and not early < late <= max_len:
            raise UserError(f"evals.{name}.late={late}: allowed: an integer in "
                            f"{early + 1}..{max_len} (after early={early}; {window}) "
                            "or 0 = scaled to the window")
        if spec.get("early") and not 1 <= early < late:
            raise UserError(f"evals.{name}.early={early}: allowed: an integer in "
                            f"1..{late - 1} (before late={late}; {window}) "
                            "or 0 = scaled to the window")
    elif spec["type"] == "induction":
        most = (max_len - 1) // 2  # BOS + the sequence twice
        seq_len = spec.get("seq_len") or 0
        if most < 1 or seq_len > most:
            raise UserError(f"evals.{name}.seq_len={seq_len}: allowed: an integer in 1..{most} "
                            f"(BOS and the sequence twice must fit; {window}) or 0 = automatic")


__all__ = ["OPTIONS", "PROBE_TYPES", "check_evals", "default_evals", "resolve_evals"]
