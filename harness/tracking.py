"""MLflow tracking: one parent run per CV run, a nested run per fold.

The store is ``MLFLOW_TRACKING_URI`` when set, else a SQLite file ``leaderboard/mlflow.db``;
``mlflow ui --backend-store-uri sqlite:///leaderboard/mlflow.db`` opens it. Artifacts of a new
experiment go under ``leaderboard/artifacts`` whatever the store, unless the store is an MLflow
server (``http(s)://``, ``databricks``), which keeps its own. Both are decided once, here, before
MLflow is touched (MLflow sets ``MLFLOW_TRACKING_URI`` itself once a URI is chosen, so the
environment cannot be read afterwards). Experiments are named after the dataset, so the
leaderboard of a dataset is one experiment.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterator

__all__ = ["Tracker", "NullTracker", "tracking_uri", "artifact_location", "metric_key", "DEFAULT_DIR"]

DEFAULT_DIR = Path("leaderboard")
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def metric_key(name: str) -> str:
    """The MLflow key of a metric name: MLflow keys allow only ``[\\w./ :-]``, so ``ndcg@10_full``
    is stored as ``ndcg_at_10_full`` and any other character becomes ``_``."""
    return re.sub(r"[^\w./ :-]", "_", name.replace("@", "_at_"))


_SERVER_SCHEMES = ("http://", "https://", "databricks")


def tracking_uri(default_dir: Path = DEFAULT_DIR) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(default_dir / 'mlflow.db').resolve()}"


def artifact_location(uri: str, default_dir: Path = DEFAULT_DIR) -> str | None:
    """Where a new experiment's artifacts go: ``leaderboard/artifacts``, or the server's choice."""
    return None if uri.startswith(_SERVER_SCHEMES) else (default_dir / "artifacts").resolve().as_uri()


class Tracker:
    """Thin wrapper over the MLflow fluent API, so the CV runner states *what* it logs."""

    def __init__(self, experiment: str, default_dir: Path = DEFAULT_DIR):
        import mlflow  # imported lazily: it is slow to import and not needed with tracking off

        self._mlflow = mlflow
        uri = tracking_uri(default_dir)
        location = artifact_location(uri, default_dir)
        if location is not None:
            default_dir.mkdir(parents=True, exist_ok=True)
        chosen_by_user = "MLFLOW_TRACKING_URI" in os.environ
        mlflow.set_tracking_uri(uri)
        if not chosen_by_user:  # MLflow exports the URI; the next run (another directory) must not inherit it
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=location)
        self.experiment = mlflow.set_experiment(experiment)
        self.uri = uri

    @contextlib.contextmanager
    def run(self, name: str, nested: bool = False, tags: dict[str, str] | None = None,
            run_id: str | None = None) -> Iterator[str]:  # fmt: skip
        """Start a run (nested under the active one if ``nested``), or continue run ``run_id``
        (a resumed CV run: MLflow marks it RUNNING again); yields its run id. An exception ends
        the run as FAILED."""
        if run_id is not None:
            name, tags = None, None  # the run keeps its name and tags
        with self._mlflow.start_run(run_id=run_id, run_name=name, nested=nested, tags=tags) as active:
            yield active.info.run_id

    def has_finished_child_run(self, parent_id: str, tag: str, value: str) -> bool:
        """Whether run ``parent_id`` has a FINISHED nested run tagged ``tag=value`` (e.g. a fold's run).

        Unfinished ones (a kill while the fold was being logged) are deleted, so that logging the
        fold again leaves it once, whole.
        """
        client = self._mlflow.tracking.MlflowClient()
        query = f"tags.mlflow.parentRunId = '{parent_id}' and tags.{tag} = '{value}'"
        children = client.search_runs([self.experiment.experiment_id], query, max_results=100)
        for child in children:
            if child.info.status != "FINISHED":
                client.delete_run(child.info.run_id)
        return any(child.info.status == "FINISHED" for child in children)

    def runs_tagged(self, tag: str, value: str) -> list[Any]:
        """This experiment's runs tagged ``tag=value``, newest first (MLflow ``Run`` objects)."""
        client = self._mlflow.tracking.MlflowClient()
        return client.search_runs([self.experiment.experiment_id], f"tags.{tag} = '{value}'", max_results=1000,
                                  order_by=["attributes.start_time DESC"])  # fmt: skip

    def close_dead_runs(self) -> list[str]:
        """Mark this experiment's RUNNING runs whose process is gone as KILLED; returns their names.

        A run killed with SIGKILL (or by a lost machine) cannot end itself; CV runs carry the
        ``host`` and ``pid`` of their process, so the next start on that host can tell. Runs of
        other hosts are left as they are.
        """
        client = self._mlflow.tracking.MlflowClient()
        runs = client.search_runs([self.experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
        host, closed = socket.gethostname(), []
        for run in runs:
            pid = run.data.tags.get("pid")
            if run.data.tags.get("host") == host and pid and pid.isdigit() and not _process_alive(int(pid)):
                client.set_terminated(run.info.run_id, status="KILLED")
                closed.append(run.info.run_name)
        return closed

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
    def run(self, name: str, nested: bool = False, tags: dict[str, str] | None = None,
            run_id: str | None = None) -> Iterator[None]:  # fmt: skip
        yield None

    def has_finished_child_run(self, parent_id: str | None, tag: str, value: str) -> bool:
        return True

    def runs_tagged(self, tag: str, value: str) -> list[Any]:
        return []

    def close_dead_runs(self) -> list[str]:
        return []

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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
