"""Every user input of the data section gets one line naming its field, before anything is written.

Synthetic knobs from the command line (`--config.data.synthetic.<knob>=v` for every knob, with the
dataset's identity unchanged by default values), dataset specs, text_files paths, data_dir and
tokenizer specs: each bad value is a UserError naming the field (`data.<field>` from a config,
`--<flag>` from `llmjax data`), raised by `DataConfig.from_config` / `builders.prepare` before the
data dir is touched.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmjax.config import base_config, load_config
from llmjax.data import builders, synthetic
from llmjax.data.pipeline import DataConfig
from llmjax.errors import UserError

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "experiments" / "configs" / "tiny.py")
TINY_SPEC = 'synthetic:{"num_train_docs":2000,"num_validation_docs":100}'


def _error(values: dict, **kw) -> str:
    with pytest.raises(UserError) as e:
        DataConfig.from_config(values, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- synthetic knobs


def test_every_synthetic_knob_is_in_the_base_config_at_its_default():
    knobs = {f.name: f.default for f in dataclasses.fields(synthetic.SyntheticConfig)}
    assert base_config().data.synthetic.to_dict() == knobs
    assert DataConfig().synthetic == knobs
    # Spelling every default out is no override: the default dataset keeps its spec (and dir).
    assert DataConfig().dataset_spec == "synthetic"
    assert DataConfig.from_config(base_config().data).dataset_spec == "synthetic"


def test_a_knob_the_config_file_does_not_set_works_from_the_command_line():
    assert DataConfig.from_config(load_config(TINY, []).data).dataset_spec == TINY_SPEC
    config = load_config(TINY, ["data.synthetic.repeat_gap_max=2", "data.synthetic.prose=1"])
    assert config.data.synthetic.repeat_gap_max == 2
    assert DataConfig.from_config(config.data).dataset_spec == (
        'synthetic:{"num_train_docs":2000,"num_validation_docs":100,"prose":1.0,'
        '"repeat_gap_max":2}')


def test_a_default_valued_knob_leaves_the_dataset_unchanged():
    for override in ("data.synthetic.seed=0", "data.synthetic.prose=0.25",
                     "data.synthetic.version=1.0.0", "data.synthetic.episode_copy=1"):
        cfg = DataConfig.from_config(load_config(TINY, [override]).data)
        assert cfg.dataset_spec == TINY_SPEC, override
    # Same spec, same prepared dataset: the version directory does not move.
    assert (builders.dataset_version(TINY_SPEC)
            == builders.dataset_version(builders.resolve_dataset(
                "synthetic", synthetic={**synthetic.default_knobs(), "num_train_docs": 2000,
                                        "num_validation_docs": 100})))


def test_knobs_in_the_dataset_name_are_not_undone_by_the_default_mapping():
    cfg = DataConfig.from_config({"dataset": "synthetic:num_train_docs=300"})
    assert cfg.dataset_spec == 'synthetic:{"num_train_docs":300}'


def test_default_knobs_are_allowed_with_other_datasets_but_set_ones_are_not(tmp_path):
    assert DataConfig.from_config({"dataset": "pystdlib"}).dataset_spec == "pystdlib"
    msg = _error({"dataset": "pystdlib", "synthetic": {**synthetic.default_knobs(), "seed": 4}})
    assert msg.startswith("data.synthetic.seed=4 is set but data.dataset='pystdlib'")


@pytest.mark.parametrize("knob, value, needle", [
    ("seed", -1, "data.synthetic.seed must be >= 0"),
    ("seed", "abc", "data.synthetic.seed must be an integer"),
    ("num_train_docs", 1.5, "data.synthetic.num_train_docs must be an integer"),
    ("prose", True, "data.synthetic.prose must be a number"),
    ("prose", float("inf"), "data.synthetic.prose must be finite"),
    ("topic_prob", 1.5, "data.synthetic.topic_prob is a probability"),
    ("version", "", "data.synthetic.version must be a non-empty string"),
    ("repeat_count_min", 1, "data.synthetic.repeat_count_min must be >= 2"),
    ("modulus_max", 11, "data.synthetic.modulus_max must be in [2, 10]"),
    ("zipf_exponent", 0.0, "data.synthetic.zipf_exponent must be > 0"),
    ("lexicon_size", 100_000, "data.synthetic.lexicon_size=100000"),
    ("lexicon_sise", 3, "data.synthetic.lexicon_sise"),
])
def test_a_bad_knob_names_data_synthetic_knob(knob, value, needle):
    msg = _error({"synthetic": {**synthetic.default_knobs(), knob: value}})
    assert needle in msg, msg


def test_a_bad_knob_in_a_config_file_is_caught_by_validation():
    config = load_config(TINY, ["data.synthetic.episode_keys_max=12"])
    assert "data.synthetic.episode_keys_max must be <= 10" in _error(config.data)


# ----------------------------------------------------------------------------- dataset specs


@pytest.mark.parametrize("values, needle", [
    ({"dataset": "imagenet"}, "data.dataset='imagenet': unknown dataset; allowed: synthetic"),
    ({"dataset": ""}, "data.dataset='': must be a non-empty string"),
    ({"dataset": "tfds:"}, "data.dataset='tfds:': expected tfds:NAME"),
    ({"dataset": "tfds:#text"}, "data.dataset='tfds:#text': expected tfds:NAME"),
    ({"dataset": "tfds:tiny shakespeare"}, "data.dataset='tfds:tiny shakespeare': expected"),
    ({"dataset": "tfds:../x"}, "data.dataset='tfds:../x': expected"),
    ({"dataset": "tfds:lm1b#te xt"}, "data.dataset='tfds:lm1b#te xt': expected"),
    ({"dataset": "tfds:a:b:c"}, "data.dataset='tfds:a:b:c': expected"),
    ({"dataset": "pystdlib:3.11"}, "data.dataset='pystdlib:3.11': dataset pystdlib takes no"),
    ({"dataset": "synthetic:seed"}, "data.dataset='synthetic:seed': bad synthetic override"),
    ({"dataset": "synthetic:{1}"}, "data.dataset='synthetic:{1}': synthetic overrides are not"),
    ({"dataset": "synthetic:sede=1"}, "data.dataset='synthetic:sede=1': unknown synthetic knob"),
    ({"dataset": "text_files"}, "data.source is required for data.dataset=text_files"),
    ({"dataset": "text_files:/a", "source": "/b"}, "data.source='/b' disagrees with"),
])
def test_a_bad_dataset_spec_names_the_field(values, needle):
    assert needle in _error(values)


def test_good_specs_still_resolve():
    for name in ("tfds:tiny_shakespeare", "tfds:c4/en:3.0.1", "tfds:lm1b#text",
                 "tfds:mnist:3.*.*", "pystdlib", "synthetic", "synthetic:seed=1"):
        DataConfig.from_config({"dataset": name})


# ----------------------------------------------------------------------------- text_files paths


@pytest.fixture
def paths(tmp_path) -> dict[str, Path]:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "sub" / "a.txt").write_text("hello world\n")
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    (empty / ".hidden" / "x.txt").write_text("hidden files are not the corpus\n")
    (empty / "notes.md").write_text("not a text suffix\n")
    (tmp_path / "notes.md").write_text("x\n")
    (tmp_path / "plain_file").write_text("x\n")
    return {"root": tmp_path, "corpus": corpus, "empty": empty,
            "md": tmp_path / "notes.md", "file": tmp_path / "plain_file",
            "data": tmp_path / "data"}


def _text_files(paths, source: str, **kw) -> dict:
    return {"dataset": "text_files", "source": source, "data_dir": str(paths["data"]), **kw}


@pytest.mark.parametrize("which, needle", [
    ("missing", "data.source={}: no such file or directory"),
    ("empty", "data.source={}: the directory holds no .txt or .jsonl file"),
    ("md", "data.source={}: not a .txt or .jsonl file"),
    ("glob", "data.source={}: the glob matches no .txt or .jsonl file"),
])
def test_a_bad_text_files_path_names_data_source(paths, which, needle):
    source = {"missing": str(paths["root"] / "nope"), "empty": str(paths["empty"]),
              "md": str(paths["md"]), "glob": str(paths["root"] / "*.txt")}[which]
    assert needle.format(source) in _error(_text_files(paths, source))
    assert not paths["data"].exists()


def test_a_path_in_the_dataset_name_names_data_dataset(paths):
    msg = _error({"dataset": f"text_files:{paths['root'] / 'nope'}"})
    assert msg.startswith(f"data.dataset={paths['root'] / 'nope'}: no such file")


def test_an_unreadable_source_names_data_source(paths, monkeypatch):
    # (Tests may run as root, for whom chmod 000 reads fine: make os.access say no instead.)
    real = os.access
    target = str(paths["corpus"])
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == target
                        else real(p, mode, **kw))
    assert (f"data.source={target}: not readable (permission denied)"
            in _error(_text_files(paths, target)))


def test_a_good_text_files_source_passes(paths):
    for source in (paths["corpus"], paths["corpus"] / "sub" / "a.txt",
                   paths["corpus"] / "**" / "*.txt"):
        DataConfig.from_config(_text_files(paths, str(source)))
    assert not paths["data"].exists()  # validation writes nothing


# ----------------------------------------------------------------------------- data_dir


def test_a_data_dir_that_is_a_file_names_data_data_dir(paths):
    f = paths["file"]
    assert _error({"data_dir": str(f)}).startswith(f"data.data_dir={f}: is a file")
    assert _error({"data_dir": str(f / "sub")}).startswith(
        f"data.data_dir={f / 'sub'}: cannot be created: {f} is a file")


def test_an_unwritable_data_dir_names_data_data_dir(paths, monkeypatch):
    real = os.access
    ro = paths["root"] / "readonly"
    ro.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro)
                        else real(p, mode, **kw))
    assert _error({"data_dir": str(ro)}).startswith(f"data.data_dir={ro}: is not writable")
    assert _error({"data_dir": str(ro / "a" / "b")}).startswith(
        f"data.data_dir={ro / 'a' / 'b'}: cannot be created: {ro} is not writable")
    with pytest.raises(UserError, match="data_dir=.*readonly: is not writable"):
        builders.prepare("synthetic", str(ro), synthetic={"num_train_docs": 5})
    assert not list(ro.iterdir())


def test_a_new_data_dir_under_a_writable_parent_passes(paths):
    DataConfig.from_config({"data_dir": str(paths["root"] / "new" / "deeper")})
    assert not (paths["root"] / "new").exists()


# ----------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("spec", ["bpe:0", "bpe:abc", "bpe:", "bpe:258", "bpe:-300", "BYTE",
                                  "sentencepiece:1000"])
def test_a_bad_tokenizer_spec_names_data_tokenizer(spec):
    msg = _error({"tokenizer": spec})
    assert msg.startswith(f"data.tokenizer={spec!r}: unknown tokenizer; use 'byte' or "
                          "'bpe:<vocab_size>' with 259 <= vocab_size")


# ----------------------------------------------------------------------------- end to end


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TFDS_DATA_DIR": str(cwd / "default-data-dir")}
    return subprocess.run([sys.executable, "-m", "llmjax", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_cli_bad_inputs_exit_2_with_one_line_naming_the_flag(paths):
    root = paths["root"]
    cases = {
        ("data", "prepare", "--dataset=synthetic", f"--data_dir={paths['file']}"):
            f"error: --data_dir={paths['file']}: is a file",
        ("data", "prepare", "--dataset=text_files", f"--source={root / 'nope'}",
         f"--data_dir={paths['data']}"): f"error: --source={root / 'nope'}: no such file",
        ("data", "prepare", "--dataset=tfds:", f"--data_dir={paths['data']}"):
            "error: --dataset='tfds:': expected tfds:NAME",
        ("data", "stats", "--dataset=synthetic", "--tokenizer=bpe:abc",
         f"--data_dir={paths['data']}"): "error: --tokenizer='bpe:abc': unknown tokenizer",
        ("data", "prepare", "--dataset=synthetic", "--synthetic.seed=-2",
         f"--data_dir={paths['data']}"): "error: --synthetic.seed must be >= 0",
    }
    procs = {args: subprocess.Popen(
        [sys.executable, "-m", "llmjax", *args], cwd=root, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TFDS_DATA_DIR": str(root / "default-data-dir")}) for args in cases}
    for args, needle in cases.items():
        out, err = procs[args].communicate(timeout=300)
        line = _one_line(subprocess.CompletedProcess(args, procs[args].returncode, out, err))
        assert line.startswith(needle), (args, line)
    assert not paths["data"].exists() and not (root / "default-data-dir").exists()


def test_train_with_a_bad_data_field_exits_2_before_writing_the_workdir(paths):
    workdir = paths["root"] / "run"
    line = _one_line(_cli("train", f"--config={TINY}", f"--workdir={workdir}",
                          "--config.data.tokenizer=bpe:0",
                          f"--config.data.data_dir={paths['data']}", cwd=paths["root"]))
    assert "data.tokenizer='bpe:0'" in line
    line = _one_line(_cli("train", f"--config={TINY}", f"--workdir={workdir}",
                          "--config.data.synthetic.repeat_count_min=1",
                          f"--config.data.data_dir={paths['data']}", cwd=paths["root"]))
    assert "data.synthetic.repeat_count_min must be >= 2" in line
    assert not workdir.exists() and not paths["data"].exists()
