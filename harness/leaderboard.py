"""The leaderboard: every tracked CV run and ensemble ranked by its CV score, or every scored
submission ranked by its public or private score.

Rows come from the MLflow store (parent runs only: those with a ``kind`` tag), so the
leaderboard can never disagree with what the runs logged. Only runs that FINISHED are ranked: a
running, failed or killed run has no final score. Runs are ranked on boards of one dataset, one
data fingerprint and one metric, best first in the metric's own direction from
:func:`harness.metrics.get_metric`: scores on other data or under other metrics are not comparable.
A CV run's or ensemble's row shows the public and private scores of its submission file once that
file is scored (:mod:`harness.scoring`); a submission's row shows the CV score of the run that
wrote it, or none for an ``external`` file.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

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

__all__ = ["leaderboard", "render", "plot", "FORMATS", "BOARDS", "COLUMNS", "COMPACT_COLUMNS"]

FORMATS = ("table", "csv", "md")
BOARDS = ("cv", "public", "private")  # what a board ranks by: the CV score, or a scored submission's public / private
COLUMNS = ("rank", "model", "dataset", "data", "kind", "metric", "cv_mean", "cv_std", "fold_scores", "test", "public",
           "private", "seed", "folds", "params", "seconds", "run_id", "run_name", "source", "fold_file")  # fmt: skip
COMPACT_COLUMNS = ("rank", "model", "data", "cv_mean", "cv_std", "test", "public", "private", "params", "seconds",
                   "run_name", "run_id")  # fmt: skip
_COMPACT_PARAMS_WIDTH = 40  # longer lists of differing settings wrap within the cell
_SCORES = ("cv_mean", "cv_std", "test", "public", "private", "seconds")
_OPTIONAL_SCORES = ("test", "public", "private")  # scores only some runs have: a compact table drops them when none does
_NUMERIC = ("rank", *_SCORES)
_PARAM_PREFIXES = ("model_params.", "train.")  # the settings that distinguish one run from another
_SCHEMA = {"model": pl.String, "data": pl.String, "kind": pl.String, "cv_mean": pl.Float64, "cv_std": pl.Float64,
           "fold_scores": pl.List(pl.Float64), "test": pl.Float64, "public": pl.Float64, "private": pl.Float64,
           "seed": pl.Int64, "folds": pl.Int64, "params": pl.String, "seconds": pl.Float64, "source": pl.String,
           "fold_file": pl.String}  # fmt: skip


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def leaderboard(dataset: str | None = None, metric: str | None = None, tracking_uri: str | None = None,
                all_data: bool = False, board: str = "cv", log: Callable[[str], Any] = _to_stderr) -> pl.DataFrame:
    """One row per finished CV run or ensemble, or per scored submission (see ``COLUMNS``), ranked 1..n on each board.

    A board is one (dataset, data, metric): ``data`` is the run's data fingerprint (its first 8
    characters, as in fold-file names), since a score on other data (real files, other reader
    options) is not comparable. ``all_data=True`` ranks each (dataset, metric) across fingerprints.
    ``board="cv"`` (default) ranks CV runs and ensembles by CV score, with the public and private
    scores of their scored submission files beside it; ``"public"`` / ``"private"`` rank every
    scored submission file (the newest scoring of each) by that score, beside the CV score of the
    run that wrote it. Runs that did not finish are left out, with a one-line note through ``log``
    (default: stderr, so piped CSV stays CSV). ``params`` lists the ``model.*`` / ``train.*``
    settings whose values differ between the listed runs of a dataset: what sets a run apart,
    without the settings they all share.
    """
    if board not in BOARDS:
        raise HarnessError(f"Unknown leaderboard board {board!r}; valid boards: {', '.join(BOARDS)}.")
    if metric is not None:
        try:
            get_metric(metric)
        except ValueError as exc:
            raise HarnessError(str(exc)) from None
    uri = tracking_uri or tracking.tracking_uri()
    runs = _search(uri, dataset, metric)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    if len(finished) < len(runs):
        log(_unfinished_note([run for run in runs if run.info.status != "FINISHED"]))
    rows = [_row(run) for run in finished if _has_cv_score(run)]
    for group in {row["dataset"] for row in rows}:
        members = [row for row in rows if row["dataset"] == group]
        differing = _differing_params([row.pop("_params") for row in members])
        for row, params in zip(members, differing):
            row["params"] = params
    submissions = _submission_rows([run for run in finished if run.data.tags["kind"] == "submission"])
    newest = {}  # (source run, metric) -> the newest scored file of that run
    for submission in submissions:
        newest.setdefault((submission["source"], submission["metric"]), submission)
    for row in rows:
        scored = newest.get((row["run_id"], row["metric"]), {})
        row["public"], row["private"] = scored.get("public"), scored.get("private")
    if board != "cv":
        by_id = {row["run_id"]: row for row in rows}
        rows = [{**by_id.get(submission["source"], _EMPTY_ROW), **submission} for submission in submissions]
    if not rows:
        scope = "".join([f" of dataset {dataset!r}" if dataset else "", f" scored with {metric!r}" if metric else ""])
        if board != "cv":
            raise HarnessError(f"No scored submissions{scope} in {uri}; score one with "
                               "`python run.py score FILE.csv --dataset NAME`.")  # fmt: skip
        raise HarnessError(f"No CV runs or ensembles{scope} in {uri}; create one with "
                           "`python run.py --model NAME --folds 3` (see --list-models).")  # fmt: skip
    for row in rows:
        value = row["cv_mean" if board == "cv" else board]
        row["_order"] = np.inf if value is None else -value if get_metric(row["metric"]).greater_is_better else value
    groups = ["dataset", "metric"] if all_data else ["dataset", "metric", "data"]
    frame = pl.DataFrame(rows, schema_overrides=_SCHEMA).sort([*groups, "_order", "run_name"])
    rank = pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(groups).alias("rank")
    return frame.with_columns(rank).select(COLUMNS)


def _unfinished_note(runs: list[Any]) -> str:
    counts = Counter(run.info.status for run in runs)
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    noun = "run" if len(runs) == 1 else "runs"
    return f"left out {len(runs)} {noun} that did not finish ({statuses}): only FINISHED runs are ranked"


def _search(uri: str, dataset: str | None, metric: str | None) -> list[Any]:
    """Parent runs of the store in any status (a ``kind`` and a ``metric`` tag: CV runs, trials,
    ensembles); an absent SQLite file is an empty store, not created here."""
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
    query = f"tags.metric = '{metric}'" if metric else ""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=query, max_results=1000, page_token=token)
        runs += [run for run in page if run.data.tags.get("kind") and run.data.tags.get("metric")]
        token = page.token
        if not token:
            return runs


def _has_cv_score(run) -> bool:
    return f"cv_{metric_key(run.data.tags['metric'])}_mean" in run.data.metrics


def _row(run) -> dict[str, Any]:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    name = tags["metric"]
    key = metric_key(name)  # as MLflow stores it
    pattern = re.compile(rf"fold_(\d+)/{re.escape(key)}")
    folds = sorted((int(m[1]), value) for key, value in metrics.items() if (m := pattern.fullmatch(key)))
    mean = metrics[f"cv_{key}_mean"]
    return {
        "model": tags.get("model", "?"), "dataset": tags.get("dataset", "?"),
        "data": tags.get("data_fingerprint", "")[:8] or None, "kind": tags["kind"], "metric": name,
        "cv_mean": mean, "cv_std": metrics.get(f"cv_{key}_std"), "fold_scores": [value for _, value in folds],
        "test": metrics.get(f"test_{key}"),
        "seed": int(tags["seed"]) if tags.get("seed", "").isdigit() else None, "folds": len(folds),
        "seconds": metrics.get("seconds"), "run_id": run.info.run_id, "run_name": run.info.run_name or run.info.run_id,
        "source": None, "fold_file": tags.get("fold_file"),
        "_params": {k: v for k, v in params.items() if k.startswith(_PARAM_PREFIXES)},
    }  # fmt: skip


# The CV columns of a submission without a CV run behind it (an external file).
_EMPTY_ROW = dict.fromkeys(c for c in COLUMNS if c != "rank")


def _submission_rows(runs: list[Any]) -> list[dict[str, Any]]:
    """Scored submissions, newest first, one per file (its digest), metric and data."""
    rows, seen = [], set()
    for run in sorted(runs, key=lambda r: r.info.start_time, reverse=True):
        tags, metrics = run.data.tags, run.data.metrics
        identity = (tags.get("file_sha256"), tags["metric"], tags.get("data_fingerprint"))
        if identity in seen:
            continue
        seen.add(identity)
        key = metric_key(tags["metric"])
        rows.append({
            "model": tags.get("model", "?"), "dataset": tags.get("dataset", "?"),
            "data": tags.get("data_fingerprint", "")[:8] or None, "kind": "submission", "metric": tags["metric"],
            "public": metrics.get(f"public_{key}"), "private": metrics.get(f"private_{key}"),
            "run_id": run.info.run_id, "run_name": run.info.run_name or run.info.run_id, "source": tags.get("source"),
        })  # fmt: skip
    return rows


def _differing_params(params: list[dict[str, str]]) -> list[str]:
    """``"k=v, k=v"`` per run for the keys whose values differ among the runs that have them."""
    keys = sorted({k for p in params for k in p})
    differing = [k for k in keys if len({p[k] for p in params if k in p}) > 1]
    short = {k: k.replace("model_params.", "model.", 1) for k in differing}  # as typed on the command line
    return [", ".join(f"{short[k]}={p[k]}" for k in differing if k in p) for p in params]


def render(frame: pl.DataFrame, format: str = "table", compact: bool | None = None, board: str = "cv") -> str:
    """The leaderboard as a rich table (for people), CSV (for tools) or Markdown (for READMEs).

    The table shows every column in a terminal; piped or redirected (``compact=None`` and stdout
    not a terminal) it keeps ``COMPACT_COLUMNS`` only, less the test, public and private scores
    where no run has one, since a log has no use for a table several hundred characters wide (CSV
    has everything). A rule separates boards; ``board`` (what :func:`leaderboard` ranked by) goes
    in their titles.
    """
    if format not in FORMATS:
        raise HarnessError(f"Unknown leaderboard format {format!r}; valid formats: {', '.join(FORMATS)}.")
    if format == "csv":
        return frame.with_columns(_joined("fold_scores", repr)).write_csv()
    text = frame.with_columns(
        _joined("fold_scores", "{:.4f}".format),
        *(pl.col(c).map_elements(_cell, return_dtype=pl.String) for c in _SCORES),
    ).with_columns(pl.all().cast(pl.String).fill_null("-"))
    if format == "md":
        lines = ["| " + " | ".join(text.columns) + " |", "|" + "---|" * len(text.columns)]
        lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in text.iter_rows()]
        return "\n".join(lines)
    compact = not sys.stdout.isatty() if compact is None else compact
    if not compact:
        return _rich_table(text, COLUMNS, compact, board)
    present = [c for c in COMPACT_COLUMNS if c not in _OPTIONAL_SCORES or frame[c].is_not_null().any()]
    return _rich_table(text, tuple(present), compact, board)


def _direction(metric: str) -> str:
    return f"{'higher' if get_metric(metric).greater_is_better else 'lower'} is better"


def _joined(column: str, fmt) -> pl.Expr:
    return pl.col(column).map_elements(lambda scores: " / ".join(fmt(s) for s in scores), return_dtype=pl.String)


def _cell(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"


def _boards(frame: pl.DataFrame) -> list[pl.DataFrame]:
    """The runs ranked against each other: consecutive rows from one rank 1 to the next, as
    :func:`leaderboard` orders them."""
    board = (pl.col("rank").cast(pl.Int64) == 1).cum_sum().alias("_board")
    return frame.with_columns(board).partition_by("_board", maintain_order=True, include_key=False)


def _rich_table(text: pl.DataFrame, columns: tuple[str, ...], compact: bool, board: str) -> str:
    """One table per board, titled with its dataset, metric and data."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    tables = []
    for ranked in _boards(text):
        table = Table(title=_board_title(ranked, board), box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD)
        for column in columns:
            table.add_column(column, justify="right" if column in _NUMERIC else "left", no_wrap=column != "params",
                             max_width=_COMPACT_PARAMS_WIDTH if compact and column == "params" else None)  # fmt: skip
        for row in ranked.select(columns).iter_rows():
            table.add_row(*row)
        tables.append(table)
    # wide enough that no cell is cut: padding and a border per column, one closing border
    width = 1 + sum(max(len(c), int(text[c].str.len_chars().max() or 0)) + 3 for c in columns)
    console = Console(width=max(100, width))
    with console.capture() as capture:
        for table in tables:
            console.print(table)
    return "\n".join(line.rstrip() for line in capture.get().rstrip().splitlines())


def _board_title(ranked: pl.DataFrame, board: str) -> str:
    metric, data = ranked["metric"][0], ranked["data"].unique().to_list()
    scope = f"data {data[0]}" if len(data) == 1 else "all data"
    return f"{ranked['dataset'][0]} by {_score_name(metric, board)} ({_direction(metric)}), {scope}"


def _score_name(metric: str, board: str) -> str:
    return metric if board == "cv" else f"{board} {metric}"


def plot(frame: pl.DataFrame, path: str | Path, board: str = "cv") -> Path:
    """A PNG comparing runs: CV mean ± std with each fold's score as a dot, best at the top; on the
    public or private board (``board``, what :func:`leaderboard` ranked by) each file's score.

    One panel per board (dataset, data, metric), since scores on other data or under other
    metrics share no scale.
    """
    groups = _boards(frame)
    fig, axes = plt.subplots(len(groups), 1, squeeze=False,
                             figsize=(7.5, sum(1.2 + 0.4 * g.height for g in groups)))  # fmt: skip
    for ax, group in zip(axes[:, 0], groups):
        group = group.sort("rank")
        y = np.arange(group.height)
        if board == "cv":
            for i, scores in enumerate(group["fold_scores"].to_list()):
                ax.scatter(scores, [i] * len(scores), s=18, color="tab:orange", zorder=3,
                           label="fold" if i == 0 else None)  # fmt: skip
            ax.errorbar(group["cv_mean"].to_numpy(), y, xerr=group["cv_std"].fill_null(0.0).to_numpy(), fmt="o",
                        color="tab:blue", alpha=0.8, capsize=3, label="CV mean ± std")  # fmt: skip
        else:
            ax.scatter(group[board].to_numpy(), y, color="tab:blue", zorder=3, label=f"{board} score")
        several = group["data"].n_unique() > 1  # all_data: say each run's data
        ax.set_yticks(y, [f"{r}. {n}" + (f" [{d}]" if several else "")
                          for r, n, d in zip(group["rank"], group["run_name"], group["data"])])  # fmt: skip
        ax.invert_yaxis()
        metric = group["metric"][0]
        data = "all data" if several else f"data {group['data'][0] or '-'}"
        title = f"{group['dataset'][0]}: {_score_name(metric, board)} ({_direction(metric)}), {data}"
        ax.set(title=title, xlabel=metric)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
