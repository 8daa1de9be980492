"""Multi-process start-up: read the cluster's environment, check it, call jax.distributed.

Recognised environments (first match wins):
  explicit   JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i
  SLURM      SLURM_NTASKS (> 1 means several processes), SLURM_PROCID, SLURM_NODELIST ...
  Open MPI   OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK
  Cloud TPU  TPU_WORKER_HOSTNAMES / MEGASCALE_COORDINATOR_ADDRESS
Every variable that is set is checked before JAX sees it, so a malformed one is one line naming
it (exit 2), not a traceback from deep inside jax.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from llmjax.errors import UserError

_INT_VARS = ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_NNODES", "SLURM_NODEID", "SLURM_LOCALID",
             "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "JAX_NUM_PROCESSES",
             "JAX_PROCESS_ID")


def _int_var(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise UserError(f"environment variable {name}={raw!r}: allowed values are >= {minimum}")
    return value


def cluster_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The checked cluster variables: {"kind", "num_processes", "process_id", "coordinator"}.

    kind is 'explicit', 'slurm', 'mpi', 'tpu' or None (a single process).
    """
    env = os.environ if env is None else env
    ints = {name: _int_var(env, name, 1 if name.endswith(("NTASKS", "SIZE", "NNODES",
                                                            "NUM_PROCESSES")) else 0)
            for name in _INT_VARS}
    coordinator = env.get("JAX_COORDINATOR_ADDRESS")
    if coordinator is not None and coordinator.strip():
        host, sep, port = coordinator.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"environment variable JAX_COORDINATOR_ADDRESS={coordinator!r}: "
                            "expected host:port with a port in 1..65535")
        n, i = ints["JAX_NUM_PROCESSES"], ints["JAX_PROCESS_ID"]
        if n is None or i is None:
            missing = "JAX_NUM_PROCESSES" if n is None else "JAX_PROCESS_ID"
            raise UserError(f"environment variable {missing} is required when "
                            "JAX_COORDINATOR_ADDRESS is set")
        if i >= n:
            raise UserError(f"environment variable JAX_PROCESS_ID={i}: must be < "
                            f"JAX_NUM_PROCESSES={n}")
        return {"kind": "explicit", "num_processes": n, "process_id": i,
                "coordinator": coordinator.strip()}
    if ints["SLURM_NTASKS"] is not None:
        n, i = ints["SLURM_NTASKS"], ints["SLURM_PROCID"] or 0
        if i >= n:
            raise UserError(f"environment variable SLURM_PROCID={i}: must be < SLURM_NTASKS={n}")
        return {"kind": "slurm" if n > 1 else None, "num_processes": n, "process_id": i,
                "coordinator": None}
    if ints["OMPI_COMM_WORLD_SIZE"] is not None:
        n, i = ints["OMPI_COMM_WORLD_SIZE"], ints["OMPI_COMM_WORLD_RANK"] or 0
        if i >= n:
            raise UserError(f"environment variable OMPI_COMM_WORLD_RANK={i}: must be < "
                            f"OMPI_COMM_WORLD_SIZE={n}")
        return {"kind": "mpi" if n > 1 else None, "num_processes": n, "process_id": i,
                "coordinator": None}
    if env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return {"kind": "tpu", "num_processes": None, "process_id": None, "coordinator": None}
    return {"kind": None, "num_processes": 1, "process_id": 0, "coordinator": None}


def requested(setting: Any, env: Mapping[str, str] | None = None) -> bool:
    """config `distributed`: true/false, or 'auto' = a multi-process environment is set."""
    value = str(setting).strip().lower()
    cluster = cluster_env(env)  # checked whatever the setting: a bad variable is a user error
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    return cluster["kind"] is not None


def initialize(setting: Any) -> None:
    """jax.distributed.initialize() when `setting` (config `distributed`) or the environment asks.

    Must run before anything touches jax devices; a second call is a no-op.
    """
    if not requested(setting):
        return
    import jax
    from jax._src import distributed as _dist  # is_initialized is not public API

    if getattr(_dist.global_state, "client", None) is not None:
        return
    cluster = cluster_env()
    kwargs = {}
    if cluster["kind"] == "explicit":
        kwargs = {"coordinator_address": cluster["coordinator"],
                  "num_processes": cluster["num_processes"],
                  "process_id": cluster["process_id"]}
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"distributed={setting!r}: jax.distributed.initialize failed: "
                        f"{' '.join(str(e).split())[:300]}") from None


def decided_by_process_0(flag: bool, n_proc: int) -> bool:
    """Process 0's `flag` on every process (a collective when n_proc > 1): for decisions that
    process 0 alone can make, e.g. from the run's files or its lock."""
    if n_proc == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


__all__ = ["cluster_env", "decided_by_process_0", "initialize", "requested"]
