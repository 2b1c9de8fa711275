"""Several worker processes sharing one study through a real PostgreSQL server on loopback."""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import run

pytest.importorskip("psycopg2", reason="psycopg2 is needed for PostgreSQL storage (pip install -e '.[test]')")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL server binaries not found (.ci/run installs Debian's postgresql package)")
    bindir = Path(initdb[-1]).parent
    # The server refuses to run as root: run it as the postgres user in a folder it owns.
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="harness-pg-", dir="/tmp"))
    root.chmod(0o755)
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    data = root / "data"

    def pg(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=60)

    pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start")
    try:
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_complete_exactly_the_capped_number_of_trials(postgres_url, workdir, views_dir):
    command = [
        sys.executable, str(Path(run.__file__)), "tune", "--model", "clip_multimodal", "--folds", "2",
        "--trials", "5", "--study", "shared", "--storage", postgres_url, "--data", str(views_dir),
        "train.epochs=1", "train.progress=false", "tracking=false",
    ]  # fmt: skip
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    assert all("trial " in output for output in outputs), outputs  # both workers ran trials

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 5
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
