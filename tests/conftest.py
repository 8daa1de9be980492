"""Test setup: XLA flags must be set before jax is first imported anywhere."""

import os

# Four forced host devices so sharding tests can build 2x2 meshes on a CPU-only machine.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
# Subprocesses started by tests inherit these; keep them single-threaded-friendly on 2 cores.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
