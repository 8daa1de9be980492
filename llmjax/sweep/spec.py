"""Sweep definitions: a config file's `get_sweep(arg)` -> named, validated points.

A sweep lives beside the config it sweeps (big_vision style): the file that defines
`get_config(arg=None)` also defines `get_sweep(arg=None)`, returning a list of override dicts
built with `sweep`, `product` and `zip`:

    def get_sweep(arg=None):
        return product(sweep("model.d_model", [64, 128]), sweep("optimizer.lr", [1e-3, 3e-3]))

Each dict maps dotted config keys (`model.d_model`) to values, applied to `get_config(arg)` exactly
as `--config.model.d_model=64` would be. Reserved keys, recorded but not passed to training:
  name        the run's directory name under `DIR/runs/` (default: a slug of the overrides + hash)
  budget      the FLOP budget of an iso-FLOP point (goes to the `budget` column of results.csv)
  seeds       replicates: a count S (seeds seed, seed+1, ...) or a list of seeds. The point
              becomes S member points `<name>_s<seed>` (each its own run directory, with
              `seed` set) trained together as ONE vmapped program (`llmjax train --seeds`);
              results and the report treat them as replicates of `<name>` (their `group`)
  meta.<key>  any other bookkeeping value
Derived settings (steps from a token budget, lr per size...) are computed in `get_sweep` itself,
so the dict written to `runs/<name>/overrides.json` says everything the run was given.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from llmjax.errors import UserError

RESERVED_KEYS = ("name", "budget", "seeds")
META_PREFIX = "meta."
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}$")
_SLUG_LEN = 48


# --------------------------------------------------------------------------- building sweeps


def sweep(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
    """One key over several values: sweep("a", [1, 2]) -> [{"a": 1}, {"a": 2}]."""
    return [{key: v} for v in values]


def _merge(dicts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if k in out and out[k] != v:
                raise ValueError(f"sweep key {k!r} is set twice ({out[k]!r} and {v!r})")
            out[k] = v
    return out


def product(*sweeps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Cartesian product, the last sweep varying fastest:
    product([{a:1},{a:2}], [{b:3},{b:4}]) -> [{a:1,b:3}, {a:1,b:4}, {a:2,b:3}, {a:2,b:4}]."""
    return [_merge(combo) for combo in itertools.product(*sweeps)]


def zip(*sweeps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:  # noqa: A001 - big_vision's name
    """Element-wise merge of equally long sweeps: zip([{a:1},{a:2}], [{b:3},{b:4}]) ->
    [{a:1,b:3}, {a:2,b:4}]."""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise ValueError(f"zip: sweeps have different lengths {[len(s) for s in sweeps]}")
    return [_merge(combo) for combo in builtins.zip(*sweeps, strict=True)]


# --------------------------------------------------------------------------- config helpers


def is_config_key(key: str) -> bool:
    """Keys passed to training as `--config.<key>=<value>` (not name / budget / meta.*)."""
    return key not in RESERVED_KEYS and not key.startswith(META_PREFIX)


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of the ConfigDict `config` with the dotted config keys of `overrides` set.

    For use inside `get_sweep` (e.g. to count the parameters of a point); reserved keys are
    ignored. Raises KeyError naming an unknown key.
    """
    out = copy.deepcopy(config)  # keeps typed placeholders (e.g. data.data_dir) overridable
    for key, value in overrides.items():
        if not is_config_key(key):
            continue
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node[part]
        if parts[-1] not in node:
            raise KeyError(f"no config key {key!r}")
        node[parts[-1]] = value
    return out


def _experiment(config: Any) -> Any:
    """An Experiment (llmjax.config), parsed from a ConfigDict when given one. (Imported here:
    `llmjax.sweep` helpers are imported by config files and by `llmjax results`, which should not
    pay for jax.)"""
    from llmjax.config import Experiment, parse_experiment

    return config if isinstance(config, Experiment) else parse_experiment(config)


def model_config(config: Any) -> Any:
    """The ModelConfig of an Experiment (or ConfigDict) with the tokenizer spec's vocabulary."""
    from llmjax.data.tokenizer import spec_vocab_size

    exp = _experiment(config)
    return exp.model_config(int(spec_vocab_size(exp.data.tokenizer)))


@functools.lru_cache(maxsize=1024)
def _counts(mcfg: Any, seq_len: int) -> tuple[Any, int]:
    from llmjax.model.flops import flops_per_token, param_counts

    return param_counts(mcfg), flops_per_token(mcfg, seq_len).training


def count_params(config: Any) -> Any:
    """`llmjax.model.flops.ParamCounts` of a ConfigDict's model (cached: sweeps ask repeatedly)."""
    return _counts(model_config(config), _experiment(config).data.seq_len)[0]


@dataclasses.dataclass(frozen=True)
class Cost:
    """Size and cost of a config: parameters, tokens, FLOPs (training, exact and 6ND)."""

    n_params: int
    n_non_embedding: int
    n_embedding: int
    flops_per_token: int  # training FLOPs per token incl. attention (llmjax.model.flops)
    steps: int
    tokens: int  # steps x batch_size x seq_len
    flops: float  # flops_per_token x tokens
    flops_6nd: float  # 6 x n_non_embedding x tokens


def cost(config: Any) -> Cost:
    """Parameter counts (no allocation) and training tokens/FLOPs of an Experiment (or
    ConfigDict)."""
    exp = _experiment(config)
    counts, fpt = _counts(model_config(exp), exp.data.seq_len)
    steps = exp.steps
    tokens = steps * exp.tokens_per_step
    return Cost(n_params=counts.total, n_non_embedding=counts.non_embedding,
                n_embedding=counts.embedding, flops_per_token=fpt, steps=steps, tokens=tokens,
                flops=float(fpt) * tokens, flops_6nd=6.0 * counts.non_embedding * tokens)


def steps_for_tokens(tokens: float, batch_size: int, seq_len: int, minimum: int = 1) -> int:
    """Optimizer steps that train on (at least) `tokens` tokens at batch_size x seq_len per step."""
    return max(minimum, math.ceil(tokens / (batch_size * seq_len)))


# --------------------------------------------------------------------------- names


def format_value(value: Any) -> str:
    """A value as `--config.k=<value>` text that ml_collections parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple | list):
        return repr(tuple(value))
    return str(value)


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return format_value(value)


def canonical(value: Any) -> Any:
    """Plain JSON-able Python values (numpy scalars -> int/float, tuples -> lists)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [canonical(v) for v in value]
    return value


def run_name(overrides: Mapping[str, Any]) -> str:
    """The run directory name: `overrides["name"]`, else a readable slug plus a 6-hex hash.

    E.g. {"model.d_model": 64, "model.n_layers": 2} -> "d_model64_n_layers2-<hash>". Stable: a
    pure function of the overrides; the hash keeps two points with equal slugs apart.
    """
    if "name" in overrides:
        name = str(overrides["name"])
        if not NAME_RE.match(name):
            raise UserError(f"sweep point name {name!r}: allowed are 1-100 characters "
                            "[A-Za-z0-9._=+-], starting with a letter or digit")
        return name
    parts = [f"{k.split('.')[-1]}{_short_value(v)}" for k, v in overrides.items()]
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)).strip("-._") or "point"
    digest = hashlib.sha1(json.dumps(canonical(dict(overrides)), sort_keys=True).encode())
    return f"{slug[:_SLUG_LEN]}-{digest.hexdigest()[:6]}"


# --------------------------------------------------------------------------- loading


@dataclasses.dataclass
class Point:
    """One run of a sweep: its name, the full override dict and the validated config."""

    name: str
    overrides: dict[str, Any]  # as get_sweep returned it (incl. name / budget / meta.*)
    config: Any  # ConfigDict after every override (validated)
    cost: Cost
    experiment: Any  # the llmjax.config.Experiment of `config`, parsed once by load_sweep
    group: str | None = None  # replicates (`seeds`): the name the members share

    @property
    def config_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.overrides.items() if is_config_key(k)}

    @property
    def budget(self) -> float | None:
        b = self.overrides.get("budget", self.overrides.get("meta.budget"))
        return None if b is None else float(b)

    def flags(self) -> list[str]:
        """`--config.<key>=<value>` for every config override of this point."""
        return [f"--config.{k}={format_value(v)}" for k, v in self.config_overrides.items()]


@dataclasses.dataclass
class Sweep:
    """A loaded sweep: the config spec the runs use, sweep-wide overrides and the points."""

    spec: str  # FILE[:arg] with FILE resolved to an absolute path
    extra: list[str]  # sweep-wide `--config.k=v` flags, applied after each point's overrides
    points: list[Point]


def resolve_spec(spec: str) -> tuple[str, str | None]:
    """'file.py[:arg]' -> (absolute path, arg or None); bare names search experiments/configs."""
    from llmjax import config as config_lib

    path, sep, arg = spec.partition(":")
    resolved = os.path.abspath(config_lib.resolve_config_path(path))
    return resolved, (arg if sep else None)


def load_module(path: str) -> Any:
    """Imports a config file as a fresh module (not cached in sys.modules)."""
    name = "llmjax_sweep_config_" + hashlib.sha1(path.encode()).hexdigest()[:8]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"--config={path}: cannot import it as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the user's file becomes one line
        raise UserError(f"--config={path}: import failed: {type(e).__name__}: "
                        f"{' '.join(str(e).split())[:300]}") from None
    return module


def get_points(spec: str) -> list[dict[str, Any]]:
    """The raw override dicts of `get_sweep(arg)` in the config file `spec` ('file.py[:arg]')."""
    path, arg = resolve_spec(spec)
    module = load_module(path)
    if not callable(getattr(module, "get_sweep", None)):
        raise UserError(f"--config={spec}: {os.path.basename(path)} has no get_sweep(arg); a "
                        "sweep config defines get_config(arg) and get_sweep(arg) -> list of dicts")
    try:
        points = module.get_sweep(arg)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--config={spec}: get_sweep failed: {type(e).__name__}: "
                        f"{' '.join(str(e).split())[:300]}") from None
    if not isinstance(points, list | tuple) or not points:
        raise UserError(f"--config={spec}: get_sweep must return a non-empty list of dicts, "
                        f"got {points!r:.80}")
    out = []
    for i, p in enumerate(points):
        if not isinstance(p, Mapping):
            raise UserError(f"--config={spec}: sweep point {i} is {type(p).__name__}, not a dict")
        out.append({str(k): canonical(v) for k, v in p.items()})
    return out


def load_sweep(spec: str, extra_overrides: Sequence[str] = (), num_devices: int = 1) -> Sweep:
    """Loads, names and validates every point of the sweep in `spec` before anything runs.

    `extra_overrides`: sweep-wide "key=value" / "--config.key=value" strings, applied after each
    point's own overrides (so they win). A bad point raises a one-line UserError naming the point
    and the field; names must be unique.
    """
    from llmjax import config as config_lib

    path, arg = resolve_spec(spec)
    full_spec = path + (f":{arg}" if arg is not None else "")
    extra = [config_lib.normalize_override(o) for o in extra_overrides]
    points: list[Point] = []
    seen: dict[str, int] = {}
    for i, overrides in enumerate(get_points(spec)):
        for key in overrides:
            if not key or key.startswith(".") or key.endswith("."):
                raise UserError(f"sweep point {i}: bad key {key!r}")
        try:
            name = run_name(overrides)
        except UserError as e:
            raise UserError(f"sweep point {i}: {e}") from None
        if name in seen:
            raise UserError(f"sweep points {seen[name]} and {i} have the same name {name!r}; "
                            "give them different 'name' keys or overrides")
        seen[name] = i
        members = [(name, None, dict(overrides))]
        if "seeds" in overrides:
            first = _point_config(full_spec, overrides, extra, num_devices, name)[1].train.seed
            seeds = _seeds(overrides["seeds"], first, name)
            members = [(f"{name}_s{seed}", name, {**overrides, "name": f"{name}_s{seed}",
                                                  "seed": seed}) for seed in seeds]
        for member, group, member_overrides in members:
            if member != name and member in seen:
                raise UserError(f"sweep point {name!r}: its member {member!r} has the name of "
                                "another point")
            seen[member] = i
            config, experiment = _point_config(full_spec, member_overrides, extra, num_devices,
                                               member)
            points.append(Point(name=member, overrides=member_overrides, config=config,
                                cost=cost(experiment), experiment=experiment, group=group))
    return Sweep(spec=full_spec, extra=extra, points=points)


def _point_config(spec: str, overrides: Mapping[str, Any], extra: Sequence[str],
                  num_devices: int, name: str) -> tuple[Any, Any]:
    """(ConfigDict, Experiment) of one point: `overrides`, then the sweep-wide `extra`."""
    from llmjax import config as config_lib

    flags = [f"--config.{k}={format_value(v)}" for k, v in overrides.items() if is_config_key(k)]
    try:
        config = config_lib.load_config(spec, [*flags, *extra])
        return config, config_lib.parse_experiment(config, num_devices)
    except UserError as e:
        raise UserError(f"sweep point {name!r}: {e}") from None


def _seeds(value: Any, first: int, name: str) -> list[int]:
    """A point's `seeds`: a count S -> first..first+S-1; a list -> itself (distinct ints >= 0)."""
    bad = UserError(f"sweep point {name!r}: seeds={value!r}; allowed: a count >= 1 or a list of "
                    "distinct integers >= 0")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        if value < 1:
            raise bad
        return [first + k for k in range(value)]
    if not isinstance(value, list) or not value or len(set(map(str, value))) != len(value) \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise bad
    return list(value)


__all__ = ["Cost", "Point", "Sweep", "apply_overrides", "canonical", "cost", "count_params",
           "format_value",
           "get_points", "is_config_key", "load_sweep", "model_config", "product",
           "resolve_spec", "run_name", "steps_for_tokens", "sweep", "zip"]
