"""Test setup: XLA flags must be set before jax is first imported anywhere."""

import os
import shutil
import tempfile

import pytest

# Four forced host devices in the test processes, so sharding tests can build 2x2 meshes on a
# CPU-only machine. The subprocesses they start (CLI runs, sweeps) get the caller's own flags, one
# device unless a test asks for more: a tiny run gains nothing from a 4-way mesh on 2 cores and
# pays for it in compile time (measured: a cold 12-step `llmjax train` 11.4 s on 1 device, 14.5 s
# on 4).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
_force_devices = "xla_force_host_platform_device_count" not in _flags  # else the caller's choice
if _force_devices:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
# Subprocesses started by tests inherit these; keep them single-threaded-friendly on 2 cores.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache per test session, shared by the xdist workers and every
# subprocess they start: many tests compile the same tiny programs (measured: test_resume.py
# 82 s -> 52 s). Keys hash the program and the flags, so a hit is the same executable; the
# directory is new for each session, so no run leans on an earlier one.
_session = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
_XLA_CACHE = os.path.join(tempfile.gettempdir(), f"llmjax-test-xla-cache-{_session}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

if _force_devices:  # after the cache settings: jax reads them on import
    import jax

    jax.devices()  # the backend reads XLA_FLAGS once, here
    if _flags:
        os.environ["XLA_FLAGS"] = _flags
    else:
        del os.environ["XLA_FLAGS"]


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller, after every worker is done
        shutil.rmtree(_XLA_CACHE, ignore_errors=True)  # never a directory the user chose


def train_tiny(base, steps: int = 100, **overrides) -> str:
    """Trains experiments/configs/tiny.py for `steps` steps in `base`/run (its data in `base`/data)
    on one device, in this process; returns the run directory."""
    import jax

    from llmjax.config import load_config
    from llmjax.train import train

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(repo, "experiments", "configs", "tiny.py"), [
        f"data.data_dir={os.path.join(str(base), 'data')}", f"steps={steps}",
        f"checkpoint_every={steps}", "eval_every=0", "tensorboard=False",
        *(f"{k}={v}" for k, v in overrides.items())])
    workdir = os.path.join(str(base), "run")
    train(config, workdir, progress=False, devices=jax.devices()[:1])
    return workdir


@pytest.fixture(scope="module")
def trained_tiny_run(tmp_path_factory):
    """A tiny run trained for 50 steps, one per test module that asks for it."""
    return train_tiny(tmp_path_factory.mktemp("tiny50"), steps=50)

