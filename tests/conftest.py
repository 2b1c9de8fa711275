"""Shared fixtures: tiny datasets in the real formats, built in temporary directories."""

from __future__ import annotations

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
