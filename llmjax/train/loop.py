"""The training loop: build everything from a config, resume if possible, train, evaluate, save.

`train(config, workdir)` is the one entry point (the CLI and the sweep runner both call it).
Host work per step is: fetch a numpy batch, place it on the mesh, dispatch the compiled step.
The host never waits for a step except at log/eval/checkpoint steps; the NaN/Inf flag of step s
is fetched after step s+1 has been dispatched (so the device is never idle waiting for the host),
and at every step that logs, evaluates or saves. A non-finite step therefore stops the run at
most one step later, naming the step, and is never checkpointed.

Outputs in `workdir`: config.json, metadata.json, metrics.jsonl (see metrics.py), tokenizer/,
checkpoints/<step>/, tensorboard/ (when tensorboardX is installed), and with
config.probe_checkpoints probes.jsonl: the probe suite (llmjax.eval.probe) run on the in-memory
parameters right after each checkpoint save, its cost logged as a metrics.jsonl record
{"kind": "probe", "step", "seconds", "records"}. Probing reads the parameters only (no RNG, no
data), so the run's losses and parameters are those of the same run without it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib import metadata as importlib_metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from llmjax import config as config_lib
from llmjax.errors import UserError
from llmjax.jsonl import read_json, write_json
from llmjax.train import mfu as mfu_lib
from llmjax.train.checkpoint import (
    CHECKPOINT_DIR,
    Checkpointer,
    log_spaced_steps,
    remove_incomplete,
)
from llmjax.train.metrics import MetricsWriter, Progress, format_eval, format_train
from llmjax.train.optimizer import lr_multiplier_tree, make_optimizer, weight_decay_mask
from llmjax.train.step import (
    TrainState,
    jit_train_step,
    make_eval_step,
    make_train_step,
    summarize_eval,
)

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
            "ml-collections", "tensorflow-datasets", "tokenizers")


class TrainingDiverged(RuntimeError):
    """Loss or gradients became NaN/Inf (on_nan='stop'). The message is one line."""

    exit_code = 1


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


# --------------------------------------------------------------------------- start-up


_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
                "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def distributed_requested(setting: Any) -> bool:
    """config.distributed: true/false, or 'auto' = a multi-process cluster environment is set."""
    value = str(setting).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    if os.environ.get("SLURM_NTASKS") is not None:
        return int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if os.environ.get("OMPI_COMM_WORLD_SIZE") is not None:
        return int(os.environ["OMPI_COMM_WORLD_SIZE"]) > 1
    return any(os.environ.get(k) for k in _CLUSTER_ENV[2:])


def initialize_distributed(config: ConfigDict) -> None:
    """jax.distributed.initialize() (cluster auto-detected) when the config or environment asks.

    Must run before anything touches jax devices; a second call is a no-op.
    """
    if not distributed_requested(config.get("distributed", "auto")):
        return
    from jax._src import distributed as _dist  # is_initialized is not public API

    if getattr(_dist.global_state, "client", None) is not None:
        return
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = {"coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"],
                  "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                  "process_id": int(os.environ["JAX_PROCESS_ID"])}
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"distributed={config.distributed!r}: jax.distributed.initialize failed: "
                        f"{' '.join(str(e).split())[:300]}") from None


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


def _write_run_files(workdir: str, config: ConfigDict, resume_step: int | None,
                     tokenizer: Any, argv: list[str] | None, mesh: Any) -> None:
    """config.json, metadata.json (a resume appends to `resumes`), tokenizer/."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json.tmp"), "w") as f:
        f.write(config_lib.to_json(config) + "\n")
    os.replace(os.path.join(workdir, "config.json.tmp"), os.path.join(workdir, "config.json"))
    meta_path = os.path.join(workdir, "metadata.json")
    meta = run_metadata(argv, mesh)
    if os.path.exists(meta_path):
        first = read_json(meta_path)
        if isinstance(first, dict):
            resumes = first.get("resumes", [])
            resumes.append({"time": meta["start_time"], "step": resume_step or 0,
                            "git_sha": meta["git_sha"]})
            first["resumes"] = resumes
            meta = first
    write_json(meta_path, meta)
    tokenizer.save(os.path.join(workdir, "tokenizer"))


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


def model_config_for(config: ConfigDict, vocab_size: int) -> Any:
    """ModelConfig from config.model, vocab_size 0/None replaced by the tokenizer's."""
    from llmjax.model import ModelConfig

    d = config.model.to_dict()
    if not d.get("vocab_size"):
        d["vocab_size"] = vocab_size
    elif d["vocab_size"] < vocab_size:
        raise UserError(f"model.vocab_size={d['vocab_size']} is smaller than the tokenizer's "
                        f"vocabulary ({vocab_size}); allowed: >= {vocab_size}, or 0 = take it "
                        "from the tokenizer")
    return ModelConfig.from_dict(d)


def data_config_for(config: ConfigDict, process_count: int = 1) -> Any:
    """The pipeline's DataConfig from config.data (UserError naming a bad data field)."""
    from llmjax.data.pipeline import DataConfig

    return DataConfig.from_config(config.data, process_count=process_count)


def get_tokenizer_for(config: ConfigDict) -> Any:
    """The run's tokenizer; prepares the dataset first when needed (BPE trains on it)."""
    from llmjax.data.pipeline import get_data_tokenizer

    return get_data_tokenizer(data_config_for(config))


def build(config: ConfigDict, tokenizer: Any, devices: list[Any] | None = None) -> Setup:
    """Model graph, shardings, optimizer and the jitted step functions; allocates nothing big.

    `devices`: the mesh's devices (default: all of jax.devices()).
    """
    from llmjax.model import Transformer
    from llmjax.sharding import logical_to_spec, make_mesh, state_shardings

    model_cfg = model_config_for(config, tokenizer.vocab_size)
    data_cfg = data_config_for(config, jax.process_count())
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    steps = config_lib.total_steps(config)
    seed = int(config.seed)

    make_model = lambda: Transformer(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, abstract_params, rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise NotImplementedError("the model has non-Param state; the train step only carries "
                                  "parameters")
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    param_sh = nnx.to_pure_dict(state_shardings(mesh, abstract_params))
    # Decided from the Variables' logical axes (stacked norm scales are 2-D but never decay).
    decay_mask = nnx.to_pure_dict(
        weight_decay_mask(abstract_params, bool(config.optimizer.decay_embeddings)))
    # muP's per-parameter Adam learning-rate multipliers (all 1 under 'sp': no extra transform).
    lr_mults = nnx.to_pure_dict(lr_multiplier_tree(abstract_params, model_cfg))
    tx, schedule = make_optimizer(config.optimizer, steps, decay_mask, lr_mults)
    abstract_pure = nnx.to_pure_dict(abstract_params)
    abstract_opt = jax.eval_shape(tx.init, abstract_pure)
    import optax

    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
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

    def init() -> TrainState:
        _, params, _ = nnx.split(make_model(), nnx.Param, ...)
        params = nnx.to_pure_dict(params)
        # Dropout key: a stream separate from parameter init (nnx.Rngs(seed) uses key(seed)).
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), rng=rng)

    init_fn = jax.jit(init, out_shardings=shardings)
    batch_sharding = jax.sharding.NamedSharding(mesh, logical_to_spec(("batch", "length")))
    step_fn = make_train_step(graphdef, tx, schedule, microbatches=int(config.microbatches),
                              z_loss=float(config.z_loss), dropout=model_cfg.dropout > 0,
                              skip_nonfinite=config.on_nan == "skip")
    train_step = jit_train_step(step_fn, shardings, batch_sharding, replicated)
    token_bytes = jnp.asarray(np.asarray(tokenizer.token_byte_lengths(), np.int32))
    eval_fn = make_eval_step(graphdef, token_bytes)
    eval_step = jax.jit(eval_fn, in_shardings=(param_sh, batch_sharding), out_shardings=replicated)
    return Setup(model_cfg=model_cfg, tokenizer=tokenizer, data_cfg=data_cfg, mesh=mesh,
                 graphdef=graphdef, tx=tx, schedule=schedule, abstract_state=abstract_state,
                 state_shardings=shardings, batch_sharding=batch_sharding, replicated=replicated,
                 train_step=train_step, eval_step=eval_step, steps=steps, init_fn=init_fn,
                 decay_mask=decay_mask)


def abstract_batch(config: ConfigDict, sharding: Any) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (config.data.batch_size, config.data.seq_len)
    return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding),
            "loss_mask": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)}


def compile_train_step(setup: Setup, config: ConfigDict) -> Any:
    """Ahead-of-time lower().compile() of the train step (the mesh active so constraints apply)."""
    with jax.set_mesh(setup.mesh):
        lowered = setup.train_step.lower(setup.abstract_state,
                                         abstract_batch(config, setup.batch_sharding))
        return lowered.compile()


def _global_batch(batch: dict[str, np.ndarray], sharding: Any, global_batch: int
                  ) -> dict[str, jax.Array]:
    """Process-local numpy rows -> global jax Arrays on the mesh (each process feeds its shard)."""
    out = {}
    for key in ("inputs", "targets", "loss_mask"):
        local = np.asarray(batch[key])
        shape = (global_batch, *local.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, local, shape)
    return out


# --------------------------------------------------------------------------- the loop


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


def train(config: ConfigDict, workdir: str, *, argv: list[str] | None = None,
          return_state: bool = False, progress: bool = True,
          devices: list[Any] | None = None) -> TrainResult:
    """Trains `config` in `workdir`, resuming from its latest complete checkpoint if any.

    `devices`: run on these devices only (default all; e.g. jax.devices()[:1] for a
    single-device reference run in a multi-device process). `progress=False` silences the
    log lines / bar (metrics.jsonl is written either way).

    Raises UserError for a bad config (before writing anything), TrainingDiverged on NaN/Inf
    with on_nan='stop'. SIGTERM/SIGINT: saves a checkpoint and returns with preempted=True.
    """
    with _StopFlag() as stop:  # from the start: a signal during start-up still exits cleanly
        return _run(config, workdir, stop, argv=argv, return_state=return_state,
                    progress=progress, devices=devices)


def _run(config: ConfigDict, workdir: str, stop: _StopFlag, *, argv: list[str] | None,
         return_state: bool, progress: bool, devices: list[Any] | None) -> TrainResult:
    from llmjax.data.pipeline import make_eval_batches, make_train_iterator
    from llmjax.model.flops import flops_per_token

    initialize_distributed(config)
    n_proc, proc = jax.process_count(), jax.process_index()
    n_devices = jax.device_count() if devices is None else len(devices)
    config_lib.validate(config, n_devices, n_proc)
    primary = proc == 0
    tokenizer = get_tokenizer_for(config)
    setup = build(config, tokenizer, devices)  # may raise UserError: still nothing written
    steps, batch_size, seq_len = setup.steps, config.data.batch_size, config.data.seq_len
    workdir = os.path.abspath(workdir)

    keep_steps = log_spaced_steps(steps) if config.log_spaced_checkpoints else []
    if primary:
        removed = remove_incomplete(os.path.join(workdir, CHECKPOINT_DIR))
        if removed and progress:
            print(f"ignored incomplete checkpoint(s) {', '.join(removed)}", flush=True)
    if n_proc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("llmjax: incomplete checkpoints removed")
    ckpt = Checkpointer(workdir, keep_last=config.keep_checkpoints, keep_every=config.keep_every,
                        keep_steps=keep_steps)
    resume_step = ckpt.latest_step()

    train_iter = make_train_iterator(setup.data_cfg, tokenizer, process_index=proc,
                                     process_count=n_proc)
    if resume_step is not None:
        restored, data_state, _ = ckpt.restore(resume_step, setup.abstract_state.as_dict())
        state = TrainState.from_dict(restored)
        train_iter.set_state(data_state)
    else:
        state = setup.init_fn()
    start_step = resume_step or 0

    if primary:
        _write_run_files(workdir, config, resume_step, tokenizer, argv, setup.mesh)
    writer = MetricsWriter(workdir, resume_step=start_step, tensorboard=bool(config.tensorboard),
                           enabled=primary)
    bar = Progress(steps, start_step, enabled=primary and progress)
    if resume_step is not None:
        bar.log(f"resumed from checkpoint at step {resume_step}")

    compiled = compile_train_step(setup, config)
    eval_batches = []
    if config.eval_every > 0:
        eval_batches = [_global_batch(b, setup.batch_sharding, batch_size)
                        for b in make_eval_batches(setup.data_cfg, tokenizer, config.eval_batches,
                                                   process_index=proc, process_count=n_proc)]
    flops_tok = flops_per_token(setup.model_cfg, seq_len).training
    peak = mfu_lib.device_peak(list(setup.mesh.devices.flat))
    tokens_per_step = batch_size * seq_len

    def evaluate(params: Any) -> dict[str, float]:
        sums = None
        with jax.set_mesh(setup.mesh):
            for b in eval_batches:
                out = setup.eval_step(params, b)
                sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        host = {k: float(v) for k, v in jax.device_get(sums).items()}
        return summarize_eval(host)

    last_saved = resume_step
    last_train: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None

    def save(step: int) -> bool:
        """Async checkpoint of `state` at `step`; False when that step is already saved."""
        nonlocal last_saved
        if last_saved == step:
            return False
        ckpt.save(step, state.as_dict(), train_iter.get_state(),
                  {"step": step, "tokens": step * tokens_per_step})
        last_saved = step
        return True

    probe_on = bool(config.get("probe_checkpoints", False))
    probe_tasks = config_lib.probe_task_names(config)

    def probe(step: int, tasks: list[str] | None) -> None:
        """The probe suite on state.params (read only) -> probes.jsonl, cost -> metrics.jsonl."""
        from llmjax.eval.probe import probe_params

        t0 = time.perf_counter()
        params = state.params
        if n_proc > 1:  # a collective: every process takes part, process 0 alone probes
            params = _gather_to_host(params)
        records = []
        if primary:
            records = probe_params(workdir, config, tokenizer, params, step,
                                   tokens=step * tokens_per_step, tasks=tasks)
        seconds = time.perf_counter() - t0
        writer.write({"kind": "probe", "step": step, "seconds": seconds,
                      "records": len(records)})
        bar.log(f"probe step {step} | {len(records)} records | {seconds:.1f}s")

    def save_and_probe(step: int) -> None:
        if save(step) and probe_on:
            probe(step, probe_tasks)

    def check(step: int, metrics: dict[str, jax.Array]) -> None:
        """Host-side NaN/Inf check of one step's metrics (blocks until that step is done)."""
        if bool(metrics["finite"]):
            return
        loss, gnorm = float(metrics["loss"]), float(metrics["grad_norm"])
        if config.on_nan == "skip":
            writer.write({"kind": "skip", "step": step, "loss": loss, "grad_norm": gnorm})
            bar.log(f"step {step}: non-finite loss {loss} / grad_norm {gnorm}; update skipped")
            return
        ckpt.wait()
        good = ckpt.latest_step()
        where = (f"last good checkpoint: step {good} in {ckpt.directory}" if good is not None
                 else "no checkpoint was saved")
        raise TrainingDiverged(f"non-finite loss or gradient at step {step} (loss={loss}, "
                               f"grad_norm={gnorm}); stopped, {where}")

    step = start_step
    pending: tuple[int, dict[str, jax.Array]] | None = None
    t_last, step_last = time.perf_counter(), step
    try:
        if probe_on and resume_step is not None:
            # Killed between a save and its probe, or preempted: fill in what the step lacks.
            missing = (_missing_probes(workdir, config, resume_step, probe_tasks) if primary
                       else [])
            if _decided_by_process_0(bool(missing), n_proc):
                probe(resume_step, missing)
        if config.log_spaced_checkpoints and step == 0 and 0 in keep_steps:
            save_and_probe(0)
        while step < steps:
            if _should_stop(stop, n_proc, step, config.log_every):
                break
            batch = _global_batch(next(train_iter), setup.batch_sharding, batch_size)
            state, metrics = compiled(state, batch)
            step += 1
            if pending is not None:
                check(*pending)  # the previous step; this one is already queued
            pending = (step, metrics)
            last = step == steps
            log_now = step % config.log_every == 0 or last
            eval_now = bool(eval_batches) and (step % config.eval_every == 0 or last)
            save_now = (last or (config.checkpoint_every > 0
                                 and step % config.checkpoint_every == 0)
                        or step in keep_steps)
            if not (log_now or eval_now or save_now):
                continue
            check(*pending)
            pending = None
            if log_now:
                m = jax.device_get(metrics)
                now = time.perf_counter()
                tok_s = (step - step_last) * tokens_per_step / max(now - t_last, 1e-9)
                flops_s, util = mfu_lib.mfu(flops_tok, tok_s, peak)
                last_train = {"kind": "train", "step": step, "loss": float(m["loss"]),
                              "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"]),
                              "tokens": step * tokens_per_step, "tokens_per_s": tok_s,
                              "flops_per_s": flops_s, "mfu": util, "time": time.time()}
                if config.z_loss > 0:
                    last_train["z_loss"] = float(m["z_loss"])
                writer.write(last_train)
                bar.log(format_train(last_train, steps, bar.eta(step), peak.label))
                bar.update(step, last_train)
            if eval_now:
                last_eval = {"kind": "eval", "step": step, **evaluate(state.params),
                             "tokens": step * tokens_per_step}
                writer.write(last_eval)
                bar.log(format_eval(last_eval))
            if save_now:
                save_and_probe(step)
            t_last, step_last = time.perf_counter(), step
        if pending is not None:
            check(*pending)
        preempted = step < steps
        if preempted:
            if step > 0:
                # Not probed: a preempted run must exit fast; the resumed run probes this step.
                save(step)  # no-op when this step's checkpoint exists (e.g. just restored)
                bar.log(f"received signal {stop.signum}: saved checkpoint at step {step}, exiting")
            else:
                bar.log(f"received signal {stop.signum} before the first step, exiting")
    finally:
        bar.close()
        ckpt.close()  # waits for async saves
        writer.close()
    return TrainResult(workdir=workdir, step=step, total_steps=steps, preempted=preempted,
                       resumed_from=resume_step, last_train=last_train, last_eval=last_eval,
                       state=state if return_state else None)


def _gather_to_host(tree: Any) -> Any:
    """Full numpy copies of a pytree of global arrays on every process (a collective)."""
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda x: np.asarray(x) if x.is_fully_addressable
                        else multihost_utils.process_allgather(x), tree)


def _missing_probes(workdir: str, config: ConfigDict, step: int,
                    tasks: list[str] | None) -> list[str]:
    """Probes of the training suite (restricted to `tasks`) with no record at `step` yet."""
    from llmjax.eval.probe import read_probes, resolve_evals

    wanted = list(resolve_evals(config.get("evals"), tasks))
    done = {r.get("task") for r in read_probes(workdir) if r.get("step") == step}
    return [t for t in wanted if t not in done]


def _decided_by_process_0(flag: bool, n_proc: int) -> bool:
    """Process 0's `flag` on every process (it alone reads the run's files)."""
    if n_proc == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _should_stop(stop: _StopFlag, n_proc: int, step: int, log_every: int) -> bool:
    """Single process: stop as soon as a signal arrived. Several processes must stop (and save)
    at the same step, so they compare flags at log steps with one tiny all-gather."""
    if n_proc == 1:
        return stop.signum is not None
    if step % log_every:
        return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(stop.signum is not None))
    return bool(np.max(flags))


__all__ = ["TrainResult", "TrainingDiverged", "build", "compile_train_step", "train",
           "initialize_distributed", "model_config_for", "data_config_for"]
