"""One host or many: forming the JAX process group and gathering results across it.

Every process runs the same program (JAX's multi-controller model). ``initialize`` joins the
process group from explicit flags (``--coordinator HOST:PORT --num-processes N --process-id I``),
from the environment variables ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID``, or lets JAX auto-detect a cluster (SLURM, Open MPI, a multi-host cloud TPU)
when one is present; a plain single process does nothing. After it, ``jax.devices()`` lists
the devices of all processes and ``data.pipeline.data_mesh`` spans all of them.

Conventions built on it:
- Each process feeds only its own rows of every global batch (``data.pipeline.local_rows``);
  ``data.pipeline.shard_batch`` turns them into one global array.
- Per-example outputs are global arrays; ``to_host`` gathers them so every process holds every
  example exactly once (the padding is dropped by the caller's mask, as on one process).
- Only the main process (index 0) writes tables, figures, logs, metrics.csv and config.yaml;
  checkpoints are written and read collectively by every process (Orbax coordinates it).
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np

DEFAULT_TIMEOUT_S = 120


class DistributedError(ValueError):
    """The process group cannot be formed (bad flags, unreachable coordinator). A ValueError,
    so the CLIs report it as a one-line error with exit code 2."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}: got {value!r}; expected an integer") from None


def detected_cluster() -> str | None:
    """The name of a multi-process cluster environment JAX can auto-detect, or None.

    Only cheap environment checks (no network): a SLURM job step with more than one task, an
    Open MPI launch with more than one rank, or a multi-host cloud TPU slice. A one-task SLURM
    job or a single TPU VM is a plain single process and needs no process group.
    """
    env = os.environ
    if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                              "SLURM_LOCALID")) and _env_int("SLURM_NTASKS") not in (None, 0, 1):
        return "SLURM"
    if "OMPI_MCA_orte_hnp_uri" in env and _env_int("OMPI_COMM_WORLD_SIZE") not in (None, 0, 1):
        return "Open MPI"
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
    if "," in hosts:
        return "cloud TPU"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """Join the JAX process group; returns True when running as part of one.

    Explicit arguments win over ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID``; with none of them set, a detected cluster (``detected_cluster``) is
    joined through JAX's own auto-detection, and otherwise nothing happens (one process).
    A process that cannot reach the coordinator within ``timeout_s`` seconds raises
    DistributedError naming the address. Must run before anything touches a JAX device.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    cluster = None
    if coordinator is None and num_processes is None and process_id is None:
        cluster = detected_cluster()
        if cluster is None:
            return False  # a plain single process
    elif None in (coordinator, num_processes, process_id):
        missing = [flag for flag, v in (("--coordinator HOST:PORT", coordinator), ("--num-processes N", num_processes),
                                        ("--process-id I", process_id)) if v is None]
        raise DistributedError(f"a multi-process run needs --coordinator, --num-processes and --process-id together "
                               f"(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); missing "
                               f"{', '.join(missing)}")
    else:
        _check_flags(coordinator, num_processes, process_id)
        if num_processes == 1:
            return False
    # CPU devices talk through gloo (TCP); GPUs and TPUs use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = coordinator or f"the coordinator of the {cluster} job"
    remaining = timeout_s
    if coordinator is not None:
        remaining = rendezvous(coordinator, num_processes, process_id, timeout_s)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=max(int(remaining), 5))
    except Exception as exc:  # XLA raises RuntimeError / XlaRuntimeError / ValueError variants
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DistributedError(f"process {process_id if process_id is not None else '?'} could not join the process "
                               f"group at {where} within {timeout_s} s ({first}); start every process with the same "
                               "--coordinator HOST:PORT (process 0 runs on HOST) and check that the port is reachable"
                               ) from None
    return True


def rendezvous(coordinator: str, num_processes: int, process_id: int, timeout_s: float) -> float:
    """Wait (at most ``timeout_s``) until all processes have reached ``coordinator``; returns the
    seconds left.

    Written by hand because JAX's own connect aborts the whole process (a C++ fatal error, no
    Python exception) when a peer or the coordinator does not show up in time; this plain TCP
    handshake on the coordinator's port, done before JAX binds it, turns that into a one-line
    DistributedError naming the address (process 0 also names the missing process ids).
    """
    host, _, port = coordinator.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    hint = ("start every process with the same --coordinator HOST:PORT and --num-processes, process 0 on HOST, "
            "and check that the port is reachable")
    if process_id == 0:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                server.bind(("", int(port)))
            except OSError as exc:
                raise DistributedError(f"process 0 cannot listen on {coordinator} ({exc.strerror}); choose a free "
                                       "--coordinator port") from None
            server.listen(num_processes)
            peers: dict[int, socket.socket] = {}
            try:
                while len(peers) < num_processes - 1:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        missing = sorted(set(range(1, num_processes)) - set(peers))
                        raise DistributedError(f"process 0 at {coordinator}: process(es) {missing} did not join "
                                               f"within {timeout_s:g} s; {hint}")
                    server.settimeout(min(left, 1.0))
                    try:
                        conn, _ = server.accept()
                    except TimeoutError:
                        continue
                    conn.settimeout(max(deadline - time.monotonic(), 0.1))
                    try:
                        peers[int(conn.recv(16).decode() or -1)] = conn
                    except (OSError, ValueError):
                        conn.close()
                for conn in peers.values():
                    conn.sendall(b"go")
                for conn in peers.values():  # let the peers close first: no TIME_WAIT on the port
                    conn.settimeout(max(deadline - time.monotonic(), 1.0))
                    try:
                        conn.recv(1)
                    except OSError:
                        pass
            finally:
                for conn in peers.values():
                    conn.close()
    else:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DistributedError(f"process {process_id} could not reach the coordinator {coordinator} within "
                                       f"{timeout_s:g} s; {hint}")
            try:
                with socket.create_connection((host, int(port)), timeout=min(left, 2.0)) as conn:
                    conn.sendall(str(process_id).encode())
                    conn.settimeout(max(deadline - time.monotonic(), 0.1))
                    if conn.recv(2) == b"go":
                        break
            except OSError:
                pass
            time.sleep(0.2)
    return max(deadline - time.monotonic(), 0.0)


def _check_flags(coordinator: str, num_processes: int, process_id: int) -> None:
    from robust_vision.preflight import check_process_flags

    try:
        check_process_flags(coordinator, num_processes, process_id)
    except ValueError as exc:
        raise DistributedError(str(exc)) from None


def init_from_args(args: argparse.Namespace) -> bool:
    """``initialize`` from the process-group flags of the CLIs (``cli._add_distributed_args``);
    call it before anything touches a JAX device."""
    return initialize(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                      getattr(args, "process_id", None),
                      timeout_s=getattr(args, "coordinator_timeout", None) or DEFAULT_TIMEOUT_S)


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """True on the process that writes files and prints (process 0; the only one on one host)."""
    return jax.process_index() == 0


def main_only(log: Callable[..., None]) -> Callable[..., None]:
    """``log`` (or ``print``) on the main process, a no-op on the others (so a run prints each
    line once)."""
    return log if is_main_process() else (lambda *_args, **_kwargs: None)


def to_host(tree: Any) -> Any:
    """Fetch a pytree of arrays to NumPy on every process.

    A global array that spans several processes is all-gathered (``process_allgather``, tiled:
    the result has the array's global shape), so each process sees every example exactly once;
    an array this process holds in full is simply fetched.
    """
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(fetch, tree)


def gather_batches(outputs: list[dict[str, jax.Array]]) -> dict[str, np.ndarray]:
    """Per-batch outputs ``[{name: (B, ...) array}, ...]`` -> ``{name: (n_batches * B, ...) ndarray}`` in
    batch order, gathered across processes (one all-gather per name, not per batch)."""
    if not outputs:
        return {}
    if process_count() == 1:
        fetched = jax.device_get(outputs)
        return {k: np.concatenate([np.asarray(o[k]) for o in fetched]) for k in fetched[0]}
    import jax.numpy as jnp

    stacked = {k: jnp.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return to_host(stacked)


@contextmanager
def file_lock(path: str | Path, *, blocking: bool = True) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) between processes, also on
    other machines when the file is on a shared filesystem that supports POSIX locks (NFSv4,
    Lustre, GPFS). ``blocking=False`` raises BlockingIOError when another process holds it."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op on one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
