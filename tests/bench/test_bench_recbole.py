"""bench/bench_recbole.py without RecBole: the atomic file it writes, and its message when RecBole is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data import Dataset
from harness.tasks import TaskType

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_recbole.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_recbole", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def sequences_dataset(root: Path, sequences: dict[int, list[int]]) -> Dataset:
    users = sorted(sequences)

    def leave_out(last: int) -> pd.DataFrame:  # target: the `last`-th item from the end; history: what precedes it
        return pd.DataFrame({
            "user_id": np.array(users, np.int64),
            "history": [np.array(sequences[u][:-last], np.int64) for u in users],
            "target": np.array([sequences[u][-last] for u in users], np.int64),
        })  # fmt: skip

    n_items = max(max(s) for s in sequences.values()) + 1
    return Dataset("movielens", TaskType.SEQUENTIAL_RECOMMENDATION, leave_out(2), leave_out(1), id_col="user_id",
                   target_col="target", root=root, meta={"n_items": n_items})  # fmt: skip


def test_atomic_file_holds_the_sequences_in_order_with_item_ids_by_first_appearance(bench, tmp_path):
    sequences = {1: [3, 1, 4, 2, 5], 2: [5, 4, 3, 2], 3: [2, 1, 5, 3, 4, 6]}
    path = bench.write_atomic(sequences_dataset(tmp_path, sequences), tmp_path)

    assert path == tmp_path / bench.NAME / f"{bench.NAME}.inter"
    assert path.read_text().splitlines()[0] == "user_id:token\titem_id:token\ttimestamp:float"
    frame = pd.read_csv(path, sep="\t")
    items = frame["item_id:token"].to_numpy()
    assert list(pd.unique(items)) == sorted(set(items))  # RecBole's ids (first appearance) = the harness's
    for user, group in frame.groupby("user_id:token"):
        assert group.sort_values("timestamp:float")["item_id:token"].tolist() == sequences[user]
        assert group["timestamp:float"].nunique() == len(group)  # no ties for RecBole's time sort


@pytest.mark.skipif(importlib.util.find_spec("recbole") is not None, reason="RecBole is installed here")
def test_without_recbole_the_bench_says_how_to_create_the_bench_env():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)

    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and ".venv-bench" in lines[0] and "requirements-peers.txt" in lines[0]
