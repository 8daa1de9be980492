"""Config loading, overrides, validation: each config error is one line, exit 2, no files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmjax.cli import main as cli_main
from llmjax.config import base_config, load_config, parse_experiment
from llmjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")
LM = os.path.join(REPO, "experiments", "configs", "lm.py")


def test_load_tiny_with_variant_and_overrides():
    config = load_config(f"{TINY}:steps=7", ["model.d_model=128", "--config.data.data_dir=/x/y",
                                             "config.optimizer.schedule=linear"])
    assert config.steps == 7
    assert config.model.d_model == 128
    assert config.data.data_dir == "/x/y"
    assert config.optimizer.schedule == "linear"
    parse_experiment(config, num_devices=4)


def test_bare_name_resolves_to_experiments_configs():
    assert load_config("tiny").model.d_model == load_config(TINY).model.d_model


def test_lm_family_grows_with_depth():
    widths = [load_config(f"{LM}:size={s}").model.d_model for s in ("XS", "S", "M")]
    assert widths == sorted(widths) and len(set(widths)) == 3
    c = load_config(f"{LM}:depth=3,tokenizer=bpe:512")
    assert (c.model.n_layers, c.model.d_model, c.data.tokenizer) == (3, 192, "bpe:512")
    parse_experiment(c, num_devices=1)


def test_tokens_sets_the_step_count():
    config = load_config(TINY, ["tokens=10000"])
    per_step = config.data.batch_size * config.data.seq_len
    assert parse_experiment(config).steps == -(-10000 // per_step)


def test_base_config_has_every_section():
    c = base_config()
    for section in ("model", "data", "optimizer", "mesh"):
        assert section in c
    assert c.mesh.data == -1 and c.on_nan == "stop"


# ---------------------------------------------------------------------------- error paths


def _run_cli(tmp_path, capsys, *flags: str) -> tuple[int, str, str]:
    workdir = tmp_path / "run"
    rc = cli_main(["train", f"--config={TINY}", f"--workdir={workdir}", *flags])
    err = capsys.readouterr().err.strip()
    return rc, err, str(workdir)


def _assert_config_error(tmp_path, capsys, flags: list[str], must_contain: list[str]) -> None:
    rc, err, workdir = _run_cli(tmp_path, capsys, *flags)
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for text in must_contain:
        assert text in err, (text, err)
    assert not os.path.exists(workdir), "a config error must not create the workdir"


def test_unknown_override_key(tmp_path, capsys):
    _assert_config_error(tmp_path, capsys, ["--config.model.d_modle=64"], ["model.d_modle"])


def test_unknown_key_in_config_file(tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text(f"import runpy\n"
                    f"def get_config(arg=None):\n"
                    f"    c = runpy.run_path({TINY!r})['get_config']()\n"
                    f"    c.unlock()\n"
                    f"    c.optimizer.learning_rate = 0.1\n"
                    f"    return c\n")
    rc = cli_main(["train", f"--config={path}", f"--workdir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "optimizer.learning_rate" in err and "lr" in err  # names the key and the allowed ones
    assert not (tmp_path / "run").exists()


def test_wrong_type_on_command_line(tmp_path, capsys):
    _assert_config_error(tmp_path, capsys, ["--config.model.d_model=wide"], ["model.d_model"])


def test_wrong_type_in_config_file(tmp_path, capsys):
    path = tmp_path / "bad_type.py"
    path.write_text(f"import runpy\n"
                    f"def get_config(arg=None):\n"
                    f"    c = runpy.run_path({TINY!r})['get_config']()\n"
                    f"    c.unlock()\n"
                    f"    del c['on_nan']\n"
                    f"    c.on_nan = 3\n"
                    f"    return c\n")
    rc = cli_main(["train", f"--config={path}", f"--workdir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "on_nan" in err and "'stop'" in err and "'skip'" in err
    assert not (tmp_path / "run").exists()


def test_d_model_not_divisible_by_n_heads(tmp_path, capsys):
    _assert_config_error(tmp_path, capsys, ["--config.model.d_model=66"],
                         ["model.d_model=66", "model.n_heads=4", "allowed n_heads"])


def test_n_heads_not_divisible_by_n_kv_heads(tmp_path, capsys):
    _assert_config_error(tmp_path, capsys, ["--config.model.n_kv_heads=3"],
                         ["model.n_kv_heads=3", "[1, 2, 4]"])


def test_mesh_does_not_match_device_count(tmp_path, capsys):
    # conftest forces 4 host devices; 3 x 1 x 1 cannot use them.
    _assert_config_error(tmp_path, capsys, ["--config.mesh.data=3"], ["mesh", "4 devices"])


def test_batch_size_not_divisible_by_data_parallel_size(tmp_path, capsys):
    _assert_config_error(tmp_path, capsys, ["--config.data.batch_size=6",
                                            "--config.mesh.data=4"],
                         ["data.batch_size=6", "multiples of 4"])


def test_enum_value_names_allowed_values(tmp_path, capsys):
    _assert_config_error(tmp_path, capsys, ["--config.optimizer.schedule=step"],
                         ["optimizer.schedule", "'cosine'", "'linear'", "'constant'"])


def test_missing_config_file(tmp_path, capsys):
    rc = cli_main(["train", f"--config={tmp_path / 'nope.py'}", f"--workdir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nope.py" in err and "\n" not in err


def test_validate_is_pure_python():
    config = load_config(TINY, ["mesh.data=2", "mesh.tensor=2"])
    parse_experiment(config, num_devices=4)
    with pytest.raises(UserError, match="mesh"):
        parse_experiment(config, num_devices=8)


def test_exit_code_2_through_the_real_entry_point(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "llmjax", "train", f"--config={TINY}", f"--workdir={workdir}",
         "--config.model.d_model=66"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "model.d_model" in lines[0]
    assert not workdir.exists()
