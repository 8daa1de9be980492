"""Test setup: XLA flags must be set before jax is first imported anywhere."""

import os

import pytest

# Four forced host devices so sharding tests can build 2x2 meshes on a CPU-only machine.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
# Subprocesses started by tests inherit these; keep them single-threaded-friendly on 2 cores.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
