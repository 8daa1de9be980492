"""Multi-process start-up: read the cluster's environment, check it, call jax.distributed.

Recognised environments (first match wins):
  explicit   JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i
  SLURM      SLURM_NTASKS (> 1 means several processes), SLURM_PROCID, SLURM_NODELIST ...
  Open MPI   OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK
  Cloud TPU  TPU_WORKER_HOSTNAMES / MEGASCALE_COORDINATOR_ADDRESS
Every variable that is set is checked before JAX sees it, so a malformed one is one line naming
it (exit 2), not a traceback from deep inside jax.distributed.

Timeouts (seconds, environment): LLMJAX_INIT_TIMEOUT (default 300) bounds how long a process
waits for the coordinator and for every process to connect; LLMJAX_HEARTBEAT_TIMEOUT (default
100) is how long a silent process is taken for alive. A process other than 0 that cannot reach
the coordinator within LLMJAX_INIT_TIMEOUT exits 2 with one line (checked here, over TCP, before
JAX tries). A process that dies during training makes the others' next collective fail: they
exit 1 with one line naming the failure (`peer_failure`), or, when the coordinator (process 0)
died, JAX itself stops them ("Terminating process because the JAX distributed service detected
fatal errors"). Nobody hangs: on CPU, collectives run through gloo (JAX's default).
"""

from __future__ import annotations

import os
import socket
import sys
import time
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
        step_nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES")
        if n > 1 and step_nodes and step_nodes.strip().isdigit() and int(step_nodes) > n:
            raise UserError(f"inconsistent process counts: SLURM_NTASKS={n} tasks on "
                            f"{int(step_nodes)} nodes; every node needs at least one task")
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


def timeouts(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """{"init", "heartbeat"}: LLMJAX_INIT_TIMEOUT / LLMJAX_HEARTBEAT_TIMEOUT, checked."""
    env = os.environ if env is None else env
    init = _int_var(env, "LLMJAX_INIT_TIMEOUT", 1)
    beat = _int_var(env, "LLMJAX_HEARTBEAT_TIMEOUT", 1)
    return {"init": 300 if init is None else init, "heartbeat": 100 if beat is None else beat}


def slurm_coordinator(env: Mapping[str, str]) -> str | None:
    """host:port JAX's SLURM detection picks (first node of the step, port from the job id)."""
    try:
        from jax._src.clusters.slurm_cluster import SlurmCluster
    except ImportError:  # a JAX without it: let jax.distributed detect everything itself
        return None
    if not all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST")):
        return None
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return SlurmCluster.get_coordinator_address(None, None)
    except (KeyError, ValueError):
        return None
    finally:
        os.environ.clear()
        os.environ.update(saved)


def wait_for_coordinator(address: str, timeout: float, process_id: int) -> None:
    """Returns once a TCP connection to `address` succeeds; UserError after `timeout` s."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as e:
            last = e.strerror or type(e).__name__
        if time.monotonic() >= deadline:
            raise UserError(f"process {process_id}: cannot reach the JAX coordinator at {address} "
                            f"within {timeout:g} s ({last}); is process 0 running? "
                            "(LLMJAX_INIT_TIMEOUT sets the wait)")
        time.sleep(0.25)


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
    limits = timeouts()
    kwargs: dict[str, Any] = {"initialization_timeout": limits["init"],
                              "heartbeat_timeout_seconds": limits["heartbeat"],
                              "shutdown_timeout_seconds": limits["heartbeat"]}
    coordinator = cluster["coordinator"]
    if cluster["kind"] == "slurm":
        coordinator = slurm_coordinator(os.environ)
    if cluster["kind"] in ("explicit", "slurm") and coordinator is not None:
        kwargs.update(coordinator_address=coordinator, num_processes=cluster["num_processes"],
                      process_id=cluster["process_id"])
        if cluster["process_id"] != 0:
            wait_for_coordinator(coordinator, limits["init"], cluster["process_id"])
        else:
            print(f"jax.distributed: process 0 of {cluster['num_processes']}, coordinator "
                  f"{coordinator}, waiting up to {limits['init']} s for the others",
                  file=sys.stderr, flush=True)
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


_PEER_MARKERS = ("gloo", "connection closed", "connection reset", "heartbeat", "unavailable",
                 "deadline_exceeded", "coordination service", "barrier")


def peer_failure(exc: BaseException) -> str | None:
    """One line when `exc` is a collective or coordination failure between processes (another
    process died or cannot be reached), else None. Only meaningful with several processes."""
    text = " ".join(str(exc).split())
    if not any(m in text.lower() for m in _PEER_MARKERS):
        return None
    import jax

    return (f"process {jax.process_index()} of {jax.process_count()}: a collective with the other "
            f"processes failed, another process probably died (see its log): {text[:240]}")


def exit_on_peer_failure(exc: BaseException) -> None:
    """With several processes, a collective that failed because a peer died: print one line and
    end this process at once (exit 1), skipping JAX's shutdown barrier, which would wait for the
    dead process and then abort with a stack trace."""
    import jax

    try:
        several = jax.process_count() > 1
    except RuntimeError:
        return
    line = peer_failure(exc) if several else None
    if line is None:
        return
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


__all__ = ["cluster_env", "decided_by_process_0", "exit_on_peer_failure", "initialize",
           "peer_failure", "requested", "slurm_coordinator", "timeouts", "wait_for_coordinator"]
