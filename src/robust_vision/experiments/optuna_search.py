"""Optuna search for ``robust-vision-sweep`` (``sweep.method: optuna``; optional dependency).

The study lives in ``DIR/optuna.db`` (SQLite) so an interrupted search continues; trials
already complete in ``trials.csv`` are given back to the study instead of being retrained.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from robust_vision.experiments.sweep import (COMPLETE, Log, Range, SweepError, SweepSpec, TrialFactory, _Runner,
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


def run_optuna(optuna, factory: TrialFactory, spec: SweepSpec, runner: _Runner, out_dir: Path,
                max_trials: int | None, log: Log) -> list[dict]:
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{(out_dir / 'optuna.db').resolve()}"
    names = optuna.study.get_all_study_names(storage=url)
    n_before = len(optuna.load_study(study_name=_STUDY, storage=url).trials) if _STUDY in names else 0
    # Seeding with the number of earlier trials: a resumed study continues the sequence instead
    # of proposing the first trials' parameters again.
    sampler = optuna.samplers.TPESampler(seed=spec.seed + n_before)
    study = optuna.create_study(study_name=_STUDY, storage=url, sampler=sampler, direction=spec.direction,
                                load_if_exists=True)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Left RUNNING by an interrupted run: close it and ask for the same parameters again,
        # so the trial (same id, same run directory) is resumed from its checkpoint.
        study.tell(stale.number, state=TrialState.FAIL)
        study.enqueue_trial(stale.params)
    dists, encoded = _distributions(optuna, factory, spec)

    def done() -> int:
        return sum(t.state == TrialState.COMPLETE
                   or (t.state == TrialState.FAIL and bool(t.user_attrs.get("sweep_failed")))
                   for t in study.get_trials(deepcopy=False))

    n_done = done()
    while n_done < spec.n_trials:
        if max_trials is not None and runner.trained >= max_trials:
            log(f"stopping after {runner.trained} trained trial(s) (--max-trials {max_trials}); "
                "run the same command again to continue")
            break
        ot = study.ask(dists)
        params = {k: (json.loads(v) if encoded[k] else v) for k, v in ot.params.items()}
        trial = factory.build(params)
        ot.set_user_attr("trial_id", trial.trial_id)
        row = runner(trial, n_done + 1, spec.n_trials)
        value = to_float(row.get("objective"))
        if row.get("status") == COMPLETE and math.isfinite(value):
            study.tell(ot, value)
        else:
            ot.set_user_attr("sweep_failed", True)
            study.tell(ot, state=TrialState.FAIL)
        n_done += 1
    # Rows of every trial id the study has asked for, in the order first asked.
    ids = dict.fromkeys(t.user_attrs["trial_id"] for t in study.get_trials(deepcopy=False)
                        if "trial_id" in t.user_attrs)
    return [runner.table.rows[i] for i in ids if i in runner.table.rows]


# --------------------------------------------------------------------------- figure


