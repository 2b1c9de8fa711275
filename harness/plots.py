"""Pictures and the closing results table of a CV run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from harness.io import atomic_write  # noqa: E402
from harness.tasks import TaskType  # noqa: E402

__all__ = ["cv_plots", "print_results"]

MAX_INLINE_EXPLAINED = 4  # explain() values shown as fold-table columns; more get a table of their own


def cv_plots(run_dir: Path, dataset, oof: np.ndarray, histories: dict[int, list[dict]], metric,
             explained: list[dict[str, float]] = ()) -> list[Path]:  # fmt: skip
    """Write the run's figures into ``run_dir``; returns their paths.

    - ``learning_curves.png``: training loss and validation metric per epoch, one line per fold.
    - ``<group>.png`` for every logged ``group/name`` series (e.g. ``weights/image``): how the
      family's interpretable quantities moved during training, per fold.
    - ``<table>.png`` for every ``table/row/column`` value of the families' ``explain()`` (e.g.
      routing weights per genre and expert): a heatmap of its mean over the folds.
    - ``oof_scatter.png`` (regression): out-of-fold prediction against the truth.
    - ``confusion_matrix.png`` (classification): out-of-fold predicted class per true class,
      each row normalised to 1.
    """
    paths = [_learning_curves(run_dir / "learning_curves.png", histories, metric)]
    tables: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for values in explained:
        for key, value in values.items():
            if key.count("/") == 2:
                table, row, column = key.split("/")
                tables[table][row, column].append(value)
    for table, cells in sorted(tables.items()):
        paths.append(_heatmap(run_dir / f"{table}.png", table, {cell: float(np.mean(v)) for cell, v in cells.items()}))
    groups: dict[str, set[str]] = defaultdict(set)
    for history in histories.values():
        for logs in history:
            for key in logs:
                if "/" in key:
                    group, name = key.split("/", 1)
                    groups[group].add(name)
    for group, names in sorted(groups.items()):
        paths.append(_grouped_series(run_dir / f"{group}.png", histories, group, sorted(names)))
    if dataset.task == TaskType.REGRESSION:
        paths.append(_oof_scatter(run_dir / "oof_scatter.png", dataset.train[dataset.target_col].to_numpy(), oof))
    if dataset.task == TaskType.CLASSIFICATION:
        paths.append(_confusion(run_dir / "confusion_matrix.png", dataset.train[dataset.target_col].to_numpy(),
                                np.asarray(oof).argmax(axis=1), dataset.meta.get("classes")))  # fmt: skip
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _learning_curves(path: Path, histories, metric) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, history in sorted(histories.items()):
        epochs = np.arange(1, len(history) + 1)
        axes[0].plot(epochs, [h.get("train_loss", np.nan) for h in history], "o-", label=f"fold {k}", ms=3)
        axes[1].plot(epochs, [h.get(f"valid_{metric.name}", np.nan) for h in history], "o-", label=f"fold {k}", ms=3)
    axes[0].set(title="training loss", xlabel="epoch")
    arrow = "higher is better" if metric.greater_is_better else "lower is better"
    axes[1].set(title=f"validation {metric.name} ({arrow})", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def _grouped_series(path: Path, histories, group: str, names: list[str]) -> Path:
    """Colour = series, line style and marker = fold, each named in the legend."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = [Line2D([], [], color=colors[i % len(colors)], label=name) for i, name in enumerate(names)]
    for k, history in sorted(histories.items()):
        style = _fold_style(k)
        epochs = np.arange(1, len(history) + 1)
        for i, name in enumerate(names):
            values = [h.get(f"{group}/{name}", np.nan) for h in history]
            ax.plot(epochs, values, color=colors[i % len(colors)], ms=3, **style)
        handles.append(Line2D([], [], color="grey", ms=3, label=f"fold {k}", **style))
    ax.set(title=f"{group} per epoch", xlabel="epoch")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize="small", ncol=2)
    return _save(fig, path)


def _fold_style(k: int) -> dict[str, str]:
    """Distinct for up to 20 folds: 4 line styles times 5 markers."""
    return {"linestyle": ("-", "--", ":", "-.")[k % 4], "marker": ("o", "s", "^", "D", "v")[k % 5]}


def _heatmap(path: Path, title: str, cells: dict[tuple[str, str], float]) -> Path:
    rows = list(dict.fromkeys(row for row, _ in cells))
    columns = list(dict.fromkeys(column for _, column in cells))
    values = np.array([[cells.get((r, c), np.nan) for c in columns] for r in rows])
    fig, ax = plt.subplots(figsize=(1.1 + 0.75 * len(columns), 1.0 + 0.32 * len(rows)))
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value < np.nanmean(values) else "black")  # fmt: skip
    ax.set_title(f"{title} (mean over folds)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def _confusion(path: Path, truth: np.ndarray, predicted: np.ndarray, classes) -> Path:
    from sklearn.metrics import confusion_matrix

    n = len(classes) if classes is not None else int(max(truth.max(), predicted.max())) + 1
    names = [str(c) for c in classes] if classes is not None else [str(c) for c in range(n)]
    counts = confusion_matrix(truth, predicted, labels=range(n)).astype(float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * n, 1.2 + 0.4 * n))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    if n <= 20:
        for (i, j), value in np.ndenumerate(rates):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white" if value > 0.5 else "black")
    ax.set(title="out-of-fold confusion (rows: true class)", xlabel="predicted", ylabel="true")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def _oof_scatter(path: Path, truth: np.ndarray, oof: np.ndarray) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    log_scale = truth.min() >= 0 and oof.min() >= 0
    x, y = (np.log1p(truth), np.log1p(oof)) if log_scale else (truth, oof)
    ax.scatter(x, y, s=4, alpha=0.4)
    low, high = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([low, high], [low, high], color="black", lw=1)
    label = "log1p " if log_scale else ""
    ax.set(title="out-of-fold predictions", xlabel=f"{label}truth", ylabel=f"{label}prediction")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def print_results(result: dict[str, Any], log: Callable[[str], Any] = print) -> None:
    """The short table a CV run ends with: per-fold scores, the baseline, mean ± std."""
    metric = result["metric"]
    table = Table(title=f"{result['run_name']}  ({metric}, {'higher' if result['greater_is_better'] else 'lower'} is better)")
    extra = [key for key in result["folds"][0] if key.count("/") == 1]
    inline = extra if len(extra) <= MAX_INLINE_EXPLAINED else []
    for column in ["fold", "n_valid", metric, f"baseline_{metric}", "best_epoch", "seconds", *inline]:
        table.add_column(column, justify="right")
    for row in result["folds"]:
        table.add_row(*[_cell(row.get(column)) for column in [c.header for c in table.columns]])
    console = Console(width=max(100, 16 * len(table.columns)))
    tables = [table]
    if extra and not inline:  # many interpretable values: one row each, folds as columns
        explained = Table(title="explain() per fold")
        for column in ["value", *(f"fold {row['fold']}" for row in result["folds"]), "mean"]:
            explained.add_column(column, justify="left" if column == "value" else "right")
        for key in extra:
            values = [row.get(key) for row in result["folds"]]
            explained.add_row(key, *map(_cell, values), _cell(float(np.mean([v for v in values if v is not None]))))
        tables.append(explained)
    with console.capture() as capture:
        for item in tables:
            console.print(item)
    log(capture.get().rstrip())
    log(f"CV {metric}: {result[f'cv_{metric}_mean']:.4f} ± {result[f'cv_{metric}_std']:.4f}   "
        f"OOF {metric}: {result[f'oof_{metric}']:.4f}   baseline: {result[f'baseline_{metric}_mean']:.4f}")  # fmt: skip
    report = _ranking_report_table(result)
    tested = {key[5:]: value for key, value in result.items() if key.startswith("test_") and isinstance(value, float)}
    if tested and report is None:  # the test split's own targets (e.g. re-ID's query / gallery)
        log("test: " + ", ".join(f"{name} {value:.4g}" for name, value in tested.items()))
    if report is not None:
        with console.capture() as capture:
            console.print(report)
        log(capture.get().rstrip())
    log(f"submission: {result['submission']}   artifacts: {result['run_dir']}")
    if result.get("tracking_uri"):
        log(f"MLflow run {result['run_id']} in {result['tracking_uri']}")


def _ranking_report_table(result: dict[str, Any]) -> Table | None:
    """Every ranking metric of the run: rows metric@K, columns out-of-fold / test per protocol."""
    keys = [key[4:] for key in result if key.startswith("oof_") and "@" in key and key.endswith(("_full", "_sampled"))]
    if not keys:
        return None
    names = list(dict.fromkeys(key.rsplit("_", 1)[0] for key in keys))
    protocols = list(dict.fromkeys(key.rsplit("_", 1)[1] for key in keys))
    table = Table(title="ranking metrics (full: all items, history masked; sampled: target + sampled negatives)")
    table.add_column("metric")
    columns = [(split, p) for p in protocols for split in ("oof", "test") if f"{split}_{names[0]}_{p}" in result]
    for split, protocol in columns:
        table.add_column(f"{split} {protocol}", justify="right")
    for name in names:
        table.add_row(name, *[_cell(result.get(f"{split}_{name}_{protocol}")) for split, protocol in columns])
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
