"""Model FLOPs utilisation: achieved FLOP/s against the device's peak.

achieved FLOP/s = training FLOPs per token (6N + attention, `llmjax.model.flops`) x tokens/s.
Peaks are dense bf16 tensor-core numbers from vendor datasheets, per chip. On CPU there is no
datasheet number, so a float32 matrix-multiply probe measures one (a few hundred ms), labelled
as measured. It is remembered for the process, and across processes only where the user says so:
in `$LLMJAX_CACHE_DIR/cpu_peak.json` (keyed by CPU model and core count) when that variable is
set — `make demo` sets it to the demo's own directory. Nothing is written to $HOME.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

from llmjax import rundir

# (substring of jax Device.device_kind, lower-cased) -> dense bf16 peak FLOP/s per device.
# Most specific first: the first match wins.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h200", 989e12),
    ("h800", 989e12),
    ("gh200", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10g", 70e12),
    ("a10", 125e12),
    ("v100", 125e12),
    ("rtx 4090", 165e12),
    ("rtx 3090", 71e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("tpu v3", 123e12),
    ("tpu v2", 45e12),
)


@dataclasses.dataclass(frozen=True)
class Peak:
    """Peak FLOP/s of the whole set of devices a run uses, and where the number came from."""

    flops: float  # FLOP/s, all devices together
    label: str  # e.g. "NVIDIA H100 x8 (datasheet bf16)" or "(measured CPU peak)"
    measured: bool


def lookup_peak(device_kind: str) -> float | None:
    """Datasheet dense bf16 peak FLOP/s of one device, or None when unknown."""
    kind = device_kind.lower()
    for key, flops in PEAK_FLOPS:
        if key in kind:
            return flops
    return None


CACHE_ENV = "LLMJAX_CACHE_DIR"
_MEASURED: dict[str, float] = {}  # this process's measurements, by CPU key


def _cache_path() -> str | None:
    base = os.environ.get(CACHE_ENV)
    return os.path.join(base, "cpu_peak.json") if base else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_key() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{_cpu_model()} | {cores} cores | float32"


def measure_cpu_peak(size: int = 1024, min_seconds: float = 0.5) -> float:
    """float32 matmul FLOP/s of this CPU through XLA (best of repeated [size,size]@[size,size]).

    Runs on the first CPU device; XLA's CPU matmul uses all cores' threads, so this is the whole
    machine's peak, shared by all forced host devices.
    """
    import jax
    import numpy as np

    device = jax.devices("cpu")[0]
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.standard_normal((size, size), dtype=np.float32), device)
    b = jax.device_put(rng.standard_normal((size, size), dtype=np.float32), device)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()  # compile + warm up
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def cpu_peak(use_cache: bool = True) -> float:
    """Measured CPU peak FLOP/s, remembered for the process and (with $LLMJAX_CACHE_DIR) in
    that directory."""
    path, key = _cache_path(), _cpu_key()
    if use_cache and key in _MEASURED:
        return _MEASURED[key]
    cache: dict = {}
    if use_cache and path is not None and os.path.exists(path):
        try:
            with open(path) as f:
                cache = json.load(f)
            if isinstance(cache.get(key), int | float) and cache[key] > 0:
                return float(cache[key])
        except (OSError, ValueError):
            cache = {}
    flops = measure_cpu_peak()
    _MEASURED[key] = flops
    if path is None:
        return flops
    cache[key] = flops
    try:
        rundir.atomic_write_json(path, cache)  # concurrent runs never read half a file
    except OSError:
        pass
    return flops


def device_peak(devices: list | None = None) -> Peak:
    """Peak FLOP/s of `devices` (default: all jax devices) together, with its provenance."""
    import jax

    devices = list(jax.devices() if devices is None else devices)
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        return Peak(cpu_peak(), "(measured CPU peak)", True)
    per_device = lookup_peak(kind)
    if per_device is None:
        return Peak(float("nan"), f"{kind} (unknown peak)", False)
    return Peak(per_device * len(devices), f"{kind} x{len(devices)} (datasheet bf16)", False)


def mfu(flops_per_token: float, tokens_per_second: float, peak: Peak) -> tuple[float, float]:
    """(achieved FLOP/s, MFU fraction) for a throughput of `tokens_per_second`."""
    achieved = flops_per_token * tokens_per_second
    return achieved, achieved / peak.flops if peak.flops > 0 else float("nan")
