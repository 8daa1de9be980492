"""`llmjax data ...` as a user runs it: real subprocesses, tmp data dirs, exit codes, stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SYNTH = ["--dataset=synthetic", "--synthetic.num_train_docs=150",
         "--synthetic.num_validation_docs=12"]
SAMPLE = ["sample", *SYNTH, "--tokenizer=byte", "--seq_len=24", "--batch_size=4", "--seed=5"]


def _env(data_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Never touch ~/tensorflow_datasets, even if a flag is forgotten.
    env["TFDS_DATA_DIR"] = str(data_dir) if data_dir else "/nonexistent-llmjax-test"
    return env


def _start(args: list[str], data_dir: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmjax", "data", *args], env=_env(data_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(args: list[str], data_dir: Path | None = None) -> subprocess.CompletedProcess:
    return _finish(_start(args, data_dir))


def _run_all(cases: dict[str, list[str]], data_dir: Path | None = None):
    """Runs independent CLI calls concurrently (start-up dominates each one)."""
    procs = {k: _start(v, data_dir) for k, v in cases.items()}
    return {k: _finish(p) for k, p in procs.items()}


def _rows(out: str) -> list[list[int]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    first = _run(["prepare", *SYNTH, f"--data_dir={d}"])
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("prepared synthetic:") and "train=150" in first.stdout
    return d


def test_prepare_twice_is_a_no_op_that_says_so(data_dir):
    again = _run(["prepare", *SYNTH, f"--data_dir={data_dir}"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already prepared") and "nothing to do" in again.stdout


def test_sample_skip_and_processes(data_dir):
    d = f"--data_dir={data_dir}"
    big = 10**9
    r = _run_all({
        "all": [*SAMPLE, d, "--num_batches=6"],
        "skip": [*SAMPLE, d, "--num_batches=2", "--skip=3"],
        "p0": [*SAMPLE, d, "--num_batches=6", "--process_index=0", "--process_count=2"],
        "p1": [*SAMPLE, d, "--num_batches=6", "--process_index=1", "--process_count=2"],
        "far": [*SAMPLE, d, "--num_batches=2", f"--skip={big}"],
        "far1": [*SAMPLE, d, "--num_batches=1", f"--skip={big + 1}"],
    })
    for name, res in r.items():
        assert res.returncode == 0, (name, res.stderr)
    rows = _rows(r["all"].stdout)
    assert len(rows) == 6 * 4 and all(len(row) == 25 for row in rows)
    assert all(0 <= t < 259 for row in rows for t in row)
    # --skip=3 prints exactly batches 3 and 4 of the run without skip.
    assert _rows(r["skip"].stdout) == rows[3 * 4:5 * 4]
    # Two processes: 2 rows each per batch, together the global batch, never the same row.
    p0, p1 = _rows(r["p0"].stdout), _rows(r["p1"].stdout)
    for k in range(6):
        assert p0[2 * k:2 * k + 2] + p1[2 * k:2 * k + 2] == rows[4 * k:4 * k + 4]
    assert not {tuple(x) for x in p0} & {tuple(x) for x in p1}
    # A billion batches in (hundreds of epochs): reached by restoring state, not by reading.
    far, far1 = _rows(r["far"].stdout), _rows(r["far1"].stdout)
    assert len(far) == 8 and far[4:] == far1


def test_stats_counts_bytes_and_tokens(data_dir):
    res = _run(["stats", *SYNTH, f"--data_dir={data_dir}", "--tokenizer=byte"])
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: dict(f.split("=", 1) for f in line.split()[1:])
             for line in res.stdout.splitlines() if line.startswith("split=")}
    from llmjax.data import synthetic

    cfg = synthetic.SyntheticConfig.from_dict({"num_train_docs": 150, "num_validation_docs": 12})
    for split in ("train", "validation"):
        docs = list(synthetic.generate_documents(cfg, split))
        fields = lines[f"split={split}"]
        assert int(fields["documents"]) == len(docs)
        assert int(fields["bytes"]) == int(fields["tokens"]) == sum(len(t.encode()) for t in docs)
        assert float(fields["bytes_per_token"]) == 1.0
    # The entropy the generator computed: one line per family it can score exactly.
    entropy = {line.split("family=")[1].split()[0]: line
               for line in res.stdout.splitlines() if line.startswith("entropy ")}
    assert set(entropy) == {"prose", "facts", "episodes", "repeats"}
    assert "not computed" in entropy["episodes"] and "nats_per_token=" in entropy["prose"]


def test_text_files_invalid_utf8_and_a_50mb_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bad.txt").write_bytes(b"caf\xe9 \xff end")
    # 50 MB on one line: cut into <= 1 MiB documents at whitespace, never held twice over.
    word = b"abcdefghij" * 9 + b"klmnopqrs "
    with open(corpus / "huge.txt", "wb") as f:
        for _ in range(50):
            f.write(word * 10486)
    size = (corpus / "huge.txt").stat().st_size
    assert size >= 50 * 10**6
    data = tmp_path / "data"
    prep = _run(["prepare", "--dataset=text_files", f"--source={corpus}", f"--data_dir={data}"])
    assert prep.returncode == 0, prep.stderr
    counts = prep.stdout.split("(")[1].split(")")[0]
    n_docs = sum(int(kv.split("=")[1]) for kv in counts.split(", "))
    chunk = (1 << 20) // len(word) * len(word)  # cut after the last space within 1 MiB
    assert n_docs == 1 + -(-size // chunk)
    res = _run(["sample", "--dataset=text_files", f"--source={corpus}", f"--data_dir={data}",
                "--tokenizer=byte", "--seq_len=64", "--batch_size=2", "--num_batches=1",
                "--seed=0"])
    assert res.returncode == 0, res.stderr
    assert len(_rows(res.stdout)) == 2
    stats = _run(["stats", "--dataset=text_files", f"--source={corpus}", f"--data_dir={data}"])
    assert stats.returncode == 0, stats.stderr
    total = sum(int(line.split("bytes=")[1].split()[0]) for line in stats.stdout.splitlines()
                if line.startswith("split="))
    # Every byte of the big file kept; the two invalid bytes became U+FFFD (3 bytes each).
    assert total == size + len("caf\ufffd \ufffd end".encode())


def test_bad_input_gets_a_one_line_error_and_nonzero_exit(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    d = f"--data_dir={tmp_path / 'data'}"
    cases = {
        "missing directory": (["prepare", "--dataset=text_files", f"--source={tmp_path / 'no'}",
                               d], "--source="),
        "empty corpus": (["prepare", "--dataset=text_files", f"--source={empty}", d],
                         "holds no .txt or .jsonl file"),
        "unknown dataset": (["prepare", "--dataset=wikitext", d],
                            "--dataset='wikitext': unknown dataset"),
        "unknown tokenizer": ([*SAMPLE[:-4], "--tokenizer=wordpiece", "--seq_len=8",
                               "--batch_size=2", "--num_batches=1", d],
                              "--tokenizer='wordpiece': unknown tokenizer"),
        "seq_len < 2": ([*SAMPLE[:-4], "--tokenizer=byte", "--seq_len=1", "--batch_size=2",
                         "--num_batches=1", d], "--seq_len"),
        "batch not divisible": ([*SAMPLE[:-4], "--tokenizer=byte", "--seq_len=8",
                                 "--batch_size=3", "--process_count=2", "--num_batches=1", d],
                                "batch_size=3 is not divisible by process_count=2"),
        "catalog without tf": (["prepare", "--dataset=tfds:tiny_shakespeare", d],
                               "llmjax[tf]"),
        "unknown flag": (["prepare", "--dataset=pystdlib", "--colour=red", d], "--colour"),
    }
    results = _run_all({k: v[0] for k, v in cases.items()})
    for name, (_, expected) in cases.items():
        res = results[name]
        assert res.returncode == 2, (name, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, res.stderr)
        assert expected in lines[0], (name, lines[0])
    assert not list((tmp_path / "data").glob("llmjax_text_files/*/*"))
