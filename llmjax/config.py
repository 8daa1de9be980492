"""Experiment configs: `file.py[:arg]` + `--config.a.b=v` overrides, validated before compiling.

A config is an `ml_collections.ConfigDict` returned by `get_config(arg=None)` in a Python file
(big_vision style). It has four sections plus top-level training keys:

  model      fields of `llmjax.model.ModelConfig` (`vocab_size` 0 = take it from the tokenizer)
  data       fields of `llmjax.data.pipeline.DataConfig` (`batch_size` is GLOBAL, in sequences)
  optimizer  AdamW + schedule (see `OPTIMIZER_FIELDS`)
  mesh       device-mesh axis sizes `data`, `fsdp`, `tensor` (-1 fills the remaining devices)
  top level  see `TRAIN_FIELDS`

`base_config()` holds every key with its default; config files start from it and change what they
need. `validate(config, num_devices)` raises `UserError` naming the first bad field and its allowed
values; it touches no file and no device.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ml_collections import config_dict

from llmjax.errors import UserError

ConfigDict = config_dict.ConfigDict

# name -> (type hint, default, one-line meaning). Types are checked by `validate`.
TRAIN_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "seed": (int, 0, "seed of parameter init and dropout (data has its own data.seed)"),
    "steps": (int, 1000, "optimizer steps to train (ignored when `tokens` is set)"),
    "tokens": (int | None, None, "train tokens; sets steps = ceil(tokens / (batch_size*seq_len))"),
    "microbatches": (int, 1, "gradient-accumulation microbatches per step (same jit, lax.scan)"),
    "z_loss": (float, 0.0, "weight of the z-loss, mean(logsumexp(logits)^2) (PaLM); 0 = off"),
    "eval_every": (int, 100, "evaluate every N steps and at the last step; 0 = never"),
    "eval_batches": (int, 4, "fixed validation batches per evaluation"),
    "log_every": (int, 10, "log train metrics every N steps and at the last step"),
    "checkpoint_every": (int, 500, "async checkpoint every N steps and at the last step; 0 = last"),
    "keep_checkpoints": (int, 2, "keep the last K checkpoints"),
    "keep_every": (int, 0, "also keep every M-th step's checkpoint forever; 0 = none"),
    "log_spaced_checkpoints": (bool, False, "also save+keep steps 1,2,4,8,...,512 (Pythia-style)"),
    "on_nan": (Literal["stop", "skip"], "stop", "NaN/Inf loss/grads: stop run / skip step"),
    "distributed": (str, "auto", "jax.distributed.initialize: 'true', 'false' or 'auto' (= when "
                    "a SLURM/MPI/TPU multi-process environment is detected); case-insensitive"),
    "tensorboard": (bool, True, "write TensorBoard events when tensorboardX is installed"),
    "evals": (dict, {}, "probe suite of `llmjax probe`, name -> {type, ...} (llmjax.eval.probe); "
              "empty = its default suite"),
    "probe_checkpoints": (bool, False, "run the probe suite (config.evals) on the parameters at "
                          "every checkpoint save and merge the records into WORKDIR/probes.jsonl"),
    "probe_tasks": (str, "", "comma-separated probe names to run during training (names of "
                    "config.evals or of the default suite); '' = the whole suite"),
}

OPTIMIZER_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "lr": (float, 3e-4, "peak learning rate"),
    "warmup_steps": (int, 100, "linear warmup from 0 to lr"),
    "schedule": (Literal["cosine", "linear", "constant"], "cosine", "decay after warmup"),
    "min_lr_ratio": (float, 0.1, "final lr = lr * min_lr_ratio"),
    "b1": (float, 0.9, "Adam beta1"),
    "b2": (float, 0.95, "Adam beta2"),
    "eps": (float, 1e-8, "Adam epsilon"),
    "weight_decay": (float, 0.1, "decoupled weight decay (never on norms/biases)"),
    "decay_embeddings": (bool, False, "apply weight decay to embedding tables too"),
    "grad_clip": (float, 1.0, "clip the global gradient norm to this; 0 = off"),
}

MESH_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "data": (int, -1, "pure data-parallel axis size (-1 = fill)"),
    "fsdp": (int, 1, "fully-sharded data-parallel axis size (-1 = fill)"),
    "tensor": (int, 1, "tensor-parallel axis size (-1 = fill)"),
}

SECTIONS = ("model", "data", "optimizer", "mesh")
DISTRIBUTED_VALUES = ("auto", "true", "false", "yes", "no", "1", "0")


# --------------------------------------------------------------------------- schema


def _model_dataclass() -> type:
    from llmjax.model import ModelConfig

    return ModelConfig


def _data_dataclass() -> type:
    from llmjax.data.pipeline import DataConfig

    return DataConfig


def _dataclass_schema(cls: type) -> dict[str, tuple[Any, Any, str]]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        out[f.name] = (hints.get(f.name, Any), default, "")
    return out


def schema() -> dict[str, dict[str, tuple[Any, Any, str]]]:
    """Section name ('' = top level) -> field -> (type hint, default, meaning)."""
    return {
        "": TRAIN_FIELDS,
        "model": _dataclass_schema(_model_dataclass()),
        "data": _dataclass_schema(_data_dataclass()),
        "optimizer": OPTIMIZER_FIELDS,
        "mesh": MESH_FIELDS,
    }


def _non_none(hint: Any) -> Any:
    """`X | None` -> X (the type a None-valued placeholder must accept on the command line)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _non_none(args[0])
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    return hint


def _default_value(hint: Any, default: Any) -> Any:
    if default is None:
        # A typed placeholder so `--config.x=v` can set a field whose default is None.
        inner = _non_none(hint)
        return config_dict.placeholder(inner if isinstance(inner, type) else object)
    if dataclasses.is_dataclass(default):
        return ConfigDict(dataclasses.asdict(default))
    if isinstance(default, Mapping):
        return ConfigDict(dict(default))
    return default


def base_config() -> ConfigDict:
    """Every config key with its default; config files start here (`vocab_size` 0 = tokenizer's)."""
    c = ConfigDict()
    for section, fields in schema().items():
        target = c
        if section:
            c[section] = ConfigDict()
            target = c[section]
        for name, (hint, default, _) in fields.items():
            if default is dataclasses.MISSING:
                continue
            target[name] = _default_value(hint, default)
    if "vocab_size" not in c.model:
        c.model.vocab_size = 0
    return c


# --------------------------------------------------------------------------- loading


def resolve_config_path(path: str) -> str:
    """A config path as given, or a bare name `tiny` -> experiments/configs/tiny.py in the repo."""
    if os.path.exists(path):
        return path
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(repo, path),
                      os.path.join(repo, "experiments", "configs", path),
                      os.path.join(repo, "experiments", "configs", path + ".py")):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"--config: file {path!r} not found (give a path to a .py config file, "
                    "e.g. experiments/configs/tiny.py)")


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg if len(msg) < 400 else msg[:400] + " ..."


def normalize_override(o: str) -> str:
    o = o.strip()
    if o.startswith("--config."):
        return o
    if o.startswith("config."):
        return "--" + o
    return "--config." + o.lstrip("-")


def parse_flags(argv: Sequence[str], extra_flags: Mapping[str, str] | None = None
                ) -> tuple[ConfigDict, dict[str, str | None]]:
    """Parses `--config=FILE[:arg] --config.a.b=v ... --<extra>=v` with absl `config_flags`.

    Returns (config, {extra flag: value}). Every absl/config error becomes a one-line `UserError`.
    `extra_flags`: name -> help of additional string flags (e.g. `workdir`).
    """
    from absl import flags
    from ml_collections import config_flags

    argv = list(argv)
    spec = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
            argv[i:i + 2] = [f"--config={spec}"]
            break
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
            break
    if spec is None:
        raise UserError("--config is required (e.g. --config=experiments/configs/tiny.py)")
    path, _, arg = spec.partition(":")
    resolved = resolve_config_path(path)
    full_spec = resolved + (":" + arg if arg else "")
    argv = [f"--config={full_spec}" if a.startswith("--config=") else a for a in argv]
    argv = ["llmjax"] + argv
    _check_override_paths(full_spec, argv)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    for name, help_ in (extra_flags or {}).items():
        flags.DEFINE_string(name, None, help_, flag_values=fv)
    try:
        fv(argv, known_only=False)
        config = fv["config"].value
    except flags.UnrecognizedFlagError as e:
        bad = getattr(e, "flagname", None) or _one_line(e)
        if bad.startswith("config."):
            raise UserError(f"--{bad}: no such config key") from None
        raise UserError(f"unknown flag --{bad}; allowed: --config, --config.<key>=<value>"
                        + "".join(f", --{n}" for n in (extra_flags or {}))) from None
    except flags.IllegalFlagValueError as e:
        raise UserError(_one_line(e)) from None
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        raise UserError(f"--config: {_one_line(e)}") from None
    except OSError as e:
        raise UserError(f"--config={spec}: cannot load: {_one_line(e)}") from None
    except SystemExit as e:  # absl may exit on --help and similar; keep the one-line contract
        raise UserError(f"flag parsing stopped (exit {e.code})") from None
    except Exception as e:  # an exception inside the config file's get_config
        raise UserError(f"--config={spec}: get_config failed: {_one_line(e)}") from None
    if not isinstance(config, ConfigDict):
        raise UserError(f"--config={spec}: get_config must return an ml_collections.ConfigDict, "
                        f"got {type(config).__name__}")
    extras = {n: fv[n].value for n in (extra_flags or {})}
    return config, extras


def _check_override_paths(spec: str, argv: list[str]) -> None:
    """An override of a key the config does not have: one line naming it and the allowed keys.

    (absl reports it as a bare KeyError; the config file is loaded once more to check paths.)
    """
    overrides = [a.split("=", 1)[0][len("--config."):] for a in argv
                 if a.startswith("--config.")]
    if not overrides:
        return
    from ml_collections import config_flags

    try:
        config = config_flags.config_flags.ConfigFileFlagParser("config", lock_config=False).parse(
            spec)
    except Exception:  # noqa: BLE001 - the real parse below reports loading errors properly
        return
    if not isinstance(config, ConfigDict):
        return
    for path in overrides:
        node: Any = config
        parts = path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ConfigDict) or part not in node:
                where = ".".join(parts[:i]) or "the top level"
                keys = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "none"
                raise UserError(f"--config.{path}: no such config key; keys in {where}: {keys}")
            node = node[part]


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Loads `path/to/config.py[:arg]` and applies overrides ("model.d_model=256" or "--config.…").

    Same parser as the command line, so the sweep runner and `llmjax train` agree exactly.
    Not validated: call `validate(config, num_devices)` before use.
    """
    config, _ = parse_flags([f"--config={spec}", *(normalize_override(o) for o in overrides)])
    return config


def to_json(config: ConfigDict) -> str:
    """The config as indented JSON (written to `<workdir>/config.json`)."""
    return config.to_json_best_effort(indent=2, sort_keys=True)


# --------------------------------------------------------------------------- validation


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if hint is Any:
        return "any value"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list) or origin is Sequence:
        if not isinstance(value, tuple | list):
            return False
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        if args and len(args) == len(value):
            return all(_type_ok(v, a) for v, a in zip(value, args, strict=True))
        return not args
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping | ConfigDict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint we cannot check (e.g. a forward reference): leave it to the consumer


def _fill_mesh(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Mesh sizes with the single -1 filled; raises UserError naming the mesh fields."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, v in sizes.items():
        if v == 0 or v < -1:
            raise UserError(f"mesh.{name}={v}: allowed values are positive integers or -1 (fill)")
    fill = [n for n, v in sizes.items() if v == -1]
    if len(fill) > 1:
        raise UserError(f"mesh.{fill[1]}=-1: at most one mesh axis may be -1 "
                        f"(mesh.{fill[0]} is already -1)")
    known = math.prod(v for v in sizes.values() if v != -1)
    divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
    if fill:
        if num_devices % known:
            raise UserError(
                f"mesh: {' x '.join(f'{n}={v}' for n, v in sizes.items())} cannot fill "
                f"{num_devices} devices; the fixed axes' product must divide {num_devices} "
                f"(allowed products: {divisors})")
        sizes[fill[0]] = num_devices // known
    elif known != num_devices:
        raise UserError(
            f"mesh.data*mesh.fsdp*mesh.tensor = {data}*{fsdp}*{tensor} = {known} does not match "
            f"the {num_devices} devices; allowed: sizes whose product is {num_devices} "
            "(or set one axis to -1 to fill)")
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def mesh_shape(config: ConfigDict, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes with -1 filled for `num_devices` devices."""
    m = config.mesh
    return _fill_mesh(m.data, m.fsdp, m.tensor, num_devices)


def total_steps(config: ConfigDict) -> int:
    """Optimizer steps of the run: `steps`, or ceil(tokens / tokens-per-step) if `tokens` is set."""
    if config.get("tokens"):
        return math.ceil(config.tokens / (config.data.batch_size * config.data.seq_len))
    return int(config.steps)


def _check_section(section: str, values: Any, fields: Mapping[str, tuple[Any, Any, str]]) -> None:
    prefix = f"{section}." if section else ""
    if not isinstance(values, ConfigDict | Mapping):
        raise UserError(f"config field {section!r} must be a section (ConfigDict), "
                        f"got {type(values).__name__}")
    for key in values.keys():
        if section == "" and key in SECTIONS:
            continue
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise UserError(f"unknown config key {prefix}{key}; allowed keys in "
                            f"{section or 'the top level'}: {allowed}")
    for key, (hint, default, _) in fields.items():
        if key not in values:
            if default is dataclasses.MISSING:
                raise UserError(f"config key {prefix}{key} is required ({_describe(hint)})")
            continue
        value = values[key]
        if not _type_ok(value, hint):
            raise UserError(f"config field {prefix}{key}={value!r} has the wrong type; "
                            f"allowed: {_describe(hint)}")


def _positive(config: ConfigDict, dotted: str, minimum: int = 1) -> None:
    value = config
    for part in dotted.split("."):
        value = value[part]
    if value is not None and value < minimum:
        raise UserError(f"config field {dotted}={value}: allowed values are integers >= {minimum}")


def validate(config: ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """Checks keys, types and cross-field constraints; raises `UserError` on the first problem.

    `num_devices`: global device count the mesh must match. Pure: no files, no devices.
    """
    for section in SECTIONS:
        if section not in config:
            raise UserError(f"config section {section!r} is missing; required sections: "
                            f"{', '.join(SECTIONS)}")
    for section, fields in schema().items():
        _check_section(section, config[section] if section else config, fields)

    m, d, o = config.model, config.data, config.optimizer
    # Model shape constraints.
    for name in ("d_model", "n_layers", "n_heads"):
        if name in m:
            _positive(config, f"model.{name}")
    if m.d_model % m.n_heads:
        divisors = [h for h in range(1, m.d_model + 1) if m.d_model % h == 0]
        raise UserError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
                        f"allowed n_heads: divisors of {m.d_model} ({_short(divisors)})")
    n_kv = m.get("n_kv_heads")
    if n_kv is not None:
        if n_kv < 1 or m.n_heads % n_kv:
            divisors = [h for h in range(1, m.n_heads + 1) if m.n_heads % h == 0]
            raise UserError(f"model.n_kv_heads={n_kv}: model.n_heads={m.n_heads} must be divisible "
                            f"by it; allowed n_kv_heads: {divisors} (or None = n_heads)")
    if m.get("vocab_size") not in (None, 0) and m.vocab_size < 0:
        raise UserError(f"model.vocab_size={m.vocab_size}: allowed values are >= 1, "
                        "or 0 = take it from the tokenizer")
    # Data / batch.
    _positive(config, "data.seq_len")
    _positive(config, "data.batch_size")
    if "max_seq_len" in m and m.max_seq_len is not None and d.seq_len > m.max_seq_len:
        raise UserError(f"data.seq_len={d.seq_len} exceeds model.max_seq_len={m.max_seq_len}; "
                        f"allowed: seq_len <= {m.max_seq_len}")
    # Training schedule.
    _positive(config, "steps")
    _positive(config, "microbatches")
    _positive(config, "log_every")
    _positive(config, "eval_batches")
    _positive(config, "keep_checkpoints")
    for name in ("eval_every", "checkpoint_every", "keep_every"):
        _positive(config, name, minimum=0)
    _positive(config, "optimizer.warmup_steps", minimum=0)
    if config.get("tokens") is not None:
        _positive(config, "tokens")
    if o.lr <= 0:
        raise UserError(f"config field optimizer.lr={o.lr}: allowed values are > 0")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise UserError(f"optimizer.min_lr_ratio={o.min_lr_ratio}: allowed values are in [0, 1]")
    for name in ("b1", "b2"):
        if not 0.0 <= o[name] < 1.0:
            raise UserError(f"optimizer.{name}={o[name]}: allowed values are in [0, 1)")
    for name in ("weight_decay", "grad_clip", "eps"):
        if o[name] < 0:
            raise UserError(f"optimizer.{name}={o[name]}: allowed values are >= 0")
    if config.z_loss < 0:
        raise UserError(f"config field z_loss={config.z_loss}: allowed values are >= 0")
    # Mesh and how the batch splits over it.
    if num_devices < 1:
        raise UserError(f"no devices available (num_devices={num_devices})")
    data_size, fsdp_size, _ = mesh_shape(config, num_devices)
    dp = data_size * fsdp_size
    if d.batch_size % dp:
        raise UserError(
            f"data.batch_size={d.batch_size} is not divisible by the data-parallel size "
            f"mesh.data*mesh.fsdp={dp}; allowed: multiples of {dp}")
    if d.batch_size % process_count:
        raise UserError(f"data.batch_size={d.batch_size} is not divisible by the "
                        f"{process_count} processes; allowed: multiples of {process_count}")
    mb = config.microbatches
    if d.batch_size % mb:
        raise UserError(f"microbatches={mb} does not divide data.batch_size={d.batch_size}; "
                        f"allowed: divisors of {d.batch_size}")
    if (d.batch_size // mb) % dp:
        raise UserError(
            f"microbatches={mb}: each microbatch of {d.batch_size // mb} sequences must split over "
            f"the data-parallel size {dp}; allowed: microbatches dividing {d.batch_size // dp}")
    if str(config.distributed).strip().lower() not in DISTRIBUTED_VALUES:
        raise UserError(f"config field distributed={config.distributed!r}: allowed values are "
                        "'auto', 'true', 'false' (case-insensitive)")
    # Last, the model's own checks (it knows its enums: positions, norm, mlp, dtypes, ...).
    model_dict = config.model.to_dict()
    if not model_dict.get("vocab_size"):
        model_dict["vocab_size"] = 256  # stand-in: the real size comes from the tokenizer
    _model_dataclass().from_dict(model_dict)
    # And the pipeline's (tokenizer spec, dataset name, ...); reads no data.
    _data_dataclass().from_config(config.data, process_count=process_count)
    # And the probe suite (config.evals, probe_tasks): a typo must not surface after training.
    if config.get("evals") or config.get("probe_checkpoints") or probe_task_names(config):
        _check_probe_tasks(config)


def probe_task_names(config: ConfigDict) -> list[str] | None:
    """config.probe_tasks as a list of probe names; None = the whole suite."""
    names = [t.strip() for t in str(config.get("probe_tasks") or "").split(",") if t.strip()]
    return names or None


def _check_probe_tasks(config: ConfigDict) -> None:
    from llmjax.eval.probe import resolve_evals  # lazy: eval imports neither train nor config

    # UserError naming the bad evals.<name> entry, or the unknown names of probe_tasks.
    resolve_evals(config.get("evals"), probe_task_names(config),
                  tasks_field=f"config field probe_tasks={config.get('probe_tasks')!r} "
                              "('' = all)")


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 12 else str(values[:12])[:-1] + ", ...]"
