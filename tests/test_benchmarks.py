"""The benchmark harness's own machinery: an engine in a process of its own (benchmarks.worker driven by
benchmarks.run.EngineProcess) on the embedded model, and the rule that a target is met only when its worst
round clears it."""

import os

import pytest

from benchmarks import report
from benchmarks.run import EngineProcess, make_sources, spread


@pytest.fixture()
def worker():
    process = EngineProcess("ortdecode", threads=1, timeout=300)
    yield process
    process.close()


def test_an_engine_loads_and_runs_in_a_process_of_its_own(worker, default_model_dir):
    spec = {"kind": "ortdecode", "path": str(default_model_dir), "threads": 1, "spinning": False}
    load = worker.request(cmd="load", engine=spec, sources=[s.tolist() for s in make_sources(0, 1, 100)],
                          peak_sources=[s.tolist() for s in make_sources(0, 8, 100)], peak_new_tokens=8)
    assert worker.process.pid != os.getpid()
    assert 0 < load["load_s"] < load["first_token_ready_s"]
    assert load["rss_after_imports_mib"] < load["rss_after_load_mib"] <= load["peak_rss_mib"]
    case = worker.request(cmd="case", sources=[s.tolist() for s in make_sources(0, 2, 100)], workload="beam 4",
                          new_tokens=5, repeats=2, seed=0)
    assert len(case["seconds"]) == len(case["first_token_seconds"]) == 2
    assert all(total > 0 and first > 0 for total, first in zip(case["seconds"], case["first_token_seconds"]))
    with pytest.raises(RuntimeError, match="ortdecode, case: KeyError: 'beam 9'"):
        worker.request(cmd="case", sources=[[5, 1]], workload="beam 9", new_tokens=2, repeats=1, seed=0)


def test_an_unknown_engine_kind_is_reported_by_the_driver(worker):
    with pytest.raises(RuntimeError, match="unknown engine kind 'marian'"):
        worker.request(cmd="load", engine={"kind": "marian", "path": "."}, sources=[[5, 1]], peak_sources=[[5, 1]],
                       peak_new_tokens=2)


def test_a_target_is_met_only_when_its_worst_round_clears_it():
    rounds = spread([1.3, 0.97, 1.2])  # median 1.2, worst 0.97
    assert (rounds["median"], rounds["min"], rounds["max"]) == (1.2, 0.97, 1.3)
    assert report._target("at least", rounds, 1.0, at_least=True)["met"] is False
    assert report._target("at least", rounds, 0.95, at_least=True)["met"] is True
    assert report._target("at most", rounds, 1.25, at_least=False)["met"] is False
    assert report._target("at most", rounds, 1.3, at_least=False)["met"] is True
    assert spread([None, 2.0, None])["median"] == 2.0 and spread([None]) is None
    assert report._target("not measured", None, 1.0, at_least=True)["met"] is None


def test_the_engine_loop_runs_both_batching_modes_and_splits_runner_time(default_model_dir, capsys):
    from benchmarks import engine_loop

    for extra in ([], ["--static"]):
        engine_loop.main(["--model", str(default_model_dir), "--concurrency", "3", "--requests", "5", *extra])
        line, shapes = capsys.readouterr().out.splitlines()
        assert line.startswith("static" if extra else "continuous") and "3 clients, 5 requests" in line
        seconds = dict(part.rsplit(" ", 2)[:2] for part in line.split("runner time: ")[1].strip().split(", "))
        assert {"encode", "first step", "step"} <= set(seconds) and float(seconds["step"]) > 0
        rows = float(shapes.split("steps: ")[1].split(" rows")[0])
        padding = int(shapes.split(" of the cache")[0].rsplit(" ", 1)[1].rstrip("%"))
        assert 1 <= rows <= 3 and 0 <= padding < 100
        if extra:  # a static batch starts together: its rows are never padded
            assert padding == 0
    engine_loop.main(["--model", str(default_model_dir), "--generate"])
    out = capsys.readouterr().out
    assert out.count("time to first token") == 3 and out.count("beam 4, batch") == 2 and "mixed lengths" in out


def test_the_serving_benchmark_runs_both_ortdecode_servers_and_writes_results_and_plot(tmp_path, monkeypatch):
    """`python -m benchmarks.serve --quick` with the two ortdecode servers (the Optimum app and CTranslate2 are the
    bench extra's): real `ortdecode serve` processes, real closed-loop streaming clients, interleaved turns; the
    greedy texts of continuous and static batching agree, and the report, JSON and plot are written."""
    import json

    from benchmarks import artifacts
    from benchmarks.serve import run

    monkeypatch.setattr(artifacts, "WORK", tmp_path / "work")  # its export too: nothing written outside tmp_path
    run.main(["--quick", "--systems", "ortdecode continuous", "ortdecode static", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "serve-quick.json").read_text())
    numbers = result["models"]["t5-numbers"]
    assert numbers["errors"] == {} and numbers["continuous_vs_static_text_mismatches"] == {"1": 0, "4": 0}
    rows = {(row["system"], row["concurrency"]): row for row in numbers["rows"]}
    assert set(rows) == {(system, clients) for system in ("ortdecode continuous", "ortdecode static")
                         for clients in (1, 4)}
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["ttft_p99_ms"] >= row["ttft_p50_ms"] > 0, row
        assert len(row["rounds"]) == 1
    report = (tmp_path / "serve-quick.md").read_text()
    assert "| ortdecode continuous | 4 | 8 |" in report and "![plot](serve-quick.png)" in report
    assert (tmp_path / "serve-quick.png").read_bytes().startswith(b"\x89PNG")
