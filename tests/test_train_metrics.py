"""metrics.jsonl writing/truncation on resume, MFU peak lookup, progress output."""

from __future__ import annotations

import json
import os

from llmjax.rundir import METRICS as METRICS_FILE
from llmjax.train.metrics import MetricsWriter, Progress, read_metrics
from llmjax.train.mfu import Peak, lookup_peak, mfu


def test_resume_truncates_records_after_the_restored_step(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=False)
    for step in (1, 2, 3, 4):
        w.write({"kind": "train", "step": step, "loss": 1.0 / step})
    w.write({"kind": "eval", "step": 4, "loss": 0.5, "perplexity": 1.6, "bits_per_byte": 0.7})
    w.close()
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"kind": "train", "step": 5, "lo')  # torn by a SIGKILL mid-write
    w = MetricsWriter(str(tmp_path), resume_step=2, tensorboard=False)
    w.write({"kind": "train", "step": 3, "loss": 0.3})
    w.close()
    assert [(r["kind"], r["step"]) for r in read_metrics(str(tmp_path))] == [
        ("train", 1), ("train", 2), ("train", 3)]
    assert read_metrics(str(tmp_path))[-1]["loss"] == 0.3


def test_non_finite_values_stay_valid_json(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=False)
    w.write({"kind": "skip", "step": 7, "loss": float("nan"), "grad_norm": float("inf")})
    w.close()
    line = open(tmp_path / METRICS_FILE).read()
    rec = json.loads(line)  # strict JSON: no bare NaN
    assert rec["loss"] == "nan" and rec["grad_norm"] == "inf"


def test_tensorboard_events_when_available(tmp_path):
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return
    w = MetricsWriter(str(tmp_path), tensorboard=True)
    w.write({"kind": "train", "step": 1, "loss": 2.0})
    w.close()
    assert os.listdir(tmp_path / "tensorboard")


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricsWriter(str(tmp_path), enabled=False)
    w.write({"kind": "train", "step": 1, "loss": 2.0})
    w.close()
    assert os.listdir(tmp_path) == []


def test_peak_table_and_mfu():
    assert lookup_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert lookup_peak("NVIDIA H100 PCIe") == 756e12
    assert lookup_peak("NVIDIA A100-SXM4-40GB") == 312e12
    assert lookup_peak("TPU v5 lite") == 197e12
    assert lookup_peak("TPU v4") == 275e12
    assert lookup_peak("some new chip") is None
    achieved, util = mfu(6e6, 1e6, Peak(12e12, "x", False))
    assert achieved == 6e12 and util == 0.5


def test_progress_plain_lines_and_tty_bar(capsys):
    p = Progress(10, 0, tty=False)
    p.log("step 1/10 | loss 3")
    p.update(1, {"loss": 3.0, "tokens_per_s": 10.0})
    p.close()
    assert capsys.readouterr().out == "step 1/10 | loss 3\n"
    p = Progress(10, 0, tty=True)
    p.log("hello")
    p.update(5, {"loss": 2.5, "tokens_per_s": 1000.0})
    p.close()
    err = capsys.readouterr().err
    assert "hello" in err and "5/10" in err and "2.5" in err
