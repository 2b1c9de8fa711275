"""Scoring a submission file as a competition does: its format, held-out labels, public and private boards.

    python run.py score submissions/clip_multimodal-1a2b3c4d.csv --dataset views [--private]

:func:`score_submission` scores any file in a dataset's submission format, whoever wrote it:

* **format**: the task adapter that writes the format reads the file back
  (``read_submission``): header, one row per test row, no duplicate or unknown keys, values of
  the right type and range. Each violation is one line naming the file, the row (counted from 1
  after the header) and the column.
* **labels**: the test rows' own targets where the reader has them (MovieLens' leave-one-out
  items, class labels, re-ID identities and cameras, captions); otherwise a file in the
  submission's own format, ``--labels FILE`` or :data:`LABELS_FILE` in the data directory (the
  embedded views data writes it).
* **boards**: the scored rows are split once per version of the data into a public part
  (:data:`PUBLIC_FRACTION`) and a private one (:func:`public_split`); the public score is
  printed, the private one on request, as on Kaggle, where tuning on the public board shows up as
  a gap to the private one.
* **tracking**: one MLflow run of kind ``submission`` with both scores, the file and the split as
  artifacts, and the file's source: the CV run or ensemble that wrote exactly these bytes, or
  ``external``. The leaderboard puts public and private scores beside CV scores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from harness.config import flatten
from harness.data import Dataset, create_once, get_dataset_spec, load_dataset
from harness.errors import HarnessError
from harness.io import atomic_write
from harness.metrics import get_metric
from harness.submissions import file_digest, read_csv
from harness.tasks import get_task_adapter
from harness.tracking import DEFAULT_DIR, Tracker

__all__ = ["score_submission", "public_split", "reader_options", "LABELS_FILE", "PUBLIC_FRACTION", "SPLITS_DIR"]

LABELS_FILE = "test_labels.csv"  # held-out targets beside a dataset's files, in its submission format
PUBLIC_FRACTION = 0.3  # share of the scored test rows on the public board; the rest is private
SPLITS_DIR = DEFAULT_DIR / "splits"


def score_submission(
    path: str | Path,
    dataset: str,
    data_dir: str | Path | None = None,
    *,
    metric: str | None = None,
    labels: str | Path | None = None,
    private: bool = False,
    data_root: str | Path = "data",
    reader_options: dict[str, Any] | None = None,
    public_fraction: float = PUBLIC_FRACTION,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Check the submission ``path`` for ``dataset``, score it on both boards and log an MLflow run.

    Args:
        data_dir: real data in the dataset's format; ``None``: the embedded default.
        metric: any metric of the dataset's task that a submission file can be scored with
            (the adapter refuses e.g. log-loss on class names); ``None``: the dataset's.
        labels: the test targets in the submission's format, for a test file without them;
            ``None``: :data:`LABELS_FILE` in the data directory.
        private: also report the private score through ``log`` (it is computed and logged to
            MLflow either way, and in the returned dict).
        reader_options: as a CV run's ``data.options``: the same options give the same data
            fingerprint, so the submission lands on the same leaderboard board.

    Returns the scores (``public``, ``private``), their row counts, the source, the split file and
    the MLflow run id. Nothing is logged or written when the file or the labels break the format.
    """
    path = Path(path)
    frame = read_csv(path)

    # the data and the metric
    data = load_dataset(dataset, data_dir, data_root=data_root, reader_options=reader_options, log=log)
    adapter = get_task_adapter(data.task)
    metric = _metric(metric or get_dataset_spec(dataset).metric, data, adapter)

    # held-out labels, then the file against the format
    test = _labelled_test(data, adapter, labels)
    predictions = adapter.read_submission(data, frame, str(path))

    # the boards: each scored on its own rows
    keys = adapter.submission_keys(data)
    split_path, public = public_split(data, keys, public_fraction)
    rows = test.loc[keys.index]
    boards = {"public": public, "private": ~public}
    scores = {name: adapter.score(metric, data, rows[on], adapter.take(predictions, on)) for name, on in boards.items()}

    # tracking: one run per scored file
    tracker = Tracker(data.name)
    digest = file_digest(path)
    source, model = _source(tracker, digest, path.stem)
    tags = {
        "kind": "submission", "model": model, "dataset": data.name, "metric": metric.name,
        "greater_is_better": str(metric.greater_is_better), "data_fingerprint": data.fingerprint, "source": source,
        "file_sha256": digest, "split_file": split_path.name, "public_fraction": str(public_fraction),
    }  # fmt: skip
    with tracker.run(path.name, tags=tags) as run_id:
        tracker.log_metrics({f"{board}_{metric.name}": value for board, value in scores.items()})
        tracker.log_metrics({f"n_{board}": float(on.sum()) for board, on in boards.items()})
        tracker.log_artifact(path, "submission")
        tracker.log_artifact(split_path, "split")

    origin = "an external file" if source == "external" else f"written by run {source} ({model})"
    log(f"{path.name}: {data.name} submission, {origin}; {len(keys)} rows, split {split_path}")
    log(f"public  {metric.name} {scores['public']:.4f} ({public.sum()} rows)")
    if private:
        log(f"private {metric.name} {scores['private']:.4f} ({(~public).sum()} rows)")
    log(f"logged as MLflow run {run_id} (run.py leaderboard --dataset {data.name} --board public)")
    return {
        "run_id": run_id, "dataset": data.name, "metric": metric.name, "greater_is_better": metric.greater_is_better,
        "source": source, "model": model, **scores, "n_public": int(public.sum()), "n_private": int((~public).sum()),
        "split_file": str(split_path), "submission": str(path), "tracking_uri": tracker.uri,
    }  # fmt: skip


def public_split(dataset: Dataset, keys: pd.Series, fraction: float = PUBLIC_FRACTION,
                 splits_dir: str | Path = SPLITS_DIR) -> tuple[Path, np.ndarray]:  # fmt: skip
    """Which of the scored rows ``keys`` (a submission's first column, as ``submission_keys``
    gives it) are on the public board; the others are on the private one.

    ``round(fraction * n)`` rows (at least one on each board), drawn by a generator seeded with a
    digest of the keys, so the same test rows get the same split on every machine (the data
    fingerprint also covers file times). It is fixed per version of the data: written once to
    ``<splits_dir>/<dataset>-<fingerprint>__public<percent>.csv`` (``<key>,board``), atomically
    and under a lock, and read back, checked, by every later call.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise HarnessError(f"The public fraction must be a number strictly between 0 and 1, got {fraction!r}.")
    if len(keys) < 2:
        raise HarnessError(f"{dataset.name} has {len(keys)} scored test row(s); a public and a private board need 2.")
    path = Path(splits_dir) / f"{dataset.name}-{dataset.fingerprint[:8]}__public{fraction * 100:g}.csv"
    if not path.exists():
        public = np.zeros(len(keys), bool)
        n_public = min(max(round(fraction * len(keys)), 1), len(keys) - 1)
        seed = int.from_bytes(hashlib.sha256("\n".join(keys).encode()).digest()[:8], "little")
        public[np.random.default_rng(seed).permutation(len(keys))[:n_public]] = True
        split = pd.DataFrame({keys.name: keys.to_numpy(), "board": np.where(public, "public", "private")})
        with create_once(path) as missing:
            if missing:
                atomic_write(path, lambda tmp: split.to_csv(tmp, index=False))
                return path, public
    split = pd.read_csv(path, dtype=str, keep_default_na=False)
    if (list(split.columns) != [keys.name, "board"] or split[keys.name].duplicated().any()
            or set(split[keys.name]) != set(keys) or not split["board"].isin(["public", "private"]).all()):  # fmt: skip
        raise HarnessError(f"{path}: does not split the {len(keys)} scored test rows of {dataset.name} into "
                           f"{keys.name},board (public or private); delete it to draw the split again.")  # fmt: skip
    return path, split.set_index(keys.name)["board"].reindex(keys).to_numpy() == "public"


def reader_options(overrides: dict[str, Any]) -> dict[str, Any]:
    """The reader options of ``data.options.*`` overrides (parsed ``key=value``); any other key is an error."""
    other = [key for key in flatten(overrides) if not key.startswith("data.options.")]
    if other:
        raise HarnessError(f"{other[0]}: scoring takes reader options only, as data.options.<name>=<value> "
                           "(e.g. data.options.columns.id=video_id).")  # fmt: skip
    return dict(overrides.get("data", {}).get("options", {}))


def _metric(name: str, dataset: Dataset, adapter):
    try:
        metric = get_metric(name)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None
    if metric.task != dataset.task.metric_task:
        raise HarnessError(f"Metric {metric.name!r} is for {metric.task!r}, not for {dataset.task.value!r}.")
    adapter.check_submission_metric(dataset, metric)
    return metric


def _labelled_test(dataset: Dataset, adapter, labels: str | Path | None) -> pd.DataFrame:
    """The test rows with their held-out targets: the reader's, or a labels file's."""
    if dataset.target_col in dataset.test.columns:
        if labels is not None:
            raise HarnessError(f"--labels {labels}: the test rows of {dataset.name} carry their own targets "
                               f"({dataset.target_col!r}); a labels file is for test files without them.")  # fmt: skip
        return dataset.test
    path = Path(labels) if labels is not None else Path(dataset.root) / LABELS_FILE
    if labels is None and not path.is_file():
        raise HarnessError(f"No held-out labels for {dataset.name}: its test file has no {dataset.target_col!r} and "
                           f"{str(path)!r} does not exist; pass --labels FILE (the test targets, in the "
                           "submission's format).")  # fmt: skip
    return adapter.with_targets(dataset, adapter.read_submission(dataset, read_csv(path), str(path)))


def _source(tracker: Tracker, digest: str, stem: str) -> tuple[str, str]:
    """``(run id, model)`` of the CV run or ensemble that wrote exactly this file, or ``("external",
    "external")``. Runs with identical outputs wrote identical files: the one named like the file
    wins, else the newest."""
    runs = tracker.runs_tagged("submission_sha256", digest)
    if not runs:
        return "external", "external"
    run = next((r for r in runs if r.info.run_name == stem), runs[0])
    return run.info.run_id, run.data.tags.get("model", "?")
