"""MLflow tracking: one parent run per CV run, a nested run per fold.

The store is ``MLFLOW_TRACKING_URI`` when set, else a SQLite file ``leaderboard/mlflow.db`` with
artifacts under ``leaderboard/artifacts``; ``mlflow ui --backend-store-uri
sqlite:///leaderboard/mlflow.db`` opens it. Experiments are named after the dataset, so the
leaderboard of a dataset is one experiment.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

__all__ = ["Tracker", "NullTracker", "tracking_uri", "metric_key", "DEFAULT_DIR"]

DEFAULT_DIR = Path("leaderboard")
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def metric_key(name: str) -> str:
    """The MLflow key of a metric name: MLflow keys allow only ``[\\w./ :-]``, so ``ndcg@10_full``
    is stored as ``ndcg_at_10_full`` and any other character becomes ``_``."""
    return re.sub(r"[^\w./ :-]", "_", name.replace("@", "_at_"))


def tracking_uri(default_dir: Path = DEFAULT_DIR) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(default_dir / 'mlflow.db').resolve()}"


class Tracker:
    """Thin wrapper over the MLflow fluent API, so the CV runner states *what* it logs."""

    def __init__(self, experiment: str, default_dir: Path = DEFAULT_DIR):
        import mlflow  # imported lazily: it is slow to import and not needed with tracking off

        self._mlflow = mlflow
        uri = tracking_uri(default_dir)
        if uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
            default_dir.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        if mlflow.get_experiment_by_name(experiment) is None:
            location = None
            if "MLFLOW_TRACKING_URI" not in os.environ:
                location = (default_dir / "artifacts").resolve().as_uri()
            mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment)
        self.uri = uri

    @contextlib.contextmanager
    def run(self, name: str, nested: bool = False, tags: dict[str, str] | None = None) -> Iterator[str]:
        """Start a run (nested under the active one if ``nested``); yields its run id."""
        with self._mlflow.start_run(run_name=name, nested=nested, tags=tags) as active:
            yield active.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
        """Log to the active run, or to ``run_id`` (e.g. the parent while a fold run is active)."""
        self._mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()}, step=step, run_id=run_id)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path)


class NullTracker:
    """Same interface, logs nothing: for ``tracking=false`` and for unit tests."""

    uri = None

    @contextlib.contextmanager
    def run(self, name: str, nested: bool = False, tags: dict[str, str] | None = None) -> Iterator[None]:
        yield None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."
