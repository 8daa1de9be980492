"""Experiment configs: `file.py[:arg]` + `--config.a.b=v` overrides, parsed once into a typed
`Experiment` before anything is compiled or written.

A config file's `get_config(arg=None)` returns an `ml_collections.ConfigDict` (big_vision style)
with four sections plus top-level training keys:

  model      `llmjax.model.ModelConfig` (`vocab_size` 0 = take it from the tokenizer)
  data       `llmjax.data.pipeline.DataConfig` (`batch_size` is GLOBAL, in sequences)
  optimizer  `OptimizerConfig` (AdamW + schedule)
  mesh       `MeshConfig`: device-mesh axis sizes `data`, `fsdp`, `tensor` (-1 fills)
  finetune   `FinetuneConfig` (optional: init from a run, classification head, LoRA)
  top level  `TrainConfig` (steps, logging, checkpoints, ...) and `evals` (the probe suite)

`base_config()` holds every key with its default (derived from those dataclasses, so the
command line can set any of them); config files start from it. `parse_experiment(config)` is the
one checker: it turns the ConfigDict into an `Experiment` of typed, frozen sections, naming the
first bad field (`optimizer.lr=nan: must be a finite number`). Everything below the command line
takes the Experiment. It writes nothing and touches no device (it does look at the filesystem:
a text_files source must exist, the data dir must be writable); `Experiment.check_devices` adds
the checks that need the device and process counts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ml_collections import config_dict

from llmjax import fields
from llmjax.data.pipeline import DataConfig
from llmjax.data.synthetic import default_knobs
from llmjax.errors import UserError
from llmjax.eval.suite import resolve_evals
from llmjax.model import ModelConfig
from llmjax.rundir import canonical_config
from llmjax.sharding import fill_mesh

ConfigDict = config_dict.ConfigDict
field = fields.field

DISTRIBUTED_VALUES = ("auto", "true", "false", "yes", "no", "1", "0")
SECTIONS = ("model", "data", "optimizer", "mesh")
# Sections a config (or an older config.json) may leave out: their defaults apply.
OPTIONAL_SECTIONS = ("finetune",)
# Stand-in vocabulary for checking a model whose vocab_size comes from the tokenizer (0).
_STAND_IN_VOCAB = 256


# --------------------------------------------------------------------------- typed sections


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The `optimizer` section: AdamW with warmup and a decay schedule."""

    lr: float = field(3e-4, "peak learning rate", gt=0)
    warmup_steps: int = field(100, "linear warmup from 0 to lr", ge=0)
    schedule: Literal["cosine", "linear", "constant"] = field("cosine", "decay after warmup")
    min_lr_ratio: float = field(0.1, "final lr = lr * min_lr_ratio", ge=0, le=1)
    b1: float = field(0.9, "Adam beta1", ge=0, lt=1)
    b2: float = field(0.95, "Adam beta2", ge=0, lt=1)
    eps: float = field(1e-8, "Adam epsilon (> 0: it keeps the update's denominator off 0)",
                       gt=0)
    weight_decay: float = field(0.1, "decoupled weight decay (never on norms/biases)", ge=0)
    decay_embeddings: bool = field(False, "apply weight decay to embedding tables too")
    grad_clip: float = field(1.0, "clip the global gradient norm to this; 0 = off", ge=0)


LORA_TARGETS = ("wq", "wk", "wv", "wo", "w_up", "w_gate", "w_down")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The optional `finetune` section (`llmjax finetune`): start from another run's checkpoint,
    train a classification head, adapt with LoRA. All defaults = pretraining from scratch."""

    init_from: str = field("", "RUN[:STEP] whose parameters initialise the model ('' = random "
                           "init); the run's tokenizer and model config come with it")
    task: Literal["lm", "classification"] = field(
        "lm", "lm: next-token loss on `data`; classification: a head on `features`")
    dataset: str = field("sentiment", "classification data: sentiment (embedded), "
                         "jsonl:TRAIN[,VALIDATION] (fields text, label), tfds:imdb_reviews, "
                         "tfds:glue/sst2 (the tf extra)")
    num_labels: int = field(2, "classes of the classification head", ge=2)
    pooling: Literal["last", "mean"] = field(
        "last", "the head reads the last non-pad token's features, or their mean")
    lora_rank: int = field(0, "LoRA rank r (W + alpha/r * A B on `lora_targets`); 0 = full "
                           "fine-tuning of every parameter", ge=0)
    lora_alpha: float = field(16.0, "LoRA scale numerator alpha", gt=0)
    lora_targets: str = field("wq,wv", "comma-separated projections LoRA adapts: "
                              + " ".join(LORA_TARGETS))
    train_examples: int = field(4000, "sentiment: generated training examples", ge=1)
    validation_examples: int = field(1000, "sentiment: generated validation examples", ge=1)

    def check(self) -> None:
        targets = self.lora_target_names
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or (self.lora_rank and not targets):
            raise UserError(f"finetune.lora_targets={self.lora_targets!r}: allowed names are "
                            f"{', '.join(LORA_TARGETS)} (comma-separated, at least one)")
        from llmjax.finetune.data import check_dataset_spec

        if self.task == "classification":
            check_dataset_spec(self.dataset, "finetune.dataset")

    @property
    def lora_target_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    @property
    def active(self) -> bool:
        """Anything but pretraining from scratch."""
        return self != FinetuneConfig()


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The `mesh` section: device-mesh axis sizes; one may be -1 (fill the remaining devices)."""

    data: int = field(-1, "pure data-parallel axis size (-1 = fill)")
    fsdp: int = field(1, "fully-sharded data-parallel axis size (-1 = fill)")
    tensor: int = field(1, "tensor-parallel axis size (-1 = fill)")

    def check(self) -> None:
        """Sizes alone (positive or one -1); the device count is checked by `shape`."""
        fill_mesh(self.data, self.fsdp, self.tensor,
                  math.prod(max(v, 1) for v in self.sizes) if all(
                      isinstance(v, int) and v != 0 for v in self.sizes) else 1)

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.data, self.fsdp, self.tensor

    @property
    def size(self) -> int:
        return math.prod(self.sizes)

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) with -1 filled for `num_devices` devices."""
        return fill_mesh(self.data, self.fsdp, self.tensor, num_devices)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The config's top-level keys: how long to train, what to log, keep and probe."""

    seed: int = field(0, "seed of parameter init and dropout (data has its own data.seed)",
                      ge=0)
    steps: int = field(1000, "optimizer steps to train (ignored when `tokens` is set)", ge=1)
    tokens: int | None = field(None, "train tokens; sets steps = ceil(tokens / (batch_size * "
                               "seq_len))", ge=1)
    microbatches: int = field(1, "gradient-accumulation microbatches per step", ge=1)
    z_loss: float = field(0.0, "weight of the z-loss, mean(logsumexp(logits)^2) (PaLM); 0 = off",
                          ge=0)
    eval_every: int = field(100, "evaluate every N steps and at the last step; 0 = never", ge=0)
    eval_batches: int = field(4, "fixed validation batches per evaluation", ge=1)
    log_every: int = field(10, "log train metrics every N steps and at the last step", ge=1)
    checkpoint_every: int = field(500, "checkpoint every N steps and at the last step; 0 = last",
                                  ge=0)
    keep_checkpoints: int = field(2, "keep the last K checkpoints", ge=1)
    keep_every: int = field(0, "also keep every M-th step's checkpoint forever; 0 = none", ge=0)
    log_spaced_checkpoints: bool = field(False, "also save+keep steps 1,2,4,...,512 (Pythia)")
    on_nan: Literal["stop", "skip"] = field(
        "stop", "a non-finite loss, gradient or updated parameter: stop the run / skip the "
        "update (at most max_skips in a row)")
    max_skips: int = field(10, "on_nan='skip': stop (exit 1) after this many consecutive "
                           "skipped updates", ge=1)
    distributed: str = field("auto", "jax.distributed.initialize: 'true', 'false' or 'auto' "
                             "(= when a SLURM/MPI/TPU multi-process environment is detected)")
    tensorboard: bool = field(True, "write TensorBoard events when tensorboardX is installed")
    evals: dict = field(None, "probe suite of `llmjax probe`, name -> {type, ...} "
                        "(llmjax.eval.probe); empty = its default suite", factory=dict)
    probe_checkpoints: bool = field(False, "run the probe suite on the parameters at every "
                                    "checkpoint save and merge the records into probes.jsonl")
    probe_tasks: str = field("", "comma-separated probe names to run during training "
                             "('' = the whole suite)")

    def check(self) -> None:
        if str(self.distributed).strip().lower() not in DISTRIBUTED_VALUES:
            raise UserError(f"distributed={self.distributed!r}: allowed values are 'auto', "
                            "'true', 'false' (case-insensitive)")

    @property
    def probe_task_names(self) -> list[str] | None:
        """probe_tasks as a list of probe names; None = the whole suite."""
        names = [t.strip() for t in self.probe_tasks.split(",") if t.strip()]
        return names or None


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A parsed, checked config: typed sections, plus the canonical JSON it came from.

    `model.vocab_size` is the tokenizer's when the config said 0 (`model_config(vocab)`).
    """

    model: ModelConfig
    data: DataConfig
    optimizer: OptimizerConfig
    train: TrainConfig
    mesh: MeshConfig
    vocab_from_tokenizer: bool
    source: dict[str, Any]  # the config as JSON data: what config.json holds
    finetune: FinetuneConfig = FinetuneConfig()

    @property
    def steps(self) -> int:
        """Optimizer steps of the run: `steps`, or ceil(tokens / tokens-per-step)."""
        if self.train.tokens:
            return math.ceil(self.train.tokens / self.tokens_per_step)
        return self.train.steps

    @property
    def tokens_per_step(self) -> int:
        return self.data.batch_size * self.data.seq_len

    @property
    def evals(self) -> dict[str, Any]:
        return dict(self.train.evals)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The ModelConfig for a tokenizer of `vocab_size` tokens (the one place 0 is resolved)."""
        if self.vocab_from_tokenizer:
            return dataclasses.replace(self.model, vocab_size=vocab_size)
        if self.model.vocab_size < vocab_size:
            raise UserError(f"model.vocab_size={self.model.vocab_size} is smaller than the "
                            f"tokenizer's vocabulary ({vocab_size}); allowed: >= {vocab_size}, "
                            "or 0 = take it from the tokenizer")
        return self.model

    def to_json(self) -> str:
        return json.dumps(self.source, indent=2, sort_keys=True)

    def check_devices(self, num_devices: int, process_count: int = 1) -> tuple[int, int, int]:
        """Checks the mesh against the devices and the batch split; returns the mesh shape."""
        if num_devices < 1:
            raise UserError(f"no devices available (num_devices={num_devices})")
        data_size, fsdp_size, tensor_size = self.mesh.shape(num_devices)
        dp = data_size * fsdp_size
        b, mb = self.data.batch_size, self.train.microbatches
        if b % dp:
            raise UserError(f"data.batch_size={b} is not divisible by the data-parallel size "
                            f"mesh.data*mesh.fsdp={dp}; allowed: multiples of {dp}")
        if b % process_count:
            raise UserError(f"data.batch_size={b} is not divisible by the {process_count} "
                            f"processes; allowed: multiples of {process_count}")
        if (b // mb) % dp:
            raise UserError(
                f"microbatches={mb}: each microbatch of {b // mb} sequences must split over the "
                f"data-parallel size {dp}; allowed: microbatches dividing {b // dp}")
        return data_size, fsdp_size, tensor_size


# --------------------------------------------------------------------------- schema


def schema() -> dict[str, dict[str, tuple[Any, Any, str]]]:
    """Section name ('' = top level) -> field -> (type hint, default, meaning)."""
    out = {}
    for section, cls in (("", TrainConfig), ("model", ModelConfig), ("data", DataConfig),
                         ("optimizer", OptimizerConfig), ("mesh", MeshConfig),
                         ("finetune", FinetuneConfig)):
        hints, defaults = fields.hints(cls), fields.defaults(cls)
        out[section] = {f.name: (hints[f.name], defaults[f.name], f.metadata.get("help", ""))
                        for f in dataclasses.fields(cls)}
    return out


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
    for section, section_fields in schema().items():
        target = c
        if section:
            c[section] = ConfigDict()
            target = c[section]
        for name, (hint, default, _) in section_fields.items():
            if default is dataclasses.MISSING:
                continue
            target[name] = _default_value(hint, default)
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
    Not checked: `parse_experiment(config, num_devices)` turns it into a checked Experiment.
    """
    config, _ = parse_flags([f"--config={spec}", *(normalize_override(o) for o in overrides)])
    return config


def to_json(config: ConfigDict) -> str:
    """The config as indented JSON (written to `<workdir>/config.json`)."""
    return config.to_json_best_effort(indent=2, sort_keys=True)


# --------------------------------------------------------------------------- parsing


def parse_experiment(config: ConfigDict | Mapping[str, Any], num_devices: int | None = None,
                     process_count: int = 1) -> Experiment:
    """The one checker: ConfigDict -> Experiment; UserError naming the first bad field.

    With `num_devices`, also checks the mesh and batch split against the devices. Writes
    nothing; reads only the filesystem paths the data section names.
    """
    if isinstance(config, ConfigDict):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise UserError(f"a config must be a mapping of sections, got {type(config).__name__}")
    for section in SECTIONS:
        if section not in config:
            raise UserError(f"config section {section!r} is missing; required sections: "
                            f"{', '.join(SECTIONS)}")
    top = {k: v for k, v in config.items() if k not in (*SECTIONS, *OPTIONAL_SECTIONS)}
    finetune = fields.parse(FinetuneConfig, config.get("finetune") or {}, "finetune")
    train = fields.parse(TrainConfig, top, "")
    optimizer = fields.parse(OptimizerConfig, config["optimizer"], "optimizer")
    mesh = fields.parse(MeshConfig, config["mesh"], "mesh")
    model_values = dict(config["model"].to_dict() if hasattr(config["model"], "to_dict")
                        else config["model"])
    vocab_from_tokenizer = model_values.get("vocab_size") in (0, None)
    if vocab_from_tokenizer:
        model_values["vocab_size"] = _STAND_IN_VOCAB
    model = ModelConfig.from_dict(model_values)
    data = DataConfig.from_config(config["data"], process_count=process_count)
    if model.max_seq_len is not None and data.seq_len > model.max_seq_len:
        raise UserError(f"data.seq_len={data.seq_len} exceeds model.max_seq_len="
                        f"{model.max_seq_len}; allowed: seq_len <= {model.max_seq_len}")
    if data.batch_size % train.microbatches:
        raise UserError(f"microbatches={train.microbatches} does not divide data.batch_size="
                        f"{data.batch_size}; allowed: divisors of {data.batch_size}")
    source = _source(train, model, data, optimizer, mesh, vocab_from_tokenizer, finetune)
    exp = Experiment(model=model, data=data, optimizer=optimizer, train=train, mesh=mesh,
                     vocab_from_tokenizer=vocab_from_tokenizer, source=source,
                     finetune=finetune)
    if num_devices is not None:
        exp.check_devices(num_devices, process_count)
    # The probe suite: each probe type's own schema; a typo must not surface after training.
    if train.evals or train.probe_checkpoints or train.probe_task_names:
        resolve_evals(train.evals, train.probe_task_names,
                      tasks_field=f"config field probe_tasks={train.probe_tasks!r} ('' = all)",
                      max_len=min(data.seq_len, model.max_seq_len or data.seq_len))
    return exp


def _source(train: TrainConfig, model: ModelConfig, data: DataConfig,
            optimizer: OptimizerConfig, mesh: MeshConfig, vocab_from_tokenizer: bool,
            finetune: FinetuneConfig = FinetuneConfig()) -> dict[str, Any]:
    """The complete canonical config: every field of every section, defaults filled in (so a
    config.json written before a field existed compares equal when it takes its default), the
    synthetic knobs in full, vocab_size 0 kept when it comes from the tokenizer."""
    out = dataclasses.asdict(train)
    out["model"] = dataclasses.asdict(model)
    if vocab_from_tokenizer:
        out["model"]["vocab_size"] = 0
    out["data"] = dataclasses.asdict(data)
    out["data"]["synthetic"] = {**default_knobs(), **dict(data.synthetic)}
    out["optimizer"] = dataclasses.asdict(optimizer)
    out["mesh"] = dataclasses.asdict(mesh)
    if finetune.active:  # pretraining configs stay exactly what they were before the section
        out["finetune"] = dataclasses.asdict(finetune)
    return canonical_config(out)


def saved_source(saved: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A run's saved config.json in the canonical form `Experiment.source` has (what resume and
    the sweep compare against); UserError naming `path` when it no longer parses."""
    try:
        return parse_experiment(saved).source
    except UserError as e:
        raise UserError(f"{path}: the run's saved config does not parse: {e}") from None


def load_experiment(spec: str, overrides: Sequence[str] = (), num_devices: int | None = None,
                    process_count: int = 1) -> Experiment:
    """`load_config` then `parse_experiment`."""
    return parse_experiment(load_config(spec, overrides), num_devices, process_count)
