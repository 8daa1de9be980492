"""Run outputs: metrics.jsonl, TensorBoard events, a progress bar or plain log lines.

metrics.jsonl holds one JSON object per line:
  train:  {"kind": "train", "step", "loss", "grad_norm", "lr", "tokens", "tokens_per_s",
           "flops_per_s", "mfu", "time"}    (tokens = total train tokens seen after `step`)
  eval:   {"kind": "eval", "step", "loss", "perplexity", "bits_per_byte", "tokens"}
  skip:   {"kind": "skip", "step", "loss", "grad_norm"}   (on_nan='skip': update not applied)
  probe:  {"kind": "probe", "step", "seconds", "records"}   (config.probe_checkpoints: the
          probe suite run on the parameters after that step's checkpoint save)
`step` = number of optimizer updates done. Losses are mean next-token cross-entropy in nats.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, TextIO

from llmjax import rundir
from llmjax.rundir import read_jsonl


def read_metrics(workdir: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of `<workdir>/metrics.jsonl` (optionally one `kind` only); skips a torn line."""
    records = read_jsonl(rundir.RunDir(workdir).metrics_path)
    return [r for r in records if kind is None or r.get("kind") == kind]


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings so every line parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends records to metrics.jsonl (flushed per line) and TensorBoard when available.

    `resume_step`: drop existing records with step > resume_step first, so a resumed run's file
    equals the uninterrupted run's (records written after the restored checkpoint are redone).
    Only the primary process writes (`enabled=False` elsewhere).
    """

    def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True,
                 enabled: bool = True):
        self.enabled = enabled
        self.path = rundir.RunDir(workdir).metrics_path
        self._file: TextIO | None = None
        self._tb = None
        if not enabled:
            return
        self._truncate(resume_step)
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(rundir.RunDir(workdir).tensorboard_dir, flush_secs=30)

    def _truncate(self, resume_step: int | None) -> None:
        if not os.path.exists(self.path):
            return
        keep = [json.dumps(rec) + "\n" for rec in read_jsonl(self.path)
                if resume_step is None or rec.get("step", 0) <= resume_step]
        rundir.atomic_write(self.path, "".join(keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled or self._file is None:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a SIGKILL right after must not lose or tear earlier lines
        if self._tb is not None:
            kind, step = record.get("kind", "train"), record["step"]
            for k, v in record.items():
                numeric = isinstance(v, int | float) and not isinstance(v, bool)
                if k not in ("kind", "step") and numeric:
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _human(x: float, unit: str = "") -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_train(rec: dict[str, Any], total_steps: int, eta_s: float, peak_label: str) -> str:
    """One log line: step, loss, grad norm, lr, tokens/s, FLOP/s, MFU, ETA."""
    return (f"step {rec['step']}/{total_steps} | loss {rec['loss']:.4f} | "
            f"grad_norm {rec['grad_norm']:.3f} | lr {rec['lr']:.2e} | "
            f"{_human(rec['tokens_per_s'])} tok/s | {_human(rec['flops_per_s'])}FLOP/s | "
            f"MFU {100 * rec['mfu']:.2f}% {peak_label} | ETA {_duration(eta_s)}")


def format_eval(rec: dict[str, Any]) -> str:
    return (f"eval step {rec['step']} | loss {rec['loss']:.4f} | ppl {rec['perplexity']:.3f} | "
            f"bits/byte {rec['bits_per_byte']:.4f}")


class Progress:
    """A tqdm bar on a terminal (stderr is a TTY), plain log lines on stdout otherwise."""

    def __init__(self, total_steps: int, start_step: int, *, enabled: bool = True,
                 tty: bool | None = None):
        self.total, self.enabled = total_steps, enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._bar = None
        self._start_time, self._start_step = time.perf_counter(), start_step
        if enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                             dynamic_ncols=True, file=sys.stderr)

    def eta(self, step: int) -> float:
        done = step - self._start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self._start_time) / done * (self.total - step)

    def log(self, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, flush=True)

    def update(self, step: int, rec: dict[str, Any] | None = None) -> None:
        if self._bar is None:
            return
        self._bar.n = step
        if rec is not None:
            self._bar.set_postfix(loss=f"{rec['loss']:.4f}",
                                  tok_s=_human(rec["tokens_per_s"]), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
