"""Run the probe suite on a run directory's checkpoints; results go to `<workdir>/probes.jsonl`.

    records = run_probes("runs/tiny", steps="all")         # what `llmjax probe --all_steps` does

The suite is declared in the training config (big_vision style), `config.evals`: a mapping from a
probe name to its settings, `type` first. An empty `config.evals` means `default_evals()`.

  type      options (defaults)                   what it records (k = 0 unless few-shot)
  episode   kind, ks (0,1,2,4,8,16), n (32),     `tasks.evaluate` metrics per k (exact_match,
            seed (0), num_examples (max ks + 1),  *_hard, acc, baselines, ...)
            sampler ('default' | 'first_n')
  sentence  ks, n (16), seed, min/max_words       + bleu, chrf, rouge1/2/L
  facts     n (64), seed, top_entities (0 = all)  zero-shot acc over the attribute's values, ...
  icl       n (64), early, late (0 = scaled)     icl_score, loss_early, loss_late (nats) over
                                                  the first n documents reaching `late`,
                                                  position_early, position_late
  induction n_seqs (16), seq_len (0 = auto),     prefix_matching_l{L}h{H}, copying_l{L}h{H},
            seed (0)                              prefix_matching_max, copying_of_max,
                                                  strongest_layer, strongest_head
  perplexity n (32)                               perplexity (per token), bits_per_byte,
                                                  word_perplexity of whole validation documents

Each record is {"task", "k", "metric", "value", "step", "n", "tokens"}: n documents (or
sequences) behind the value, tokens = training tokens seen at `step`. Writing is idempotent per
(task, k, metric, step): a re-run replaces those records and keeps the others; the file is
rewritten atomically.

Probe documents: episodes use held-out rules and `probe_rng` seeds (never training data); icl and
perplexity read the first n documents of the run's validation split; facts read the world of the
run's synthetic corpus (skipped for other datasets, whose world the model never saw).

During training: after a checkpoint is saved, `probe_params(workdir, exp, tokenizer, params,
step, tokens)` runs the same suite on the in-memory parameters and merges into probes.jsonl
(`config.probe_checkpoints`, `config.probe_tasks`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmjax import rundir
from llmjax.config import Experiment, parse_experiment
from llmjax.data import builders
from llmjax.data.synthetic import build_world, generate_documents
from llmjax.data.tokenizer import ByteTokenizer, load_tokenizer_file
from llmjax.errors import UserError
from llmjax.eval import harness, icl, metrics
from llmjax.eval.harness import LM
from llmjax.eval.suite import default_evals, resolve_evals
from llmjax.eval.tasks import build_task, evaluate
from llmjax.finetune import params as ft_params
from llmjax.generate import decode
from llmjax.model import Transformer, attention_weights
from llmjax.rundir import RunDir, read_jsonl
from llmjax.train import checkpoint

RECORD_KEY = ("task", "k", "metric", "step")


# ----------------------------------------------------------------------------- run directories


@dataclasses.dataclass
class Run:
    """What a probe needs from a run directory (config.json, tokenizer/, checkpoints/)."""

    workdir: str
    exp: Experiment  # the run's parsed config
    tokenizer: Any
    model_cfg: Any  # llmjax.model.ModelConfig

    @property
    def max_len(self) -> int:
        """The window the model was trained on (data.seq_len), in tokens."""
        return int(min(self.exp.data.seq_len, self.model_cfg.max_seq_len))


def load_run(workdir: str, *, need_tokenizer: bool = True) -> Run:
    """Reads config.json and tokenizer/ of a run; UserError naming what is missing or bad.
    need_tokenizer=False: a run without tokenizer/ (an HF import without one) loads with
    tokenizer None, when its config names its vocabulary size."""
    run = RunDir(workdir)
    if not run.exists():
        raise UserError(f"--workdir={workdir}: no such directory")
    saved = run.saved_config()
    if saved is None:
        raise UserError(f"--workdir={workdir}: no {rundir.CONFIG} (not a training run directory)")
    try:
        exp = parse_experiment(saved)
    except UserError as e:
        raise UserError(f"{run.config_path}: {e}") from None
    if not os.path.isfile(os.path.join(run.tokenizer_dir, "tokenizer.json")):
        if need_tokenizer or exp.vocab_from_tokenizer:
            raise UserError(f"--workdir={workdir}: no {rundir.TOKENIZER}/tokenizer.json")
        return Run(run.path, exp, None, exp.model)
    tokenizer = load_tokenizer_file(run.tokenizer_dir)
    return Run(run.path, exp, tokenizer, exp.model_config(tokenizer.vocab_size))


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps with a complete checkpoint, ascending."""
    return checkpoint.saved_steps(workdir)


def _abstract_params(model_cfg: Any, device: Any = None) -> tuple[Any, Any]:
    """(graphdef, pure-dict tree of ShapeDtypeStructs on `device`) of the model's parameters."""
    graphdef, abstract, _ = nnx.split(
        nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
    sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
    tree = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        nnx.to_pure_dict(abstract))
    return graphdef, tree


def load_params(workdir: str, step: int | None = None, model_cfg: Any = None
                ) -> tuple[Any, Any, int]:
    """(graphdef, params as a pure dict on one device, step) from a run's checkpoint (only the
    params subtree is read; see `llmjax.train.checkpoint.restore_params`). step=None: the
    latest complete checkpoint. A fine-tuning run's params come with its LoRA adapters merged
    and without its classification head: the model's own (`llmjax.finetune.params`)."""
    steps = checkpoint_steps(workdir)
    if not steps:
        raise UserError(f"--workdir={workdir}: no complete checkpoint in {rundir.CHECKPOINTS}/")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise UserError(f"--step={step}: no complete checkpoint at that step; available: "
                        f"{', '.join(map(str, steps))}")
    run = load_run(workdir, need_tokenizer=False)
    if model_cfg is None:
        model_cfg = run.model_cfg
    graphdef, abstract = _abstract_params(model_cfg)
    ft = run.exp.finetune
    if not ft_params.wrapped(ft):
        return graphdef, checkpoint.restore_params(workdir, step, abstract), step
    extras = jax.eval_shape(lambda: ft_params.init_extras(ft, abstract, model_cfg.d_model,
                                                          jax.random.PRNGKey(0)))
    sharding = jax.tree.leaves(abstract)[0].sharding
    extras = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          extras)
    params = checkpoint.restore_params(workdir, step, {"model": abstract, **extras})
    return graphdef, jax.jit(lambda p: ft_params.model_params(p, ft))(params), step


def training_tokens(workdir: str, step: int, exp: Experiment) -> int:
    """Training tokens seen at `step`: the checkpoint's meta, else step * batch * seq_len."""
    try:
        return int(checkpoint.read_meta(workdir, step)["tokens"])
    except (UserError, KeyError, TypeError, ValueError):
        return int(step) * exp.tokens_per_step


# ----------------------------------------------------------------------------- probe data


def _synthetic_overrides(exp: Experiment) -> dict[str, Any] | None:
    """SyntheticConfig overrides of the run's dataset, None when it is not synthetic."""
    kind, _, arg = exp.data.dataset_spec.partition(":")
    if kind != "synthetic":
        return None
    return builders.parse_overrides(arg)


def world_of(exp: Experiment) -> tuple[Any, bool]:
    """(World of the run's synthetic corpus or the default world, is_the_runs_own_world)."""
    overrides = _synthetic_overrides(exp)
    return _world(_world_key(overrides)), overrides is not None


def _world_key(overrides: Mapping[str, Any] | None) -> str:
    return json.dumps(overrides or {}, sort_keys=True)


@functools.lru_cache(maxsize=8)
def _world(world_key: str) -> Any:
    """The world of SyntheticConfig overrides `world_key` (JSON), built once per process."""
    return build_world(builders.synthetic_config(json.loads(world_key)))


def validation_texts(exp: Experiment, n: int) -> list[str]:
    """The first n documents of the run's validation split (read once per process)."""
    return list(_validation_texts(exp.data.dataset_spec, exp.data.data_dir, int(n)))


@functools.lru_cache(maxsize=16)
def _validation_texts(dataset_spec: str, data_dir: str | None, n: int) -> tuple[str, ...]:
    kind, _, arg = dataset_spec.partition(":")
    if kind == "synthetic":  # generated on the fly: needs no prepared dataset
        out = []
        for doc in generate_documents(builders.synthetic_config(builders.parse_overrides(arg)),
                                      "validation"):
            if len(out) >= n:
                break
            out.append(doc)
        return tuple(out)
    source = builders.load_split(dataset_spec, "validation", data_dir)
    return tuple(bytes(r["text"]).decode("utf-8", errors="replace")
                 for r in (source[i] for i in range(min(n, len(source)))))


def induction_pool(tokenizer: Any) -> np.ndarray:
    """Token ids for the random sequences of the prefix-matching probe: the lowercase letters
    for the byte tokenizer (what its corpora are made of), else every non-special id."""
    if getattr(tokenizer, "name", "") == "byte":
        return np.asarray(tokenizer.encode("abcdefghijklmnopqrstuvwxyz"), np.int32)
    lengths = np.asarray(tokenizer.token_byte_lengths())
    return np.flatnonzero(lengths > 0).astype(np.int32)


# ----------------------------------------------------------------------------- probing


def probe_model(model: Any, tokenizer: Any, max_len: int, exp: Experiment,
                evals: Mapping[str, Mapping[str, Any]], *, batch_size: int = 16,
                min_len: int = 32,
                log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Runs the suite `evals` on an nnx Transformer; records without step/tokens.

    Scoring goes through `harness.LM` (the model's own forward pass), rows padded to batch_size
    and lengths to the power-of-two buckets min_len..max_len (32, 64, 128 for a 128-token
    window): a handful of compiled programs per model shape (`compiled_programs`), shared by
    every checkpoint and run of that shape in the process."""
    graphdef, params = nnx.split(model)
    lm = LM.from_model(graphdef, params, tokenizer, max_len, batch_size=batch_size,
                       min_len=min_len)
    overrides = _synthetic_overrides(exp)
    own_world, world_key = overrides is not None, _world_key(overrides)

    def texts(n: int) -> list[str]:
        return validation_texts(exp, n)

    records: list[dict[str, Any]] = []

    def add(task: str, k: int, metric: str, value: float, n: int) -> None:
        records.append({"task": task, "k": int(k), "metric": metric, "value": float(value),
                        "n": int(n)})

    for name, spec in evals.items():
        t0 = time.perf_counter()
        kind = spec["type"]
        if kind in ("episode", "sentence", "facts"):
            if kind == "facts" and not own_world:
                if log:
                    log(f"{name}: skipped (the run's data is not the synthetic corpus)")
                continue
            task, items = _task_items(name, json.dumps(dict(spec), sort_keys=True),
                                      world_key, _tokenizer_key(tokenizer), max_len)
            for k in task.ks:
                for s in evaluate(lm, task, k, items=items[k]):
                    add(name, k, s.metric, s.value, s.n)
        elif kind == "icl":
            n = int(spec.get("n", 64))
            early = int(spec.get("early") or icl.default_icl_positions(max_len)[0])
            late = int(spec.get("late") or icl.default_icl_positions(max_len)[1])
            # The first n validation documents that reach the late position.
            long_enough = [t for t in texts(4 * n) if len(lm.encode_context(t)) > late][:n]
            if not long_enough:
                if log:
                    log(f"{name}: skipped (no validation document has {late} tokens)")
                continue
            score = icl.icl_score(lm, long_enough, early=early, late=late)
            for metric, value in (("icl_score", score.score), ("loss_early", score.early_loss),
                                  ("loss_late", score.late_loss),
                                  ("icl_score_stderr", score.stderr),
                                  ("position_early", score.early),
                                  ("position_late", score.late)):
                add(name, 0, metric, value, score.n_docs)
        elif kind == "induction":
            pool = induction_pool(tokenizer)
            seq_len = int(spec.get("seq_len") or min(len(pool), (max_len - 1) // 2, 32))
            if not 1 <= seq_len <= (max_len - 1) // 2:
                raise UserError(f"evals.{name}.seq_len={seq_len}: the repeated sequence and BOS "
                                f"must fit the window; allowed 1..{(max_len - 1) // 2}")
            n_seqs = int(spec.get("n_seqs", 16))
            batch = icl.repeated_random_tokens(pool, seq_len, n_seqs, int(spec.get("seed", 0)),
                                               tokenizer.bos_id)
            probs = np.asarray(_attention_weights(graphdef, params, jnp.asarray(batch)))
            pm = icl.prefix_matching_from_attention(probs, batch[:, 1:1 + seq_len], 1)
            cp = icl.copying_scores(model, pool)
            for layer in range(pm.shape[0]):
                for head in range(pm.shape[1]):
                    add(name, 0, f"prefix_matching_l{layer}h{head}", pm[layer, head], n_seqs)
                    add(name, 0, f"copying_l{layer}h{head}", cp[layer, head], len(pool))
            best = icl.strongest_induction_head(pm, cp)
            add(name, 0, "prefix_matching_max", best.prefix_matching, n_seqs)
            add(name, 0, "copying_of_max", best.copying, len(pool))
            add(name, 0, "strongest_layer", best.layer, n_seqs)
            add(name, 0, "strongest_head", best.head, n_seqs)
        elif kind == "perplexity":
            docs = texts(int(spec.get("n", 32)))
            scores = lm.rolling_token_scores(docs)
            lls = [s.loglikelihood for s in scores]
            n_tok = [len(s.logprobs) for s in scores]
            n_bytes = [metrics.count_bytes(d) for d in docs]
            n_words = [metrics.count_words(d) for d in docs]
            add(name, 0, "perplexity", metrics.perplexity(lls, n_tok), len(docs))
            add(name, 0, "bits_per_byte", metrics.bits_per_byte(lls, n_bytes), len(docs))
            add(name, 0, "word_perplexity", metrics.word_perplexity(lls, n_words), len(docs))
        if log:
            log(f"{name}: {time.perf_counter() - t0:.1f}s")
    return records


def _tokenizer_key(tokenizer: Any) -> Any:
    """What the probe items depend on of a tokenizer: every ByteTokenizer is the same one (so runs
    share items); any other is keyed by the object itself."""
    return "byte" if type(tokenizer) is ByteTokenizer else tokenizer


@functools.lru_cache(maxsize=256)
def _task_items(name: str, spec_json: str, world_key: str, tokenizer_key: Any, max_len: int
                ) -> tuple[Any, dict[int, list[Any]]]:
    """(task, items per k) of one suite entry. They depend on the entry, the world, the tokenizer
    and the window only, so they are built once per process for every checkpoint and run."""
    tokenizer = ByteTokenizer() if tokenizer_key == "byte" else tokenizer_key
    task = build_task(name, json.loads(spec_json), _world(world_key))
    return task, {k: task.items(k, tokenizer, max_len) for k in task.ks}


@functools.partial(jax.jit, static_argnums=0)
def _attention_weights(graphdef: Any, params: Any, tokens: jax.Array) -> jax.Array:
    """`llmjax.model.attention_weights` of the model (graphdef, params), compiled once per model
    shape and batch shape (graphdef is static, so models of equal configs share the program)."""
    return attention_weights(nnx.merge(graphdef, params), tokens)


def compiled_programs() -> dict[str, int]:
    """How many programs the probe path has compiled in this process, per jitted function (its
    jit cache size: one entry per distinct model shape x padded batch shape)."""
    return {"score": harness._score._cache_size(),
            "generate": decode._generate._cache_size(),
            "attention_weights": _attention_weights._cache_size()}


def _probe_step(run: Run, model: Any, step: int, tokens: int,
                evals: Mapping[str, Mapping[str, Any]],
                log: Callable[[str], None] | None) -> list[dict[str, Any]]:
    """Probes `model` of `run` at `step`, stamps step and training tokens on every record and
    merges them into the run's probes.jsonl."""
    records = probe_model(model, run.tokenizer, run.max_len, run.exp, evals, log=log)
    for r in records:
        r["step"], r["tokens"] = int(step), int(tokens)
    write_records(run.workdir, records)
    return records


def probe_params(workdir: str, exp: Experiment, tokenizer: Any, params: Any, step: int,
                 tokens: int | None = None, *, tasks: Sequence[str] | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The training hook: probes in-memory parameters (pure dict, as TrainState.params) of
    `exp` at `step` and merges the records into `<workdir>/probes.jsonl`.
    tokens: training tokens seen at `step` (default step x batch_size x seq_len)."""
    run = Run(os.path.abspath(workdir), exp, tokenizer, exp.model_config(tokenizer.vocab_size))
    graphdef, _ = _abstract_params(run.model_cfg)
    params = jax.device_put(params, jax.devices()[0])  # eval on one device, whatever the mesh
    if tokens is None:
        tokens = int(step) * exp.tokens_per_step
    return _probe_step(run, nnx.merge(graphdef, params), step, tokens,
                       resolve_evals(exp.evals, tasks), log)


def run_probes(workdir: str, steps: None | str | int | Sequence[int] = None,
               evals_config: Mapping[str, Any] | None = None, *,
               tasks: Sequence[str] | None = None,
               log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Probes checkpoints of a run and merges the records into `<workdir>/probes.jsonl`.

    steps: None or 'latest' (the latest checkpoint), 'all', a step, or a list of steps.
    evals_config: the suite (default: the run's `config.evals`, or `default_evals()`).
    Returns the new records (fields: task, k, metric, value, step, n, tokens).
    """
    run = load_run(workdir)
    with RunDir(workdir).lock(say=log):  # one process at a time writes the run's files
        return _run_probes(run, steps, evals_config, tasks, log)


def _run_probes(run: Run, steps: None | str | int | Sequence[int],
                evals_config: Mapping[str, Any] | None, tasks: Sequence[str] | None,
                log: Callable[[str], None] | None) -> list[dict[str, Any]]:
    workdir = run.workdir
    available = checkpoint_steps(workdir)
    if not available:
        raise UserError(f"--workdir={workdir}: no complete checkpoint to probe")
    if steps is None or steps == "latest":
        chosen = [available[-1]]
    elif steps == "all":
        chosen = available
    elif isinstance(steps, int | np.integer):
        chosen = [int(steps)]
    elif isinstance(steps, str):
        raise UserError(f"steps={steps!r}: use 'latest', 'all', a step or a list of steps")
    else:
        chosen = [int(s) for s in steps]
    missing = [s for s in chosen if s not in available]
    if missing:
        raise UserError(f"--step={missing[0]}: no complete checkpoint at that step; available: "
                        f"{', '.join(map(str, available))}")
    evals = resolve_evals(evals_config if evals_config is not None
                          else run.exp.evals, tasks)
    out: list[dict[str, Any]] = []
    for step in chosen:
        graphdef, params, _ = load_params(workdir, step, run.model_cfg)
        model = nnx.merge(graphdef, params)
        t0 = time.perf_counter()
        records = _probe_step(run, model, step, training_tokens(workdir, step, run.exp),
                              evals, log)
        if log:
            programs = compiled_programs()
            log(f"step {step}: {len(records)} records in {time.perf_counter() - t0:.1f}s "
                f"({sum(programs.values())} programs compiled in this process: {programs})")
        out.extend(records)
    return out


# ----------------------------------------------------------------------------- probes.jsonl


def read_probes(workdir: str) -> list[dict[str, Any]]:
    """Records of `<workdir>/probes.jsonl` (a torn last line is skipped)."""
    return read_jsonl(RunDir(workdir).probes_path)


def _key(r: Mapping[str, Any]) -> tuple:
    return tuple(r.get(f) for f in RECORD_KEY)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no NaN / Inf
    return value


def write_records(workdir: str, records: Sequence[Mapping[str, Any]]) -> str:
    """Merges records into probes.jsonl: same (task, k, metric, step) replaced, others kept,
    order by (step, task, k, metric); written to a temp file and renamed."""
    path = RunDir(workdir).probes_path
    new = {_key(r): {k: _clean(v) for k, v in r.items()} for r in records}
    merged = {_key(r): r for r in read_probes(workdir) if _key(r) not in new}
    merged.update(new)
    rows = sorted(merged.values(), key=lambda r: (r["step"], str(r["task"]), r["k"],
                                                  str(r["metric"])))
    rundir.atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path


__all__ = ["Run", "checkpoint_steps", "compiled_programs", "default_evals", "load_params",
           "load_run", "probe_model", "probe_params", "read_probes", "resolve_evals", "run_probes",
           "training_tokens", "write_records"]
