"""First use from several processes at once: one does the work under a lock, the others reuse it."""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

N_PROCESSES = 3

# Each process imports, says it is ready, waits for the common start signal, then does its work.
_START_TOGETHER = """
import json, sys, time
from pathlib import Path
work = Path(sys.argv[1])
(work / f"ready-{sys.argv[2]}").touch()
while not (work / "go").exists():
    time.sleep(0.01)
"""


def _run_together(work: Path, body: str) -> list[dict]:
    """Start ``N_PROCESSES`` copies of ``body`` at the same moment; their JSON outputs."""
    code = textwrap.dedent(_START_TOGETHER) + textwrap.dedent(body)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(work), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(N_PROCESSES)]  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(work.glob("ready-*"))) < N_PROCESSES and time.monotonic() < deadline:
        time.sleep(0.05)
    (work / "go").touch()
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    return [json.loads(out.splitlines()[-1]) for out, _ in outputs]


def test_processes_starting_together_share_one_dataset_and_one_fold_file(tmp_path):
    results = _run_together(tmp_path, """
        from harness.data import load_dataset
        from harness.folds import get_folds
        dataset = load_dataset("movielens", data_root=work / "data", log=lambda m: None,
                               generator_options=dict(n_users=60, n_items=120, mean_length=25))
        path, _ = get_folds(dataset, "kfold", 3, 42, folds_dir=work / "folds")
        print(json.dumps({"fingerprint": dataset.fingerprint, "fold_file": str(path),
                          "folds": path.read_bytes().hex()}))
    """)

    assert len({r["fingerprint"] for r in results}) == 1
    assert len({r["fold_file"] for r in results}) == 1
    assert len({r["folds"] for r in results}) == 1  # byte-identical
    # nothing else left behind: no partial directory, temp file or lock file
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["movielens"]
    assert [p.name for p in (tmp_path / "folds").iterdir()] == [Path(results[0]["fold_file"]).name]


def test_processes_starting_together_compute_a_feature_cache_entry_once(tmp_path):
    results = _run_together(tmp_path, """
        import torch
        from harness.features import FeatureCache

        def compute():
            with open(work / "computed", "a") as f:
                f.write("x")
            time.sleep(0.5)  # slow enough that the other processes arrive while it runs
            return torch.arange(6.0).reshape(2, 3)

        features = FeatureCache(work / "cache", log=lambda m: None).get_or_compute("enc", {"k": 1}, compute)
        print(json.dumps(features.tolist()))
    """)

    assert (tmp_path / "computed").read_text() == "x"
    assert results == [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]] * N_PROCESSES
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".pt"]


def test_a_damaged_cache_entry_is_recomputed(tmp_path):
    import torch

    from harness.features import FeatureCache

    notes = []
    cache = FeatureCache(tmp_path, log=notes.append)
    cache.path("enc", {"k": 1}).write_bytes(b"not a tensor")
    features = cache.get_or_compute("enc", {"k": 1}, lambda: torch.ones(2))

    assert torch.equal(features, torch.ones(2)) and "unreadable; recomputing it" in notes[0]
    assert torch.equal(cache.get_or_compute("enc", {"k": 1}, lambda: torch.zeros(2)), torch.ones(2))


def test_a_failed_creation_keeps_the_lock_for_the_next_process(tmp_path):
    from harness.data import create_once

    target = tmp_path / "thing"
    with pytest.raises(RuntimeError, match="generator failed"):
        with create_once(target) as missing:
            assert missing
            raise RuntimeError("generator failed")
    assert (tmp_path / ".thing.lock").exists()  # processes still waiting share it
    with create_once(target) as missing:
        assert missing
        target.write_text("done")
    with create_once(target) as missing:
        assert not missing
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]
