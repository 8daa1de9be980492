"""The training loop: set-up, then a short loop of steps and `(every, hook)` pairs.

`train(exp, workdir, hooks=...)` is the one entry point (`llmjax train`, the sweep runner and
`llmjax.run.train` all call it). Set-up — distributed init, device checks, tokenizer and data,
the lock, the resume check, the build — happens before the loop; the loop itself only steps and
calls the hooks that are due: logging, evaluation, checkpointing, and whatever a caller adds
from above (the probe hook of `llmjax.eval.train_hook`, registered by `llmjax.run`).

Host work per step is: fetch a numpy batch, place it on the mesh, dispatch the compiled step.
The host never waits for a step except when a hook is due; the non-finite flag of step s (loss,
gradients and the updated parameters) is fetched after step s+1 has been dispatched, and before
any hook runs. A non-finite step therefore stops the run at most one step later, naming the
step, and is never checkpointed; with on_nan='skip' the update is not applied, and after
`max_skips` skipped updates in a row the run stops.

Outputs in the workdir (names: llmjax.rundir): config.json, metadata.json, status.json,
metrics.jsonl (see metrics.py), tokenizer/, checkpoints/<step>/, tensorboard/ (with
tensorboardX), and probes.jsonl when a probe hook runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata as importlib_metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from llmjax import distributed, rundir
from llmjax.config import Experiment, parse_experiment, saved_source
from llmjax.data.pipeline import (
    check_train_steps,
    get_data_tokenizer,
    make_eval_batches,
    make_train_iterator,
)
from llmjax.errors import RunFailed, UserError
from llmjax.finetune import data as finetune_data
from llmjax.finetune import init as finetune_init
from llmjax.finetune import params as ft_params
from llmjax.finetune import task as ft_task
from llmjax.model import Transformer
from llmjax.model.flops import flops_per_token
from llmjax.rundir import RunDir, Status
from llmjax.sharding import logical_to_spec, make_mesh, state_shardings
from llmjax.train import mfu as mfu_lib
from llmjax.train.checkpoint import Checkpointer, log_spaced_steps, remove_incomplete
from llmjax.train.metrics import MetricsWriter, Progress, format_eval, format_train
from llmjax.train.optimizer import lr_multiplier_tree, make_optimizer, weight_decay_mask
from llmjax.train.step import (
    TrainState,
    jit_train_step,
    make_eval_step,
    make_train_step,
    summarize_eval,
)

# Packages whose resolved versions every run records (metadata.json), beside the git SHA.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
            "ml-collections", "tensorflow-datasets", "array-record", "tokenizers")


class TrainingDiverged(RunFailed):
    """A non-finite loss, gradient or update (on_nan='stop', or max_skips reached): exit 1."""


@dataclasses.dataclass
class TrainResult:
    """What a finished (or preempted) run returns; the full record is in `workdir`."""

    workdir: str
    step: int  # optimizer steps done
    total_steps: int
    preempted: bool  # stopped by SIGTERM/SIGINT after saving a checkpoint
    resumed_from: int | None  # checkpoint step the run started from, None = fresh
    last_train: dict[str, Any] | None  # last train record written to metrics.jsonl
    last_eval: dict[str, Any] | None
    state: TrainState | None = None  # final TrainState (device arrays), for in-process callers


# --------------------------------------------------------------------------- run metadata


def _git_sha() -> dict[str, Any]:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"git_sha": sha or None, "git_dirty": dirty if sha else None}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_metadata(argv: list[str] | None = None, mesh: Any = None) -> dict[str, Any]:
    """Git SHA, package versions, devices (and the mesh), host and start time of this run."""
    devices = jax.devices() if mesh is None else list(mesh.devices.flat)
    return {
        "mesh": None if mesh is None else dict(mesh.shape),
        **_git_sha(),
        "packages": _versions(),
        "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind,
                    "count": len(devices), "local_count": jax.local_device_count(),
                    "process_count": jax.process_count()},
        "hostname": socket.gethostname(),
        "start_time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
    }


def _dataset_record(exp: Experiment) -> dict[str, Any]:
    """The training data's spec and, for a synthetic corpus, the entropy its generator computed
    (`llmjax.data.entropy`): ground truth for the irreducible loss of a scaling fit."""
    from llmjax.data import builders

    spec = exp.data.dataset_spec
    try:
        meta = builders.dataset_metadata(spec, exp.data.data_dir)
    except Exception as e:  # noqa: BLE001 - bookkeeping; the pipeline has already read the data
        return {"spec": spec, "error": f"{type(e).__name__}: {e}"}
    return {"spec": spec, "entropy": meta.get("entropy")}


def _write_run_files(run: RunDir, exp: Experiment, resume_step: int | None, tokenizer: Any,
                     argv: list[str] | None, mesh: Any, changes: dict[str, Any],
                     dataset: Callable[[], dict[str, Any]]) -> None:
    """config.json, metadata.json (a resume appends to `resumes`), tokenizer/. `dataset` gives
    the `_dataset_record` of the members' shared data, asked only for a first metadata.json."""
    rundir.atomic_write(run.config_path, exp.to_json() + "\n")
    meta = run_metadata(argv, mesh)
    first = rundir.read_json(run.metadata_path)
    if not isinstance(first, dict):
        meta["dataset"] = dataset()
    else:
        first.setdefault("resumes", []).append(
            {"time": meta["start_time"], "step": resume_step or 0, "git_sha": meta["git_sha"],
             "packages": meta["packages"],
             "changed": {k: list(v) for k, v in changes.items()}})
        meta = first
    rundir.atomic_write_json(run.metadata_path, meta)
    tokenizer.save(run.tokenizer_dir)


# --------------------------------------------------------------------------- building


@dataclasses.dataclass
class Setup:
    """Everything compiled/constructed for a run (shared by `train` and `llmjax info`)."""

    model_cfg: Any
    tokenizer: Any
    data_cfg: Any
    mesh: jax.sharding.Mesh
    graphdef: Any
    tx: Any
    schedule: Any
    abstract_state: TrainState  # ShapeDtypeStructs with shardings
    state_shardings: TrainState
    batch_sharding: jax.sharding.NamedSharding
    replicated: jax.sharding.NamedSharding
    train_step: Any  # jitted (not yet compiled)
    eval_step: Any  # jitted
    steps: int
    init_fn: Any  # () -> TrainState, sharded
    decay_mask: Any  # bool pytree like params: which parameters get weight decay
    # Members trained as one program (`seeds`): abstract_state/state_shardings/train_step/init_fn
    # are then stacked along a leading member axis; member_* describe one member's TrainState.
    seeds: tuple[int, ...] | None = None
    member_abstract_state: TrainState | None = None
    member_shardings: TrainState | None = None
    splits: dict[str, Any] | None = None  # a classifier's encoded train/validation examples

    @property
    def members(self) -> int:
        return 1 if self.seeds is None else len(self.seeds)


def _stacked(sharding: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
    """The sharding of S such arrays stacked along a new leading (member) axis, not split."""
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None,
                                                                                 *sharding.spec))


def build(exp: Experiment, tokenizer: Any, devices: list[Any] | None = None,
          seeds: Sequence[int] | None = None) -> Setup:
    """Model graph, shardings, optimizer and the jitted step functions; allocates nothing big.

    `devices`: the mesh's devices (default: all of jax.devices()). `seeds` (two or more): members
    that differ only in `train.seed`, trained as one program: the state gets a leading member
    axis, initialised member by member exactly as a run with that seed would be, and the step is
    `jax.vmap`ped over it with the batch shared (the data order is `data.seed`'s, the same for
    all members).
    """
    model_cfg = exp.model_config(tokenizer.vocab_size)
    mesh = make_mesh(*exp.mesh.sizes, devices=devices)
    steps = exp.steps
    seeds = tuple(int(s) for s in seeds) if seeds is not None and len(seeds) > 1 else None

    ft = exp.finetune
    make_model = lambda seed=exp.train.seed: Transformer(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, abstract_params, rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
    # Checked now (bad input exits before anything is written); its checkpoint is read only by
    # init_fn, i.e. when this run has no checkpoint of its own to resume from.
    init_run = finetune_init.check_init_run(ft, model_cfg) if ft.init_from else None
    if jax.tree.leaves(rest):
        raise NotImplementedError("the model has non-Param state; the train step only carries "
                                  "parameters")
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    param_sh = nnx.to_pure_dict(state_shardings(mesh, abstract_params))
    model_sh = param_sh
    # Decided from the Variables' logical axes (stacked norm scales are 2-D but never decay).
    decay_mask = nnx.to_pure_dict(
        weight_decay_mask(abstract_params, exp.optimizer.decay_embeddings))
    # muP's per-parameter Adam learning-rate multipliers (all 1 under 'sp': no extra transform).
    lr_mults = nnx.to_pure_dict(lr_multiplier_tree(abstract_params, model_cfg))
    abstract_pure = nnx.to_pure_dict(abstract_params)
    select = lambda tree: tree  # the subtree the optimizer sees (its state's shape)
    if ft_params.wrapped(ft):  # a classification head and/or LoRA adapters beside the model
        extras = jax.eval_shape(lambda: ft_params.init_extras(
            ft, abstract_pure, model_cfg.d_model, jax.random.PRNGKey(0)))
        abstract_pure = {"model": abstract_pure, **extras}
        param_sh = {"model": param_sh, **jax.tree.map(lambda _: replicated, extras)}
        decay_mask = {"model": decay_mask, **ft_params.extras_decay_mask(extras)}
        lr_mults = {"model": lr_mults, **jax.tree.map(lambda _: 1.0, extras)}
        select = ft_params.trainable(ft)
    # `inner` updates the trainable subtree; under LoRA, tx leaves the frozen model's untouched.
    inner, schedule = make_optimizer(exp.optimizer, steps, select(decay_mask), select(lr_mults))
    tx = ft_params.only_trainable(inner, ft)
    abstract_opt = jax.eval_shape(tx.init, abstract_pure)
    opt_sh = optax.tree_map_params(inner, lambda _, s: s, abstract_opt, select(param_sh),
                                   transform_non_params=lambda _: replicated)
    shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)
    abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=abstract_pure,
        opt_state=abstract_opt,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)

    def init(seed: int = exp.train.seed, base: Any = None) -> TrainState:
        """The state at step 0: the model's params from `seed`, or `base` (an init run's)."""
        if base is None:
            _, params, _ = nnx.split(make_model(seed), nnx.Param, ...)
            params = nnx.to_pure_dict(params)
        else:
            params = base
        if ft_params.wrapped(ft):
            params = {"model": params, **ft_params.init_extras(
                ft, params, model_cfg.d_model, jax.random.fold_in(jax.random.PRNGKey(seed), 2))}
        # Dropout key: a stream separate from parameter init (nnx.Rngs(seed) uses key(seed)).
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), rng=rng)

    batch_sharding = jax.sharding.NamedSharding(mesh, logical_to_spec(("batch", "length")))
    dropout = model_cfg.dropout > 0
    loss_fn = None
    if ft.task == "classification":
        loss_fn = ft_task.classification_loss(graphdef, ft, dropout)
    elif ft_params.wrapped(ft):
        loss_fn = ft_task.lm_loss_with(ft, graphdef, dropout)
    step_fn = make_train_step(graphdef, tx, schedule, microbatches=exp.train.microbatches,
                              z_loss=exp.train.z_loss, dropout=dropout,
                              skip_nonfinite=exp.train.on_nan == "skip", loss_fn=loss_fn)
    member_abstract, member_shardings = abstract_state, shardings
    if seeds is None and init_run is not None:
        # The init run's params enter as an argument (never as constants of the program).
        init_from = jax.jit(lambda base: init(base=base), out_shardings=shardings)
        init_fn = lambda: init_from(jax.device_put(finetune_init.init_params(ft, init_run),
                                                   model_sh))
    elif seeds is None:
        init_fn = jax.jit(init, out_shardings=shardings)
    elif init_run is not None:
        raise UserError("finetune.init_from with several seeds: fine-tune one seed at a time")
    else:
        shardings = jax.tree.map(_stacked, shardings)
        abstract_state = jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct((len(seeds), *a.shape), a.dtype, sharding=sh),
            member_abstract, shardings)
        init_fn = jax.jit(lambda: jax.tree.map(lambda *xs: jnp.stack(xs),
                                               *[init(s) for s in seeds]),
                          out_shardings=shardings)
        step_fn = jax.vmap(step_fn, in_axes=(0, None))
    train_step = jit_train_step(step_fn, shardings, batch_sharding, replicated)
    if ft.task == "classification":
        eval_step = jax.jit(ft_task.make_eval_step(graphdef, ft))
    else:
        token_bytes = jnp.asarray(np.asarray(tokenizer.token_byte_lengths(), np.int32))
        eval_fn = make_eval_step(graphdef, token_bytes,
                                 lambda p: ft_params.model_params(p, ft))
        eval_step = jax.jit(eval_fn, in_shardings=(param_sh, batch_sharding),
                            out_shardings=replicated)
    return Setup(model_cfg=model_cfg, tokenizer=tokenizer, data_cfg=exp.data, mesh=mesh,
                 graphdef=graphdef, tx=tx, schedule=schedule, abstract_state=abstract_state,
                 state_shardings=shardings, batch_sharding=batch_sharding, replicated=replicated,
                 train_step=train_step, eval_step=eval_step, steps=steps, init_fn=init_fn,
                 decay_mask=decay_mask, seeds=seeds, member_abstract_state=member_abstract,
                 member_shardings=member_shardings)


def batch_layout(exp: Experiment) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The train batch's arrays: name -> (global shape, dtype), for the LM or the classifier."""
    rows, seq = exp.data.batch_size, exp.data.seq_len
    if exp.finetune.task == "classification":
        return {"inputs": ((rows, seq), jnp.int32), "labels": ((rows,), jnp.int32),
                "lengths": ((rows,), jnp.int32)}
    return {"inputs": ((rows, seq), jnp.int32), "targets": ((rows, seq), jnp.int32),
            "loss_mask": ((rows, seq), jnp.float32)}


def _rows_sharding(sharding: Any, ndim: int) -> Any:
    """The batch sharding for an array of `ndim` axes (rows split as for [rows, seq])."""
    if ndim == len(sharding.spec):
        return sharding
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
        *sharding.spec[:ndim]))


def abstract_batch(exp: Experiment, sharding: Any) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=_rows_sharding(sharding, len(shape)))
            for k, (shape, dtype) in batch_layout(exp).items()}


def compile_train_step(setup: Setup, exp: Experiment) -> Any:
    """Ahead-of-time lower().compile() of the train step (the mesh active so constraints apply)."""
    with jax.set_mesh(setup.mesh):
        lowered = setup.train_step.lower(setup.abstract_state,
                                         abstract_batch(exp, setup.batch_sharding))
        return lowered.compile()


def _global_batch(batch: dict[str, np.ndarray], sharding: Any, global_batch: int
                  ) -> dict[str, jax.Array]:
    """Process-local numpy rows -> global jax Arrays on the mesh (each process feeds its shard)."""
    out = {}
    for key, local in batch.items():
        local = np.asarray(local)
        shape = (global_batch, *local.shape[1:])
        out[key] = jax.make_array_from_process_local_data(
            _rows_sharding(sharding, local.ndim), local, shape)
    return out


class _StopFlag:
    """SIGTERM/SIGINT set a flag the loop checks between steps (checkpoint, then exit 0)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, no checkpoint
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- hooks


@dataclasses.dataclass
class Hook:
    """Something the loop does at some steps: `fn(loop)` when `due`.

    every   run at steps that are multiples of it (0 = never by count)
    at_end  also run at the last step
    steps   also run at these steps
    after_save  run only at steps where a checkpoint was just saved (the probe hook)
    start   called once before the first step (e.g. to finish work a killed run left)
    """

    name: str
    fn: Callable[[Loop], None]
    every: int = 0
    at_end: bool = True
    steps: frozenset[int] = frozenset()
    after_save: bool = False
    start: Callable[[Loop], None] | None = None

    def due(self, loop: Loop) -> bool:
        step = loop.step
        if self.after_save:
            return loop.saved_step == step
        return ((self.every > 0 and step % self.every == 0) or step in self.steps
                or (self.at_end and step == loop.steps))


class _SharedState:
    """The TrainState of all members of one program (stacked along a leading axis when there are
    several) and each member's own TrainState, sliced out once per step when a hook asks."""

    def __init__(self, setup: Setup, value: TrainState):
        self.value = value
        self._views: dict[int, TrainState] = {}
        self._take = None
        if setup.members > 1:
            self._take = jax.jit(lambda s, i: jax.tree.map(lambda x: x[i], s),
                                 out_shardings=setup.member_shardings)

    def set(self, value: TrainState) -> None:
        self.value = value
        self._views.clear()

    def member(self, i: int) -> TrainState:
        if self._take is None:
            return self.value
        if i not in self._views:
            self._views[i] = self._take(self.value, jnp.int32(i))
        return self._views[i]


def _member_view(tree: Any, i: int, members: int) -> Any:
    """Member i's entries of stacked metrics (the tree itself for a single run)."""
    return tree if members == 1 else jax.tree.map(lambda x: x[i], tree)


@dataclasses.dataclass
class Loop:
    """What hooks see: one run (one member of the program), its state at `step`, and its
    writers. Hooks read `state`; only the loop replaces it."""

    exp: Experiment
    run: RunDir
    setup: Setup
    ckpt: Checkpointer
    train_iter: Any
    writer: MetricsWriter
    bar: Progress
    shared: _SharedState
    step: int
    steps: int
    resumed_from: int | None
    process_index: int
    process_count: int
    metrics: dict[str, jax.Array] | None = None
    saved_step: int | None = None  # the step of the newest checkpoint this process saved/restored
    last_train: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    stopped: bool = False  # hooks may ask the loop to stop after this step
    member: int = 0  # index in the program's members (0 for a single run)

    @property
    def state(self) -> TrainState:
        """This run's TrainState at `step` (for a member: its slice of the shared state)."""
        return self.shared.member(self.member)

    @property
    def primary(self) -> bool:
        return self.process_index == 0

    @property
    def tokens(self) -> int:
        return self.step * self.exp.tokens_per_step

    def save(self) -> bool:
        """Async checkpoint of `state` at `step`; False when that step is already saved."""
        if self.saved_step == self.step:
            return False
        self.ckpt.save(self.step, self.state.as_dict(), self.train_iter.get_state(),
                       {"step": self.step, "tokens": self.tokens})
        self.saved_step = self.step
        return True


class _Throughput:
    """tokens/s and MFU between two log steps."""

    def __init__(self, loop: Loop):
        self.flops_per_token = flops_per_token(loop.setup.model_cfg, loop.exp.data.seq_len).training
        self.peak = mfu_lib.device_peak(list(loop.setup.mesh.devices.flat))
        self.mark(loop.step)

    def mark(self, step: int) -> None:
        self.t, self.step = time.perf_counter(), step

    def rate(self, step: int, tokens_per_step: int) -> float:
        return (step - self.step) * tokens_per_step / max(time.perf_counter() - self.t, 1e-9)


def log_hook(loop: Loop) -> Hook:
    meter = _Throughput(loop)

    def log(loop: Loop) -> None:
        m = jax.device_get(loop.metrics)
        tok_s = meter.rate(loop.step, loop.exp.tokens_per_step)
        flops_s, util = mfu_lib.mfu(meter.flops_per_token, tok_s, meter.peak)
        rec = {"kind": "train", "step": loop.step, "loss": float(m["loss"]),
               "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"]), "tokens": loop.tokens,
               "tokens_per_s": tok_s, "flops_per_s": flops_s, "mfu": util, "time": time.time()}
        if loop.exp.train.z_loss > 0:
            rec["z_loss"] = float(m["z_loss"])
        loop.last_train = rec
        loop.writer.write(rec)
        loop.bar.log(format_train(rec, loop.steps, loop.bar.eta(loop.step), meter.peak.label))
        loop.bar.update(loop.step, rec)
        meter.mark(loop.step)

    return Hook("log", log, every=loop.exp.train.log_every)


def eval_hook(loop: Loop) -> Hook | None:
    exp, setup = loop.exp, loop.setup
    if exp.train.eval_every <= 0:
        return None
    if setup.splits is not None:
        return _classification_eval_hook(loop)
    batches = [_global_batch(b, setup.batch_sharding, exp.data.batch_size)
               for b in make_eval_batches(setup.data_cfg, setup.tokenizer, exp.train.eval_batches,
                                          process_index=loop.process_index,
                                          process_count=loop.process_count)]

    def evaluate(loop: Loop) -> None:
        sums = None
        with jax.set_mesh(setup.mesh):
            for b in batches:
                out = setup.eval_step(loop.state.params, b)
                sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        host = {k: float(v) for k, v in jax.device_get(sums).items()}
        loop.last_eval = {"kind": "eval", "step": loop.step, **summarize_eval(host),
                          "tokens": loop.tokens}
        loop.writer.write(loop.last_eval)
        loop.bar.log(format_eval(loop.last_eval))

    return Hook("eval", evaluate, every=exp.train.eval_every)


def _classification_eval_hook(loop: Loop) -> Hook:
    """Accuracy, macro-F1 and loss on the whole validation split (`llmjax.finetune.task`)."""
    exp, setup = loop.exp, loop.setup
    split = setup.splits["validation"]
    batches = finetune_data.eval_batches(split, exp.data.batch_size, setup.tokenizer.pad_id)

    def evaluate(loop: Loop) -> None:
        with jax.set_mesh(setup.mesh):
            result = ft_task.evaluate(setup.eval_step, loop.state.params, batches, split.heldout,
                                      exp.finetune.num_labels)
        loop.last_eval = {"kind": "eval", "step": loop.step, **result, "tokens": loop.tokens}
        loop.writer.write(loop.last_eval)
        loop.bar.log(f"eval step {loop.step}: accuracy {result['accuracy']:.3f} "
                     f"± {result['accuracy_se']:.3f}  macro-F1 {result['macro_f1']:.3f}  "
                     f"loss {result['loss']:.4f}" + (
                         f"  held-out words {result['heldout_accuracy']:.3f}"
                         if "heldout_accuracy" in result else ""))

    return Hook("eval", evaluate, every=exp.train.eval_every)


def checkpoint_hook(loop: Loop, keep_steps: Sequence[int]) -> Hook:
    return Hook("checkpoint", lambda loop: loop.save(), every=loop.exp.train.checkpoint_every,
                steps=frozenset(keep_steps))


class _Guard:
    """The non-finite check: each step's flags are read one step late (or at once before hooks).
    on_nan='stop' raises; 'skip' records the skip and raises after max_skips in a row (counted
    per member)."""

    def __init__(self, loops: Sequence[Loop]):
        self.loops = list(loops)
        self.pending: tuple[int, dict[str, jax.Array]] | None = None
        self.skips = [0] * len(self.loops)

    def push(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.flush()
        self.pending = (step, metrics)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        finite = np.atleast_1d(np.asarray(metrics["finite"]))  # the one value read every step
        if finite.all():
            self.skips = [0] * len(self.loops)
            return
        host = jax.device_get(metrics)
        for i in range(len(self.loops)):
            if finite[i]:
                self.skips[i] = 0
            else:
                self._check(i, step, _member_view(host, i, len(self.loops)))

    def _check(self, i: int, step: int, metrics: dict[str, Any]) -> None:
        loop, cfg = self.loops[i], self.loops[i].exp.train
        who = f" ({loop.run.path})" if len(self.loops) > 1 else ""
        loss, gnorm = float(metrics["loss"]), float(metrics["grad_norm"])
        if math.isfinite(loss) and math.isfinite(gnorm):  # the update itself overflowed
            what = f"non-finite parameters or optimizer state after the update at step {step}" \
                   f"{who} (loss={loss}, grad_norm={gnorm} were finite)"
        else:
            what = f"non-finite loss or gradient at step {step}{who} (loss={loss}, " \
                   f"grad_norm={gnorm})"
        if cfg.on_nan == "skip":
            self.skips[i] += 1
            loop.writer.write({"kind": "skip", "step": step, "loss": loss, "grad_norm": gnorm})
            loop.bar.log(f"step {step}: {what}; update skipped ({self.skips[i]} in a row)")
            if self.skips[i] < cfg.max_skips:
                return
            what = f"{cfg.max_skips} consecutive skipped updates (max_skips), the last {what}"
        loop.ckpt.wait()
        good = loop.ckpt.latest_step()
        where = (f"last good checkpoint: step {good} in {loop.ckpt.directory}" if good is not None
                 else "no checkpoint was saved")
        raise TrainingDiverged(f"{what}; stopped, {where}")


def _after_save(loop: Loop, hooks: Sequence[Hook]) -> None:
    """The hooks that follow a checkpoint save, when one was saved at this step."""
    for hook in hooks:
        if hook.after_save and hook.due(loop):
            hook.fn(loop)


def run_loop(loops: Sequence[Loop], hooks: Sequence[Sequence[Hook]], stop: _StopFlag) -> bool:
    """Steps until the last step or a stop signal, calling each member's due hooks (`hooks[i]`
    are `loops[i]`'s); True when preempted. All members share one state, one data iterator and
    one compiled step, so they are always at the same step."""
    lead = loops[0]
    compiled = compile_train_step(lead.setup, lead.exp)
    guard = _Guard(loops)
    for loop, member_hooks in zip(loops, hooks, strict=True):
        for hook in member_hooks:
            if hook.start is not None:
                hook.start(loop)
        if any(0 in h.steps for h in member_hooks) and loop.step == 0:
            loop.save()  # log-spaced checkpoints start at step 0 (and their probes with them)
            _after_save(loop, member_hooks)
    batch_size, members = lead.exp.data.batch_size, len(loops)
    step = lead.step
    while step < lead.steps and not any(loop.stopped for loop in loops):
        if _should_stop(stop, lead.process_count, step, lead.exp.train.log_every):
            break
        batch = _global_batch(next(lead.train_iter), lead.setup.batch_sharding, batch_size)
        state, metrics = compiled(lead.shared.value, batch)
        lead.shared.set(state)
        step += 1
        for loop in loops:
            loop.step = step
        guard.push(step, metrics)  # checks the previous step: this one is queued already
        due = [[h for h in member_hooks if not h.after_save and h.due(loop)]
               for loop, member_hooks in zip(loops, hooks, strict=True)]
        if not any(due):
            continue
        guard.flush()
        for i, (loop, member_due) in enumerate(zip(loops, due, strict=True)):
            loop.metrics = _member_view(metrics, i, members)
            for hook in member_due:
                hook.fn(loop)
            _after_save(loop, hooks[i])
    guard.flush()
    preempted = step < lead.steps
    if preempted:
        for loop in loops:
            if loop.step > 0:
                # No after-save hooks: a preempted run must exit fast; the resumed run catches up.
                loop.save()  # no-op when this step's checkpoint exists (e.g. just restored)
        if step > 0:
            lead.bar.log(f"received signal {stop.signum}: saved checkpoint at step {step}, "
                         "exiting")
        else:
            lead.bar.log(f"received signal {stop.signum} before the first step, exiting")
    return preempted


# --------------------------------------------------------------------------- train


def train(exp: Experiment | Any, workdir: str, *, hooks: Sequence[Callable[[Loop], Hook | None]]
          = (), allow_changes: Sequence[str] = (), argv: list[str] | None = None,
          return_state: bool = False, progress: bool = True,
          devices: list[Any] | None = None) -> TrainResult:
    """Trains `exp` (an Experiment, or a ConfigDict parsed here) in `workdir`, resuming from its
    newest checkpoint that restores.

    `hooks`: factories `f(loop) -> Hook | None` added after logging, eval and checkpointing.
    `allow_changes`: config fields that may differ from the run's saved config on resume.
    `devices`: run on these devices only (default all). `progress=False` silences log lines.

    Raises UserError for bad input (before writing anything), TrainingDiverged on non-finite
    values. SIGTERM/SIGINT: saves a checkpoint and returns with preempted=True.
    """
    (result,) = train_members(exp, [workdir], hooks=hooks, allow_changes=allow_changes,
                              argv=argv, return_state=return_state, progress=progress,
                              devices=devices)
    return result


def member_seeds(exp: Experiment, count: int) -> list[int]:
    """The seeds of `count` members of `exp`: train.seed, train.seed + 1, ..."""
    return [exp.train.seed + i for i in range(count)]


def train_members(exp: Experiment | Any, workdirs: Sequence[str], *,
                  seeds: Sequence[int] | None = None,
                  hooks: Sequence[Callable[[Loop], Hook | None]] = (),
                  allow_changes: Sequence[str] = (), argv: list[str] | None = None,
                  return_state: bool = False, progress: bool = True,
                  devices: list[Any] | None = None) -> list[TrainResult]:
    """Trains one run per workdir as ONE compiled program: member i is `exp` with
    `train.seed = seeds[i]` (default `member_seeds`), in `workdirs[i]`. Each member is a run
    like any other — its own config.json (with its seed), metrics, checkpoints, status and
    probes — and gives the same numbers as `train` of its own config would, up to float rounding
    (the step is vmapped over the members; they share the batches). Resuming restores every
    member at the newest step all of them saved. With one workdir this is `train`."""
    if not isinstance(exp, Experiment):
        exp = parse_experiment(exp)
    seeds = list(member_seeds(exp, len(workdirs)) if seeds is None else seeds)
    if len(seeds) != len(workdirs) or not workdirs:
        raise UserError(f"{len(workdirs)} workdir(s) for {len(seeds)} seed(s): one each")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {seeds}: each member needs its own seed")
    paths = [os.path.abspath(rundir.check_dir_path(w)) for w in workdirs]
    if len(set(paths)) != len(paths):
        raise UserError(f"--workdir: the members' run directories must differ, got {paths}")
    exps = [exp if s == exp.train.seed else parse_experiment({**exp.source, "seed": int(s)})
            for s in seeds]
    with _StopFlag() as stop:  # from the start: a signal during start-up still exits cleanly
        distributed.initialize(exp.train.distributed)
        n_devices = jax.device_count() if devices is None else len(devices)
        exp.check_devices(n_devices, jax.process_count())
        runs = [RunDir(p) for p in paths]
        if exp.train.probe_checkpoints and not hooks:
            raise UserError("probe_checkpoints=True needs the probe hook: train with "
                            "`llmjax train` or llmjax.run.train")
        # Everything that can refuse the run before the workdir is touched (the data dir may be
        # written: the dataset is prepared there if needed).
        classify = exp.finetune.task == "classification"
        tokenizer = get_data_tokenizer(exp.data, prepare=not classify)
        if classify:  # labelled examples instead of the LM stream
            splits = finetune_data.load_splits(exp, tokenizer)
        else:
            splits = None
            check_train_steps(exp.data, tokenizer, exp.steps)  # finite data (num_epochs) will do
        setup = build(exp, tokenizer, devices, seeds=seeds if len(seeds) > 1 else None)
        setup.splits = splits
        with contextlib.ExitStack() as held:
            for run in runs:
                held.enter_context(_hold_run(run, print if progress else None))
            return _train(exps, runs, setup, stop, hooks=hooks, allow_changes=allow_changes,
                          argv=argv, return_state=return_state, progress=progress)


@contextlib.contextmanager
def _hold_run(run: RunDir, say: Callable[[str], Any] | None) -> Any:
    """Process 0 holds the run's lock; every process learns whether it got it, so a refused
    lock stops them all with the same one-line error instead of leaving the others waiting."""
    with contextlib.ExitStack() as stack:
        error = None
        if jax.process_index() == 0:
            try:
                stack.enter_context(run.lock(say))
            except UserError as e:
                error = e
        if distributed.decided_by_process_0(error is not None, jax.process_count()):
            raise error or UserError(f"{run.path}: process 0 could not take the run's lock "
                                     "(see its log)")
        yield


def _check_resume(exp: Experiment, run: RunDir, allow: Sequence[str]) -> dict[str, Any]:
    saved = run.saved_config()
    if saved is None:
        return {}
    return rundir.check_config_unchanged(saved_source(saved, run.config_path), exp.source, allow,
                                         where=f"--workdir={run.path}")


def _restore_members(ckpts: list[Checkpointer], abstract: dict[str, Any],
                     say: Callable[[str], Any]) -> list[tuple[int, Any, dict, dict] | None]:
    """Each member's newest restorable checkpoint, at one step for all: members ahead of the
    newest step every member saved (a kill between the members' saves) are restored at that
    step, and their newer steps set aside as `<step>.ahead` (the resumed program redoes them)."""
    restored = [c.restore_latest(abstract, say=say) for c in ckpts]
    steps = {r[0] if r is not None else None for r in restored}
    if len(steps) == 1:
        return restored
    common = set.intersection(*(set(c.complete_steps()) for c in ckpts))
    if not common:
        found = ", ".join(f"{c.directory}: {r[0] if r else 'none'}"
                          for c, r in zip(ckpts, restored, strict=True))
        raise UserError(f"the members' checkpoints have no step in common ({found}); resume "
                        "them one by one or remove the newer checkpoints")
    step = max(common)
    for i, c in enumerate(ckpts):
        if restored[i][0] != step:
            c.set_aside([s for s in c.complete_steps() if s > step], say, suffix=".ahead",
                        why="ahead-of-the-other-members")
            restored[i] = (step, *c.restore(step, abstract))
    return restored


def _train(exps: list[Experiment], runs: list[RunDir], setup: Setup, stop: _StopFlag, *,
           hooks: Sequence[Any], allow_changes: Sequence[str], argv: list[str] | None,
           return_state: bool, progress: bool) -> list[TrainResult]:
    n_proc, proc = jax.process_count(), jax.process_index()
    primary = proc == 0
    tokenizer, exp = setup.tokenizer, exps[0]
    changes = [_check_resume(e, r, allow_changes) for e, r in zip(exps, runs, strict=True)]
    say = print if progress and primary else (lambda *_: None)
    keep_steps = log_spaced_steps(setup.steps) if exp.train.log_spaced_checkpoints else []
    for run in runs:
        run.create()
        if primary:
            removed = remove_incomplete(run.checkpoints_dir)
            if removed:
                say(f"ignored incomplete checkpoint(s) {', '.join(removed)} in {run.path}")
    if n_proc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("llmjax: incomplete checkpoints removed")
    ckpts = [Checkpointer(run.path, keep_last=exp.train.keep_checkpoints,
                          keep_every=exp.train.keep_every, keep_steps=keep_steps) for run in runs]
    if setup.splits is not None:
        train_iter = finetune_data.BatchIterator(
            setup.splits["train"], exp.data.batch_size, exp.data.seed, shuffle=exp.data.shuffle,
            process_index=proc, process_count=n_proc)
    else:
        train_iter = make_train_iterator(setup.data_cfg, tokenizer, process_index=proc,
                                         process_count=n_proc)
    restored = _restore_members(ckpts, setup.member_abstract_state.as_dict(), say)
    if restored[0] is not None:
        resume_step = restored[0][0]
        members = [TrainState.from_dict(r[1]) for r in restored]
        train_iter.set_state(restored[0][2])  # the members share one data order
        state = members[0] if setup.members == 1 else jax.jit(
            lambda *xs: jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs),
            out_shardings=setup.state_shardings)(*members)
    else:
        resume_step, state = None, setup.init_fn()
    shared = _SharedState(setup, state)
    dataset = functools.cache(lambda: _dataset_record(exp))  # the members share one data config
    loops = []
    for i, (e, run, ckpt) in enumerate(zip(exps, runs, ckpts, strict=True)):
        if primary:
            _write_run_files(run, e, resume_step, tokenizer, argv, setup.mesh, changes[i],
                             dataset)
        writer = MetricsWriter(run.path, resume_step=resume_step or 0,
                               tensorboard=e.train.tensorboard, enabled=primary)
        # One progress bar: the first member's (the others' lines are in their metrics).
        bar = Progress(setup.steps, resume_step or 0, enabled=primary and progress and i == 0)
        loops.append(Loop(exp=e, run=run, setup=setup, ckpt=ckpt, train_iter=train_iter,
                          writer=writer, bar=bar, shared=shared, step=resume_step or 0,
                          steps=setup.steps, resumed_from=resume_step, process_index=proc,
                          process_count=n_proc, saved_step=resume_step, member=i))
    status, preempted = Status.FAILED, False
    try:
        if primary:
            together = {"members": [r.path for r in runs]} if len(runs) > 1 else {}
            for loop in loops:
                loop.run.write_status(Status.RUNNING, pid=os.getpid(), host=socket.gethostname(),
                                      steps=setup.steps, step=loop.step, **together)
        if resume_step is not None:
            loops[0].bar.log(f"resumed from checkpoint at step {resume_step}")
        all_hooks = []
        for loop in loops:
            standard = [log_hook(loop), eval_hook(loop), checkpoint_hook(loop, keep_steps)]
            all_hooks.append([h for h in standard + [make(loop) for make in hooks]
                              if h is not None])
        preempted = run_loop(loops, all_hooks, stop)
        status = Status.INTERRUPTED if preempted else Status.COMPLETE
    finally:
        try:
            loops[0].bar.close()
            for loop in loops:
                loop.ckpt.close()  # waits for async saves: `complete` comes after the last one
                loop.writer.close()
        except BaseException:
            status = Status.FAILED  # an async save failed: the last checkpoint is not there
            raise
        finally:
            if primary:
                for loop in loops:
                    loop.run.write_status(status, step=loop.step, steps=setup.steps, pid=None)
    return [TrainResult(workdir=loop.run.path, step=loop.step, total_steps=setup.steps,
                        preempted=preempted, resumed_from=resume_step, last_train=loop.last_train,
                        last_eval=loop.last_eval, state=loop.state if return_state else None)
            for loop in loops]


def _should_stop(stop: _StopFlag, n_proc: int, step: int, log_every: int) -> bool:
    """Single process: stop as soon as a signal arrived. Several processes must stop (and save)
    at the same step, so they compare flags at log steps with one tiny all-gather."""
    if n_proc == 1:
        return stop.signum is not None
    if step % log_every:
        return False
    from jax.experimental import multihost_utils  # noqa: PLC0415 - multi-process only

    flags = multihost_utils.process_allgather(np.int32(stop.signum is not None))
    return bool(np.max(flags))


__all__ = ["Hook", "Loop", "Setup", "TrainResult", "TrainingDiverged", "build",
           "compile_train_step", "member_seeds", "train", "train_members"]
