"""The leaderboard: every tracked CV run and ensemble, ranked by its CV score.

Rows come from the MLflow store (parent runs only: those with a ``kind`` tag), so the
leaderboard can never disagree with what the runs logged. Runs are ranked within each
(dataset, metric) group, best first in the metric's own direction from
:func:`harness.metrics.get_metric`: scores under different metrics are not comparable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from harness import tracking  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.io import atomic_write  # noqa: E402
from harness.metrics import get_metric  # noqa: E402
from harness.tracking import metric_key  # noqa: E402

__all__ = ["leaderboard", "render", "plot", "FORMATS", "COLUMNS"]

FORMATS = ("table", "csv", "md")
COLUMNS = ("rank", "model", "dataset", "kind", "metric", "cv_mean", "cv_std", "fold_scores", "test", "seed", "folds",
           "params", "seconds", "run_id", "run_name", "fold_file")  # fmt: skip
_PARAM_PREFIXES = ("model_params.", "train.")  # the settings that distinguish one run from another
_SCHEMA = {"cv_std": pl.Float64, "test": pl.Float64, "fold_scores": pl.List(pl.Float64), "seed": pl.Int64,
           "seconds": pl.Float64}


def leaderboard(dataset: str | None = None, metric: str | None = None, tracking_uri: str | None = None) -> pl.DataFrame:
    """One row per CV run or ensemble (see ``COLUMNS``), ranked 1..n within each (dataset, metric).

    ``params`` lists the ``model.*`` / ``train.*`` settings whose values differ between the listed
    runs of a dataset: what sets a run apart, without the settings they all share.
    """
    if metric is not None:
        try:
            get_metric(metric)
        except ValueError as exc:
            raise HarnessError(str(exc)) from None
    uri = tracking_uri or tracking.tracking_uri()
    rows = [_row(run) for run in _search(uri, dataset, metric)]
    if not rows:
        scope = "".join([f" of dataset {dataset!r}" if dataset else "", f" scored with {metric!r}" if metric else ""])
        raise HarnessError(f"No CV runs or ensembles{scope} in {uri}; create one with "
                           "`python run.py --model NAME --folds 3` (see --list-models).")  # fmt: skip
    for group in {row["dataset"] for row in rows}:
        members = [row for row in rows if row["dataset"] == group]
        differing = _differing_params([row.pop("_params") for row in members])
        for row, params in zip(members, differing):
            row["params"] = params
    frame = pl.DataFrame(rows, schema_overrides=_SCHEMA)
    frame = frame.sort(["dataset", "metric", "_order", "run_name"])
    rank = pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(["dataset", "metric"]).alias("rank")
    return frame.with_columns(rank).select(COLUMNS)


def _search(uri: str, dataset: str | None, metric: str | None) -> list[Any]:
    """Finished parent runs of the store; an absent SQLite file is an empty store, not created here."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return []
    client = MlflowClient(tracking_uri=uri)
    if dataset is not None:
        experiment = client.get_experiment_by_name(dataset)
        experiment_ids = [experiment.experiment_id] if experiment is not None else []
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    query = "attributes.status = 'FINISHED'" + (f" and tags.metric = '{metric}'" if metric else "")
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=query, max_results=1000, page_token=token)
        runs += [run for run in page if _is_scored_parent(run)]
        token = page.token
        if not token:
            return runs


def _is_scored_parent(run) -> bool:
    """A CV run or ensemble (fold runs have no ``kind``) that got as far as its CV score."""
    tags = run.data.tags
    return bool(tags.get("kind")) and f"cv_{metric_key(tags.get('metric', ''))}_mean" in run.data.metrics


def _row(run) -> dict[str, Any]:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    name = tags["metric"]
    key = metric_key(name)  # as MLflow stores it
    pattern = re.compile(rf"fold_(\d+)/{re.escape(key)}")
    folds = sorted((int(m[1]), value) for key, value in metrics.items() if (m := pattern.fullmatch(key)))
    mean = metrics[f"cv_{key}_mean"]
    return {
        "model": tags.get("model", "?"), "dataset": tags.get("dataset", "?"), "kind": tags["kind"], "metric": name,
        "cv_mean": mean, "cv_std": metrics.get(f"cv_{key}_std"), "fold_scores": [value for _, value in folds],
        "test": metrics.get(f"test_{key}"),
        "seed": int(tags["seed"]) if tags.get("seed", "").isdigit() else None, "folds": len(folds),
        "seconds": metrics.get("seconds"), "run_id": run.info.run_id, "run_name": run.info.run_name or run.info.run_id,
        "fold_file": tags.get("fold_file"), "_order": -mean if get_metric(name).greater_is_better else mean,
        "_params": {k: v for k, v in params.items() if k.startswith(_PARAM_PREFIXES)},
    }  # fmt: skip


def _differing_params(params: list[dict[str, str]]) -> list[str]:
    """``"k=v, k=v"`` per run for the keys whose values differ among the runs that have them."""
    keys = sorted({k for p in params for k in p})
    differing = [k for k in keys if len({p[k] for p in params if k in p}) > 1]
    short = {k: k.replace("model_params.", "model.", 1) for k in differing}  # as typed on the command line
    return [", ".join(f"{short[k]}={p[k]}" for k in differing if k in p) for p in params]


def render(frame: pl.DataFrame, format: str = "table") -> str:
    """The leaderboard as a rich table (for the terminal), CSV (for tools) or Markdown (for READMEs)."""
    if format not in FORMATS:
        raise HarnessError(f"Unknown leaderboard format {format!r}; valid formats: {', '.join(FORMATS)}.")
    if format == "csv":
        return frame.with_columns(_joined("fold_scores", repr)).write_csv()
    text = frame.with_columns(
        _joined("fold_scores", "{:.4f}".format),
        *(pl.col(c).map_elements(_cell, return_dtype=pl.String) for c in ("cv_mean", "cv_std", "test", "seconds")),
    ).with_columns(pl.all().cast(pl.String).fill_null("-"))
    if format == "md":
        lines = ["| " + " | ".join(text.columns) + " |", "|" + "---|" * len(text.columns)]
        lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in text.iter_rows()]
        return "\n".join(lines)
    return _rich_table(text)


def _direction(metric: str) -> str:
    return f"{'higher' if get_metric(metric).greater_is_better else 'lower'} is better"


def _joined(column: str, fmt) -> pl.Expr:
    return pl.col(column).map_elements(lambda scores: " / ".join(fmt(s) for s in scores), return_dtype=pl.String)


def _cell(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"


def _rich_table(text: pl.DataFrame) -> str:
    from rich.console import Console
    from rich.table import Table

    groups = text.select("dataset", "metric").unique(maintain_order=True).iter_rows()
    table = Table(title="leaderboard: " + "; ".join(f"{d} by {m} ({_direction(m)})" for d, m in groups))
    for column in text.columns:
        table.add_column(column, justify="right" if column in ("rank", "cv_mean", "cv_std", "test", "seconds") else "left",
                         no_wrap=column in ("run_name", "run_id"))  # fmt: skip
    for row in text.iter_rows():
        table.add_row(*row)
    # wide enough that no cell is cut: padding and a border per column, one closing border
    width = 1 + sum(max(len(c), int(text[c].str.len_chars().max() or 0)) + 3 for c in text.columns)
    console = Console(width=max(100, width))
    with console.capture() as capture:
        console.print(table)
    return capture.get().rstrip()


def plot(frame: pl.DataFrame, path: str | Path) -> Path:
    """A PNG comparing runs: CV mean ± std with each fold's score as a dot, best at the top.

    One panel per (dataset, metric) group, since scores under different metrics share no scale.
    """
    groups = frame.partition_by(["dataset", "metric"], maintain_order=True)
    fig, axes = plt.subplots(len(groups), 1, squeeze=False,
                             figsize=(7.5, sum(1.2 + 0.4 * g.height for g in groups)))  # fmt: skip
    for ax, group in zip(axes[:, 0], groups):
        group = group.sort("rank")
        y = np.arange(group.height)
        for i, scores in enumerate(group["fold_scores"].to_list()):
            ax.scatter(scores, [i] * len(scores), s=18, color="tab:orange", zorder=3, label="fold" if i == 0 else None)
        ax.errorbar(group["cv_mean"].to_numpy(), y, xerr=group["cv_std"].fill_null(0.0).to_numpy(), fmt="o",
                    color="tab:blue", alpha=0.8, capsize=3, label="CV mean ± std")  # fmt: skip
        ax.set_yticks(y, [f"{r}. {n}" for r, n in zip(group["rank"], group["run_name"])])
        ax.invert_yaxis()
        metric = group["metric"][0]
        ax.set(title=f"{group['dataset'][0]}: {metric} ({_direction(metric)})", xlabel=metric)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
