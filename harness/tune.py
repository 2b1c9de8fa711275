"""Hyper-parameter search with Optuna: a family's search space, cross-validated trial by trial.

Each trial is one :func:`harness.cv.run_cv` with the family's ``search_space(trial)`` merged on
top of the run's config layers. Fold scores are reported to Optuna as they come, so a trial that
is clearly worse than earlier ones after its first folds is pruned instead of trained to the end.

Studies live in an RDB (SQLite by default), so several processes or machines can work on one
study by name, and a study can be resumed: the trial cap counts every worker's finished trials.
Every trial is an MLflow run nested under one parent run per study invocation. A new study's
trial 0 is the configuration as given (the family's defaults under the run's layers), so the best
trial is never worse than not tuning. Trials are numbered as Optuna numbers them, from 0.

A worker that dies mid-trial loses no finished fold: each trial names its CV run before starting
it (the trial's ``cv_run`` attribute), and the trial that retries a dead one resumes that run
(:func:`harness.cv.run_cv` with ``resume``), so its finished folds are loaded, not trained again,
and the trial's score is the one an uninterrupted trial would have had.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from harness.cv import is_resumable, make_run_config, new_run_name, resolve_run_config, run_cv
from harness.errors import HarnessError
from harness.io import atomic_write
from harness.metrics import get_metric
from harness.registry import get_model_entry
from harness.tracking import DEFAULT_DIR, NullTracker, Tracker

__all__ = ["tune", "storage_url", "load_best_params", "best_params_path"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Heartbeats let a worker that dies mid-trial (OOM, kill, lost machine) be noticed: a RUNNING
# trial whose heartbeat is older than the grace period is marked FAIL by the next worker, and
# RetryHeartbeatStaleTrialCallback (Optuna 5's name for RetryFailedTrialCallback) re-enqueues its
# parameters, so no point of the search is lost.
_HEARTBEAT_S = 60
_GRACE_S = 120
_MAX_RETRY = 2


def storage_url(storage: str | None) -> str:
    """The study storage: ``None`` → ``sqlite:///<cwd>/leaderboard/optuna.db`` (folder created).

    Any other string is an SQLAlchemy RDB URL used as given (``sqlite:///path.db``,
    ``postgresql://user@host/db``, ``mysql+pymysql://...``), as Optuna's ``get_storage`` takes
    it; a server database is what lets workers on several machines share one study.
    """
    if storage is not None:
        return storage
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'optuna.db').resolve()}"


def best_params_path(model: str) -> Path:
    return DEFAULT_DIR / "best_params" / f"{model}.yaml"


def load_best_params(model: str) -> dict[str, Any]:
    """The best trial's nested overrides (``{"model": {...}, "train": {...}}``), a config layer."""
    path = best_params_path(model)
    if not path.is_file():
        raise HarnessError(
            f"No tuned parameters for {model!r} at {str(path)!r}: run `python run.py tune --model {model}` first."
        )
    return yaml.safe_load(path.read_text())["params"]


def tune(
    model: str,
    n_trials: int,
    *,
    layers: tuple[dict[str, Any] | None, ...] = (),
    study_name: str | None = None,
    storage: str | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run trials of ``model``'s search space until the study has ``n_trials`` finished trials.

    ``layers`` are the config layers of :func:`harness.cv.make_run_config` (YAML, ``key=value``,
    flags); trial parameters go on top. The cap counts COMPLETE and PRUNED trials of the whole
    study, across every worker and earlier invocation, so resuming by name continues the count.

    Pruning is per fold with ``MedianPruner(n_startup_trials=1)``: a trial stops when its fold
    score is worse than the median of earlier trials at that fold. ``WilcoxonPruner`` was the
    first choice but cannot prune with few folds: its one-sided signed-rank p-value over ``n``
    paired fold scores is at least ``1 / 2**n``, i.e. 0.125 with 3 folds, above any usable
    threshold, so it never prunes a 3-fold search.

    Returns the study name, storage URL, trial counts, best value and nested best parameters,
    which are also written to ``leaderboard/best_params/<model>.yaml`` (see :func:`load_best_params`).
    """
    entry = get_model_entry(model)
    if entry.search_space is None:
        raise HarnessError(f"Model {model!r} has no search space to tune.")
    if n_trials < 1:
        raise HarnessError(f"--trials must be at least 1, got {n_trials}.")
    quiet_layer = {"train": {"progress": False}}
    config = resolve_run_config(make_run_config(model, quiet_layer, *layers))
    metric = get_metric(config.metric)
    direction = "maximize" if metric.greater_is_better else "minimize"
    name = study_name or f"{model}-{config.data.name}"
    url = storage_url(storage)

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is our one line per trial
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; relied on here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = _rdb_storage(url)
    study = optuna.create_study(
        study_name=name,
        storage=rdb,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise HarnessError(
            f"Study {name!r} in {url} is {study.direction.name.lower()}d but metric {metric.name!r} needs {direction}; "
            f"use another --study name."
        )
    if not study.trials:
        defaults, outside = _defaults_in_space(entry.search_space, config)
        study.enqueue_trial(defaults, user_attrs={"defaults": True}, skip_if_exists=True)
        note = f"; outside the search space, so sampled: {', '.join(outside)}" if outside else ""
        log(f"study {name}: trial 0 runs the configuration as given ({_describe(defaults)}){note}")

    def objective(trial: optuna.Trial) -> float:
        if _is_surplus(study, trial.number, n_trials):
            study.stop()  # the cap is already claimed by finished and running trials
            raise SurplusTrial(f"trial {trial.number} started after the study's {n_trials} trials were claimed")
        trial_config = make_run_config(model, quiet_layer, *layers, entry.search_space(trial))

        def report(fold: int, score: float) -> None:
            trial.report(score, fold)
            if trial.should_prune():
                raise optuna.TrialPruned()

        tags = {"kind": "trial", "study": name, "trial": str(trial.number)}
        dead_run = _dead_trials_run(study, trial.number)
        run_name = dead_run or new_run_name(model)
        trial.set_user_attr("cv_run", run_name)
        if dead_run is not None:
            log(f"trial {trial.number} retries a trial whose worker died: resuming its CV run {dead_run}")
        result = run_cv(trial_config, log=lambda message: None, nested=True, tags=tags, on_fold=report,
                        resume=dead_run, name=None if dead_run else run_name)  # fmt: skip
        return result[f"cv_{metric.name}_mean"]

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=_FINISHED))
        outcome = f"{metric.name} {trial.value:.4f}" if trial.state == TrialState.COMPLETE else trial.state.name.lower()
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            outcome += f" after fold {max(trial.intermediate_values)}"
        best = f"{study.best_value:.4f} (trial {study.best_trial.number})" if _has_complete(study) else "none"
        log(f"trial {trial.number} ({done}/{n_trials} finished): {outcome}; best so far {best}")

    finished = len(study.get_trials(deepcopy=False, states=_FINISHED))
    if finished >= n_trials:
        log(f"study {name}: already has {finished} finished trials (cap {n_trials}); nothing to run")
    else:
        log(f"study {name}: {direction} {metric.name}, {finished}/{n_trials} trials finished, storage {url}")
        tracker = Tracker(config.data.name) if config.tracking else NullTracker()
        with tracker.run(f"study-{name}", tags={"kind": "study", "study": name}):
            study.optimize(
                objective,
                n_trials=None,
                catch=(SurplusTrial,),
                callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=_FINISHED), progress],
            )

    if not _has_complete(study):
        raise HarnessError(f"Study {name!r} has no completed trial; nothing to save.")
    best_params = entry.search_space(optuna.trial.FixedTrial(study.best_params))
    path = best_params_path(model)
    document = {"study": name, "metric": metric.name, "value": float(study.best_value), "params": best_params}
    atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(document, sort_keys=False)))
    counts = {state: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    log(f"study {name}: best {metric.name} {study.best_value:.4f} (trial {study.best_trial.number}), params in {path}")
    return {
        "study": name,
        "storage": url,
        "n_complete": counts[TrialState.COMPLETE],
        "n_pruned": counts[TrialState.PRUNED],
        "n_failed": counts[TrialState.FAIL],
        "best_value": float(study.best_value),
        "best_params": best_params,
        "best_params_path": str(path),
    }


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats and retries of a dead worker's trial.

    Workers started at the same moment race to create Optuna's tables; the loser of that race
    gets an integrity error from the database and simply connects again.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError

    def connect() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=_HEARTBEAT_S,
            grace_period=_GRACE_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=_MAX_RETRY),
        )

    for attempt in range(attempts - 1):
        try:
            return connect()
        except (IntegrityError, OperationalError):
            time.sleep(0.5 * (attempt + 1))
    return connect()


def _dead_trials_run(study: optuna.Study, number: int) -> str | None:
    """The unfinished CV run of the latest dead trial that trial ``number`` retries, if one was left."""
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    with warnings.catch_warnings():  # "experimental" since Optuna 3.0, like the heartbeats
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = RetryHeartbeatStaleTrialCallback.retry_history(trials[number])
    for retried in reversed(history):
        run = trials[retried].user_attrs.get("cv_run")
        if run is not None and is_resumable(run):
            return run
    return None


def _defaults_in_space(search_space: Callable, config) -> tuple[dict[str, Any], list[str]]:
    """The resolved config's values of the search space's parameters, and the names left out.

    The space's parameter names are dotted config keys (``model.hidden_dim``, ``train.lr``); a
    value the space cannot hold (a categorical choice it lacks, a section it does not name) is
    left for the sampler and reported.
    """
    probe = optuna.create_study().ask()
    search_space(probe)
    sections = {"model": config.model_params, "train": dataclasses.asdict(config.train)}
    defaults, outside = {}, []
    for name, distribution in probe.distributions.items():
        section, _, key = name.partition(".")
        value = sections.get(section, {}).get(key)
        try:
            inside = value is not None and distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if inside:
            defaults[name] = value
        else:
            outside.append(f"{name}={value!r}")
    return defaults, outside


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "no parameter"


class SurplusTrial(Exception):
    """A worker asked for a trial after the cap was claimed; the trial is failed and the worker stops."""


def _is_surplus(study: optuna.Study, number: int, cap: int) -> bool:
    """Whether the trials numbered before ``number`` (finished or running) already fill the cap.

    Trial numbers are handed out in order by the storage, so every worker reaches the same
    verdict without a lock: the cap holds across processes and machines, not per process.
    """
    states = (*_FINISHED, TrialState.RUNNING)
    claimed = sum(1 for t in study.get_trials(deepcopy=False, states=states) if t.number < number)
    return claimed >= cap


def _has_complete(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
