"""Optuna search for ``robust-vision-sweep`` (``sweep.method: optuna``; optional dependency).

The study lives in ``DIR/optuna.db`` (SQLite) so an interrupted search continues; trials
already complete in ``trials.csv`` are given back to the study instead of being retrained.

Several workers (processes on one machine or many) can run one search together: start each
with the same ``--output DIR`` on a shared filesystem and the same ``--storage`` (``journal``:
``DIR/optuna.journal``, Optuna's JournalStorage with a file backend, which needs no server; or
an RDB URL such as ``postgresql://host/db``). A lock file ``DIR/sweep.lock`` serializes the few
moments that decide what to run (claiming the next trial against ``n_trials``, closing trials
of dead workers, rewriting trials.csv), so every trial runs once, none is lost, and the study
stops at exactly ``n_trials``. A worker holds ``DIR/workers/<id>.lock`` while it runs; a
RUNNING trial whose worker lock is free belongs to a dead worker and is run again.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from robust_vision.experiments.trials import (COMPLETE, Log, Range, SweepError, SweepSpec, TrialFactory, TrialRunner,
                                             to_float)


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError('sweep.method: optuna needs the optional dependency optuna; install it with '
                         'pip install -e ".[sweep]" (or use method: grid)') from None
    return optuna


_STUDY = "robust-vision-sweep"
_PRIMITIVE = (type(None), bool, int, float, str)


def _distributions(optuna, factory: TrialFactory, spec: SweepSpec) -> tuple[dict, dict[str, bool]]:
    """Optuna distributions per key; choices that are not scalars (lists) travel as JSON text."""
    dists, encoded = {}, {}
    for key, values in spec.parameters.items():
        if isinstance(values, Range):
            # An integer config key (e.g. training.batch_size) gets an integer range.
            low = factory.build({key: values.low}).params[key]
            if isinstance(low, int) and not isinstance(low, bool):
                dists[key] = optuna.distributions.IntDistribution(int(values.low), int(values.high), log=values.log)
            else:
                dists[key] = optuna.distributions.FloatDistribution(float(values.low), float(values.high),
                                                                    log=values.log)
            encoded[key] = False
        else:
            encoded[key] = not all(isinstance(v, _PRIMITIVE) for v in values)
            choices = [json.dumps(v) for v in values] if encoded[key] else list(values)
            dists[key] = optuna.distributions.CategoricalDistribution(choices)
    return dists, encoded


# SQLAlchemy's database dialects (optional "+driver"): any other scheme is a typo, refused
# before anything runs (SQLAlchemy would otherwise fail deep inside the first trial).
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql", "cockroachdb")
_STORAGE_HINT = "expected journal, a FILE.journal path or an RDB URL such as sqlite:///DIR/optuna.db or postgresql://host/db"


def check_storage(storage: str | None) -> None:
    """A SweepError for a ``--storage`` that ``open_storage`` cannot use (no optuna, no JAX imported)."""
    if storage is None or storage == "journal" or storage.endswith(".journal"):
        return
    scheme = storage.split("://", 1)[0].split("+", 1)[0].lower() if "://" in storage else None
    if scheme not in RDB_SCHEMES:
        raise SweepError(f"--storage: got {storage!r}; {_STORAGE_HINT} (database schemes: {', '.join(RDB_SCHEMES)})")


def _create_study(optuna, url, direction: str, storage: str | None):
    """``optuna.create_study``; a storage that cannot be opened (SQLAlchemy's driver, connection and
    URL errors) is a one-line SweepError naming it, not a library traceback."""
    try:
        return optuna.create_study(study_name=_STUDY, storage=url, direction=direction, load_if_exists=True)
    except (ImportError, ValueError, OSError, RuntimeError) as exc:
        raise SweepError(f"--storage: cannot open {storage or url!r} ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); {_STORAGE_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - sqlalchemy.exc.* (an optional dependency): re-worded at the boundary
        if type(exc).__module__.startswith("sqlalchemy"):
            raise SweepError(f"--storage: cannot open {storage or url!r} ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0][:200]}); check the URL, the server and the "
                             "database driver") from None
        raise


def open_storage(optuna, out_dir: Path, storage: str | None):
    """The study's storage: None -> ``DIR/optuna.db`` (SQLite, one machine); ``journal`` ->
    ``DIR/optuna.journal`` (JournalStorage, file backend: shared filesystems, no server); a path
    ending in ``.journal`` -> that journal file; anything with ``://`` -> an RDB URL."""
    if storage is None:
        return f"sqlite:///{(out_dir / 'optuna.db').resolve()}"
    if "://" in storage:
        return storage
    if storage == "journal" or storage.endswith(".journal"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = out_dir / "optuna.journal" if storage == "journal" else Path(storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    raise SweepError(f"--storage: got {storage!r}; {_STORAGE_HINT}")


class _WorkerLease:
    """This worker's liveness token: ``DIR/workers/<id>.lock``, locked while the worker runs
    (the OS drops the lock when the process dies, also on a crash)."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / "workers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        from robust_vision.distributed import file_lock

        self._stack = ExitStack()
        self._stack.enter_context(file_lock(self.dir / f"{self.id}.lock"))

    def alive(self, worker_id: str | None) -> bool:
        """Whether the worker ``worker_id`` still runs (False for trials from before workers had ids)."""
        if not worker_id:
            return False
        if worker_id == self.id:
            return True
        from robust_vision.distributed import file_lock

        path = self.dir / f"{worker_id}.lock"
        if not path.exists():
            return False
        try:
            with file_lock(path, blocking=False):
                return False
        except BlockingIOError:
            return True

    def close(self) -> None:
        self._stack.close()
        (self.dir / f"{self.id}.lock").unlink(missing_ok=True)


def _requeue_stale(study, lease: _WorkerLease, states) -> None:
    """Trials left RUNNING by an interrupted or dead worker: closed, and their parameters asked
    again, so the trial (same id, same run directory) is resumed from its checkpoint."""
    for stale in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        if not lease.alive(stale.user_attrs.get("worker")):  # else another worker is training it
            study.tell(stale.number, state=states.FAIL)
            study.enqueue_trial(stale.params)


def _wait_for(twin, study, lease: _WorkerLease, states) -> None:
    """Wait while another live worker trains ``twin`` (a study trial with the same parameters)."""
    def twin_running() -> bool:
        running = study.get_trials(deepcopy=False, states=(states.RUNNING,))
        return any(t.number == twin.number for t in running)

    while twin_running() and lease.alive(twin.user_attrs.get("worker")):
        time.sleep(2.0)


def run_optuna(optuna, factory: TrialFactory, spec: SweepSpec, runner: TrialRunner, out_dir: Path,
               max_trials: int | None, log: Log, storage: str | None = None) -> list[dict]:
    from optuna.trial import TrialState

    from robust_vision.distributed import file_lock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = open_storage(optuna, out_dir, storage)
    lock_path = out_dir / "sweep.lock"
    lease = _WorkerLease(out_dir)
    try:
        with file_lock(lock_path):
            study = _create_study(optuna, url, spec.direction, storage)
            _requeue_stale(study, lease, TrialState)
        dists, encoded = _distributions(optuna, factory, spec)

        def finished(t) -> bool:
            return t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and bool(t.user_attrs.get("sweep_failed")))

        while True:
            if max_trials is not None and runner.trained >= max_trials:
                log(f"stopping after {runner.trained} trained trial(s) (--max-trials {max_trials}); "
                    "run the same command again to continue")
                break
            with file_lock(lock_path):
                trials = study.get_trials(deepcopy=False)
                n_done = sum(finished(t) for t in trials)
                # Trials other workers are training count against n_trials too.
                if n_done + sum(t.state == TrialState.RUNNING for t in trials) >= spec.n_trials:
                    break
                # Seeding with the number of trials asked so far: the sequence of proposals is the
                # same with one worker or many, and a resumed study does not repeat its first trials.
                study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(trials))
                ot = study.ask(dists)
                ot.set_user_attr("worker", lease.id)
                params = {k: (json.loads(v) if encoded[k] else v) for k, v in ot.params.items()}
                trial = factory.build(params)
                ot.set_user_attr("trial_id", trial.trial_id)
                twin = next((t for t in trials if t.state == TrialState.RUNNING
                             and t.user_attrs.get("trial_id") == trial.trial_id), None)
            if twin is not None:  # the same parameters are being trained by another worker: wait for its row
                _wait_for(twin, study, lease, TrialState)
            runner.table.refresh()
            row = runner(trial, n_done + 1, spec.n_trials)
            value = to_float(row.get("objective"))
            if row.get("status") == COMPLETE and math.isfinite(value):
                study.tell(ot, value)
            else:
                ot.set_user_attr("sweep_failed", True)
                study.tell(ot, state=TrialState.FAIL)
    finally:
        lease.close()
    runner.table.refresh()
    # Rows of every trial id the study has asked for, in the order first asked.
    ids = dict.fromkeys(t.user_attrs["trial_id"] for t in study.get_trials(deepcopy=False)
                        if "trial_id" in t.user_attrs)
    return [runner.table.rows[i] for i in ids if i in runner.table.rows]


# --------------------------------------------------------------------------- figure


