"""Shared fixtures: tiny datasets in the real formats, built in temporary directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data import Dataset
from harness.tasks import TaskType


@pytest.fixture
def regression_dataset(tmp_path) -> Dataset:
    rng = np.random.default_rng(0)
    n = 60
    train = pd.DataFrame({
        "id": [f"r{i:03d}" for i in range(n)],
        "x": rng.normal(size=n),
        "group": rng.integers(0, 12, size=n),
    })  # fmt: skip
    train["y"] = np.exp(train["x"]) * 100
    test = pd.DataFrame({"id": [f"t{i:03d}" for i in range(10)], "x": rng.normal(size=10)})
    return Dataset("toy", TaskType.REGRESSION, train, test, id_col="id", target_col="y", root=tmp_path, group_col="group")


@pytest.fixture(scope="session")
def views_template(tmp_path_factory):
    """A small views dataset in the real on-disk format; copy it before changing it."""
    from harness.data.views import generate_views

    root = tmp_path_factory.mktemp("views") / "views"
    generate_views(root, seed=0, n_train=48, n_test=12)
    return root


@pytest.fixture
def views_dir(views_template, tmp_path):
    import shutil

    return Path(shutil.copytree(views_template, tmp_path / "views"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty directory, so folds/, submissions/ and leaderboard/ land there."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work
