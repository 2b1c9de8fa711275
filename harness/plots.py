"""Pictures and the closing results table of a CV run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from harness.io import atomic_write  # noqa: E402
from harness.tasks import TaskType  # noqa: E402

__all__ = ["cv_plots", "print_results"]


def cv_plots(run_dir: Path, dataset, oof: np.ndarray, histories: dict[int, list[dict]], metric) -> list[Path]:
    """Write the run's figures into ``run_dir``; returns their paths.

    - ``learning_curves.png``: training loss and validation metric per epoch, one line per fold.
    - ``<group>.png`` for every logged ``group/name`` series (e.g. ``weights/image``): how the
      family's interpretable quantities moved during training, per fold.
    - ``oof_scatter.png`` (regression): out-of-fold prediction against the truth.
    """
    paths = [_learning_curves(run_dir / "learning_curves.png", histories, metric)]
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
        axes[0].plot(epochs, [h["train_loss"] for h in history], label=f"fold {k}")
        axes[1].plot(epochs, [h[f"valid_{metric.name}"] for h in history], label=f"fold {k}")
    axes[0].set(title="training loss", xlabel="epoch")
    arrow = "higher is better" if metric.greater_is_better else "lower is better"
    axes[1].set(title=f"validation {metric.name} ({arrow})", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def _grouped_series(path: Path, histories, group: str, names: list[str]) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, history in sorted(histories.items()):
        epochs = np.arange(1, len(history) + 1)
        for i, name in enumerate(names):
            values = [h.get(f"{group}/{name}", np.nan) for h in history]
            label = name if k == 0 else None
            ax.plot(epochs, values, styles[k % len(styles)], color=colors[i % len(colors)], label=label)
    ax.set(title=f"{group} per epoch (line style = fold)", xlabel="epoch")
    ax.grid(alpha=0.3)
    ax.legend()
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
    extra = [key for key in result["folds"][0] if "/" in key]
    for column in ["fold", "n_valid", metric, f"baseline_{metric}", "best_epoch", "seconds", *extra]:
        table.add_column(column, justify="right")
    for row in result["folds"]:
        table.add_row(*[_cell(row.get(column)) for column in [c.header for c in table.columns]])
    console = Console(width=max(100, 16 * len(table.columns)))
    with console.capture() as capture:
        console.print(table)
    log(capture.get().rstrip())
    log(f"CV {metric}: {result[f'cv_{metric}_mean']:.4f} ± {result[f'cv_{metric}_std']:.4f}   "
        f"OOF {metric}: {result[f'oof_{metric}']:.4f}   baseline: {result[f'baseline_{metric}_mean']:.4f}")  # fmt: skip
    log(f"submission: {result['submission']}   artifacts: {result['run_dir']}")
    if result.get("tracking_uri"):
        log(f"MLflow run {result['run_id']} in {result['tracking_uri']}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
