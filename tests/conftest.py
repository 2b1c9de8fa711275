"""Shared fixtures: tiny datasets in the real formats, built in temporary directories."""

from __future__ import annotations

from contextlib import contextmanager
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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tiny networks: a second one only competes for the shared cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty directory, so folds/, submissions/ and leaderboard/ land there."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="session")
def isolated_store(tmp_path_factory):
    """For module-scoped fixtures: ``with isolated_store(name) as work`` runs in an empty directory
    whose MLflow store is its own."""

    @contextmanager
    def enter(name: str):
        work = tmp_path_factory.mktemp(name)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(work)
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            yield work

    return enter


@pytest.fixture
def rec_dataset(tmp_path) -> Dataset:
    """A small leave-one-out recommendation dataset: each user walks the catalogue in steps of 3."""
    rng = np.random.default_rng(0)
    n_users, n_items = 120, 61  # item ids 1..60, 0 is padding
    sequences = []
    for _ in range(n_users):
        start, length = int(rng.integers(0, 60)), int(rng.integers(6, 15))
        sequences.append([(start + 3 * t) % 60 + 1 for t in range(length)])
    users = np.arange(1, n_users + 1)
    texts = [f"likes step {s[0] % 3}" for s in sequences]

    train = pd.DataFrame({"user_id": users, "history": [np.array(s[:-2], np.int64) for s in sequences],
                          "target": [s[-2] for s in sequences], "user_text": texts})  # fmt: skip
    test = pd.DataFrame({"user_id": users, "history": [np.array(s[:-1], np.int64) for s in sequences],
                         "target": [s[-1] for s in sequences], "user_text": texts})  # fmt: skip
    items = pd.DataFrame({
        "item_id": np.arange(1, n_items), "movie_id": np.arange(1, n_items) * 10,
        "title": [f"Movie {i}" for i in range(1, n_items)], "genres": ["Drama" if i % 2 else "Comedy" for i in range(1, n_items)],
        "description": [f"a story number {i % 3}" for i in range(1, n_items)], "poster_path": [None] * (n_items - 1),
    })  # fmt: skip
    meta = {"n_items": n_items, "items": items, "genres": ["Comedy", "Drama"],
            "users": pd.DataFrame({"user_id": users, "raw_user_id": users + 1000})}  # fmt: skip
    return Dataset("toyrec", TaskType.SEQUENTIAL_RECOMMENDATION, train, test, id_col="user_id", target_col="target",
                   root=tmp_path, meta=meta, media_cols=())  # fmt: skip
