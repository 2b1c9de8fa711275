"""The run's figures: every per-fold line plot says which line is which fold; epochs count from 1."""

from types import SimpleNamespace

import numpy as np
import pytest

from harness import plots
from harness.metrics import get_metric
from harness.tasks import TaskType


@pytest.fixture
def figures(tmp_path, monkeypatch):
    """``cv_plots`` of three folds of different lengths; each figure's axes, kept open for inspection."""
    kept = {}

    def save(fig, path):
        kept[path.name] = fig.axes
        return path

    monkeypatch.setattr(plots, "_save", save)
    histories = {k: [{"train_loss": 1.0 / e, "valid_msle": 2.0 / e, "weights/image": 0.5, "weights/text": 0.3}
                     for e in range(1, 4 + k)] for k in range(3)}  # fmt: skip
    dataset = SimpleNamespace(task=TaskType.SEQUENTIAL_RECOMMENDATION)
    plots.cv_plots(tmp_path, dataset, np.zeros(0), histories, get_metric("msle"))
    return kept


def test_weights_legend_names_each_fold(figures):
    (ax,) = figures["weights.png"]
    legend = ax.get_legend()
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == ["image", "text", "fold 0", "fold 1", "fold 2"]
    folds = legend.legend_handles[2:]
    assert len({(h.get_linestyle(), h.get_marker()) for h in folds}) == 3  # each fold drawn its own way
    drawn = {(line.get_linestyle(), line.get_marker()) for line in ax.lines}
    assert {(h.get_linestyle(), h.get_marker()) for h in folds} == drawn  # the legend's fold styles are the ones drawn


def test_learning_curves_legend_names_each_fold(figures):
    for ax in figures["learning_curves.png"]:
        assert [text.get_text() for text in ax.get_legend().get_texts()] == ["fold 0", "fold 1", "fold 2"]


def test_epochs_count_from_one(figures):
    for name in ("learning_curves.png", "weights.png"):
        for ax in figures[name]:
            assert ax.get_xlabel() == "epoch"
            assert {tuple(line.get_xdata()[:2]) for line in ax.lines} == {(1, 2)}
