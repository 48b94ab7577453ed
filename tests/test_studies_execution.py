"""How studies run: deterministic CSVs, the same rows from one process, many processes and Dask, and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lia_model.errors import LiaInputError
from studies.executors import chunked, run_points
from studies.registry import STUDIES
from studies.runner import run_study


def _csv(tmp_path, name: str, **kwargs) -> bytes:
    run_study(STUDIES[name], tmp_path, reduced=True, show_progress=False, plot=False, **kwargs)
    return (tmp_path / f"{name}.csv").read_bytes()


@pytest.mark.slow  # minutes on 2 cores since the exact batch search and per-layer schedule
def test_same_command_writes_byte_identical_csv(tmp_path):
    first = _csv(tmp_path / "a", "cxl", workers=2)
    second = _csv(tmp_path / "b", "cxl", workers=2)
    assert first == second
    assert b"\r" not in first and b"20" in first  # plain \n line ends; numbers, not empty


@pytest.mark.slow  # seconds: the reduced policy map (the reduced sensitivity study took 2 minutes twice over)
def test_one_process_and_two_processes_give_the_same_csv(tmp_path):
    assert _csv(tmp_path / "one", "policy-map", workers=1) == _csv(tmp_path / "two", "policy-map", workers=2)


@pytest.mark.slow  # minutes on 2 cores since the exact batch search and per-layer schedule
def test_dask_local_cluster_gives_the_same_csv_as_local_processes(tmp_path):
    distributed = pytest.importorskip("distributed")
    local = _csv(tmp_path / "local", "policy-map", workers=2)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        dask = _csv(tmp_path / "dask", "policy-map", executor="dask", scheduler=cluster.scheduler_address)
    assert dask == local


def test_chunks_cover_every_point_once_in_order():
    points = list(range(103))
    chunks = chunked(points, workers=2)
    assert [p for c in chunks for p in c] == points
    assert 4 <= len(chunks) <= 8  # about four chunks per worker: small per-task overhead, useful progress


def test_progress_counts_every_point():
    seen = []
    rows = run_points(lambda p: [{"p": p}], list(range(10)), workers=1, progress=seen.append)
    assert sum(seen) == 10 and [r["p"] for r in rows] == list(range(10))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"executor": "spark"}, "--executor"),
        ({"executor": "dask"}, "--scheduler"),  # dask needs an address
        ({"scheduler": "tcp://127.0.0.1:1"}, "--scheduler"),  # an address without --executor dask
        ({"workers": 0}, "--workers"),
    ],
)
def test_bad_executor_options_name_the_option(kwargs, field):
    with pytest.raises(LiaInputError) as err:
        run_points(lambda p: [], [1], **kwargs)
    assert err.value.field == field


def test_unreachable_dask_scheduler_is_one_clear_error(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr("studies.executors.DASK_CONNECT_TIMEOUT_S", 2)
    with pytest.raises(LiaInputError, match="cannot connect"):
        run_points(lambda p: [], [1], executor="dask", scheduler="tcp://127.0.0.1:9")


def test_cli_runs_a_study_and_reports_bad_names(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "lia_model.cli", "study", "microbench", "--reduced", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"microbench.csv", "microbench.png", "microbench.svg"}
    bad = subprocess.run(
        [sys.executable, "-m", "lia_model.cli", "study", "polcy-map"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: study: unknown study 'polcy-map'")
    assert "Traceback" not in bad.stderr
