"""``fastbp bench`` (fastbp/bench.py) on tiny configurations and hand-made results: the rows'
result dicts, the report's text, the start-time and memory measurements' arithmetic and the
command line. Timings themselves are not checked (noise); what is computed from them is."""

import json
import os
import time

import numpy as np
import pytest

from fastbp import bench

TINY = bench.Config("small", (6, 5, 3), 4, 9, 9, 1.0, description="6-5-3, batch 4")


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setenv("FASTBP_BENCH_SIZE", "tiny")
    monkeypatch.setattr(bench, "PAUSE", 0.0)


def test_rows_for_each_size_name(monkeypatch):
    config = bench.Config("c", (2, 2), 8, 1000, 100, 1.0)
    assert [config.rows_for(s) for s in ("full", "quick", "tiny")] == [1000, 100, 9]
    monkeypatch.setenv("FASTBP_BENCH_SIZE", "quick")
    assert config.rows_for() == 100 and bench.repeats_for() == 1
    monkeypatch.delenv("FASTBP_BENCH_SIZE")
    assert config.rows_for() == 1000 and bench.repeats_for() == 3
    with pytest.raises(ValueError, match="FASTBP_BENCH_SIZE must be full, quick or tiny, got 'huge'"):
        config.rows_for("huge")


class Recorder:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __call__(self):
        self.calls.append(self.name)


def test_time_interleaved_warms_up_then_pauses_before_every_timed_call(monkeypatch):
    calls = []
    monkeypatch.setattr(bench.time, "sleep", lambda s: calls.append(("sleep", s)))
    times = bench.time_interleaved([Recorder("a", calls), Recorder("b", calls)], repeats=2, pause=0.25)
    pause = ("sleep", 0.25)
    assert calls == ["a", "b", pause, "a", pause, "b", pause, "a", pause, "b"]
    assert set(times) == {"a", "b"} and all(len(t) == 2 and min(t) >= 0 for t in times.values())
    calls.clear()
    bench.time_interleaved([Recorder("a", calls)], repeats=1, pause=0)
    assert calls == ["a", "a"]  # no pause asked: no sleep


def test_bench_config_result_dict(tiny):
    r = bench.bench_config(TINY, quick=True, repeats=2, with_torch=False)
    assert (r["config"], r["rows"], r["repeats"], r["sizes"]) == ("small", 9, 2, [6, 5, 3])
    assert set(r["seconds"]) == {"fastbp", "reference"} and all(len(t) == 2 for t in r["seconds"].values())
    sps = r["samples_per_second"]
    median = {k: float(np.median(v)) for k, v in r["seconds"].items()}
    assert sps == pytest.approx({k: 9 / median[k] for k in ("fastbp", "reference")})
    assert r["speedup"] == pytest.approx(sps["fastbp"] / sps["reference"])
    assert r["speedup_best"] == pytest.approx(min(r["seconds"]["reference"]) / min(r["seconds"]["fastbp"]))
    flops = 2 * 9 * (6 * 5 * 2 + 5 * 3 * 3)  # forward + dW for layer 1; forward, dW and δ·Wᵀ for layer 2
    assert r["fastbp_gflops"] == pytest.approx(flops / median["fastbp"] / 1e9)
    assert r["fastbp_gemm_fraction"] == pytest.approx(r["fastbp_gflops"] / r["gemm_gflops"])
    assert "speedup_vs_torch" not in r


def test_blas_info_without_threadpoolctl(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    assert bench.blas_info() == []


def test_versions_and_json_of_numpy_scalars_and_configs():
    assert bench._version("numpy") == np.__version__ and bench._version("no_such_module_here") is None
    text = json.dumps({"x": np.float32(1.5), "n": np.int64(3), "config": TINY}, default=bench._jsonable)
    assert json.loads(text) == {"x": 1.5, "n": 3, "config": {
        "name": "small", "sizes": [6, 5, 3], "batch_size": 4, "n": 9, "n_quick": 9, "target": 1.0,
        "gemm_fraction": 0.0, "description": "6-5-3, batch 4"}}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        json.dumps({"x": object()}, default=bench._jsonable)


def test_memory_model_splits_per_row_and_fixed(monkeypatch):
    monkeypatch.setattr(bench, "fit_memory", lambda config, rows: 1000 + 50 * rows)
    m = bench.memory_model(TINY, 10, 30)
    assert m["peak_bytes"] == [1500, 2500] and m["per_row_bytes"] == 50 and m["fixed_bytes"] == 1000
    params = (6 * 5 + 5 + 5 * 3 + 3) * 4  # float32
    assert m["params_bytes"] == params and m["fixed_over_params"] == pytest.approx(1000 / params)
    assert m["batch_x_width_bytes"] == 4 * (6 + 5 + 3) * 4 and m["one_hot_row_bytes"] == 3 * 4
    assert m["x_bool_bytes"] == [60, 180]


def test_fit_memory_grows_with_the_rows():
    small, big = bench.fit_memory(TINY, 64), bench.fit_memory(TINY, 4096)
    assert 0 < small < big
    assert big - small >= (4096 - 64) * 3 * 4  # at least the one-hot targets of the extra rows


def test_start_time_runs_the_script_with_its_own_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "START_SCRIPT", "import json, os, fastbp\nprint('noise')\n"
                        "print(json.dumps({'first_epoch': 0.5, 'cache': os.environ['NUMBA_CACHE_DIR']}))")
    r = bench.start_time(tmp_path, timeout=60)
    assert r["first_epoch"] == 0.5 and r["cache"] == str(tmp_path) and r["total"] > 0
    monkeypatch.setattr(bench, "START_SCRIPT", "import sys; sys.exit('no first epoch here')")
    with pytest.raises(RuntimeError, match="start-time subprocess failed:\nno first epoch here"):
        bench.start_time(tmp_path, timeout=60)


def test_cold_then_warm_start_in_one_cache(monkeypatch):
    """The cold run gets an empty cache; the warm runs reuse it; the warm start reported is
    the run with the median first-epoch time."""
    seen, firsts = [], iter([9.0, 1.2, 0.8, 1.0])

    def fake_start(cache_dir, timeout=None):
        seen.append((cache_dir, os.listdir(cache_dir)))
        open(os.path.join(cache_dir, f"entry{len(seen)}"), "w").close()
        first = next(firsts)
        return {"first_epoch": first, "total": first + 1}

    monkeypatch.setattr(bench, "start_time", fake_start)
    s = bench.cold_warm_start(warm_repeats=3)
    assert len({d for d, _ in seen}) == 1 and seen[0][1] == [] and seen[1][1] == ["entry1"]
    assert s["cold"]["first_epoch"] == 9.0 and s["warm"]["first_epoch"] == 1.0
    assert s["warm_totals"] == [1.8, 2.0, 2.2]  # sorted by first epoch
    assert (s["cold_target"], s["warm_target"]) == (bench.COLD_START_TARGET, bench.WARM_START_TARGET)
    assert not os.path.exists(seen[0][0])  # the temporary cache is removed


def test_run_suite_collects_every_part(monkeypatch):
    asked = []
    monkeypatch.setattr(bench, "gemm_rate", lambda repeats: asked.append(("gemm", repeats)) or 100.0)
    monkeypatch.setattr(bench, "bench_config",
                        lambda c, **kw: asked.append(("config", c.name, kw["quick"])) or {"c": c.name})
    monkeypatch.setattr(bench, "cold_warm_start", lambda: {"start": 1})
    monkeypatch.setattr(bench, "robustness", lambda c, quick: asked.append(("robust", c.name, quick)) or {"r": 1})
    monkeypatch.setattr(bench, "inference", lambda c, quick: asked.append(("infer", c.name, quick)) or {"i": 1})
    monkeypatch.setattr(bench, "memory_model", lambda c, *rows: asked.append(("memory", c.name, rows)) or {"m": 1})
    monkeypatch.setattr(bench, "cpu_speeds", lambda: asked.append(("speeds",)) or {"s": len(asked)})
    said = []
    results = bench.run_suite(["sgd", "small"], quick=True, progress=said.append)
    assert asked == [("gemm", 2), ("speeds",), ("config", "sgd", True), ("speeds",), ("config", "small", True),
                     ("robust", "mnist", True), ("infer", "mnist", True), ("memory", "mnist", (1024, 2048))]
    assert results["configs"] == [{"c": "sgd", "cpu_speed": {"s": 2}}, {"c": "small", "cpu_speed": {"s": 4}}]
    assert results["gemm_gflops"] == 100.0
    assert (results["start"], results["robustness"], results["inference"], results["memory"]) == \
        ({"start": 1}, {"r": 1}, {"i": 1}, {"m": 1})
    assert said[-1] == "fit memory ..." and any("robustness" in s for s in said)
    bench.run_suite(["sgd"], quick=False, start=False, robust=False)
    assert asked[-1] == ("memory", "mnist", (4096, 16384)) and asked[-2] == ("config", "sgd", False)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU masks are Linux's")
def test_cpu_speeds_times_each_cpu_pinned_and_restores_the_mask(monkeypatch):
    """Each CPU of the process's mask in turn, the thread pinned to it while it works; the
    mask comes back; the ratio is the slowest CPU's speed over the fastest's."""
    mask = os.sched_getaffinity(0)
    last = max(mask)
    seen = []

    def work():  # twice as long on the last CPU
        pinned = os.sched_getaffinity(0)
        seen.append(pinned)
        time.sleep(0.004 if pinned == {last} else 0.002)
    monkeypatch.setattr(bench, "_fixed_work", work)
    speeds = bench.cpu_speeds(repeats=2)
    assert os.sched_getaffinity(0) == mask
    assert speeds["cpus"] == sorted(mask) and seen == [{cpu} for cpu in sorted(mask) for _ in range(2)]
    if len(mask) > 1:
        assert 0.3 < speeds["slowest_over_fastest"] < 0.8
    assert bench.cpu_speeds(repeats=1)["slowest_over_fastest"] <= 1


def test_report_names_each_configurations_cpu_speed():
    results = full_results()
    assert "CPU speed" not in bench.format_report(results)  # older JSON: no line
    results["configs"][0].update(config="small", cpu_speed={"cpus": [0, 1], "seconds": [1e-3, 2e-3],
                                                            "slowest_over_fastest": 0.5})
    assert ("CPU speed before each configuration, slowest CPU ÷ fastest (a fixed loop pinned to each): small 0.50; "
            "far below 1, a two-thread fit goes at the slower CPU's pace") in bench.format_report(results).splitlines()


def full_results():
    machine = {"date": "2026-11-26 12:00 UTC", "processor": "CPU X", "cpus": 2, "numpy": "2.0", "numba": "0.68",
               "blas": [{"prefix": "libscipy_openblas", "version": "0.3.28", "architecture": "Zen",
                         "num_threads": 2}]}
    config = {"description": "6-5-3, batch 4", "samples_per_second": {"fastbp": 30000.0, "reference": 10000.0},
              "fastbp_kernel_samples_per_second": 45000.0, "speedup": 3.0, "speedup_best": 2.5, "target": 2.0,
              "fastbp_gemm_fraction": 0.5, "gemm_fraction_target": 0.8, "fastbp_gflops": 50.0, "gemm_gflops": 100.0}
    return {"machine": machine, "quick": True, "torch": False, "gemm_gflops": 1234.5, "threads": 2,
            "configs": [config],
            "robustness": {"description": "784-256-128-10, batch 128", "rows": 32768, "epochs": 6,
                           "median_alone": 1000.0, "median_alternating": 900.0, "worst_alternating": 500.0,
                           "worst_over_median_alone": 0.5, "worst_alone": 800.0,
                           "worst_alone_over_median_alone": 0.8, "keep_target": 0.7},
            "inference": {"rows": 100000, "description": "784-256-128-10, batch 128",
                          "fastbp_rows_per_second": 2e6, "numpy_rows_per_second": 1e6, "speedup": 2.0, "target": 1.0},
            "start": {"cold": {"first_epoch": 4.0}, "warm": {"first_epoch": 1.5}, "cold_target": 5.0,
                      "warm_target": 1.0},
            "memory": {"config": "mnist", "rows": [1024, 2048], "peak_bytes": [2 ** 20, 3 * 2 ** 19],
                       "params_bytes": 2 ** 19, "batch_x_width_bytes": 2 ** 18, "x_bool_bytes": [2 ** 20, 2 ** 21]}}


def test_report_for_users():
    text = bench.format_report(full_results())
    lines = text.splitlines()
    assert lines[0] == "fastbp bench  2026-11-26 12:00 UTC  CPU X (2 CPUs)  numpy 2.0  numba 0.68  [quick]"
    assert lines[1] == "BLAS: libscipy_openblas 0.3.28 Zen x2"
    assert lines[2] == "BLAS threads limited to 2"
    row = next(line for line in lines if line.startswith("6-5-3, batch 4"))
    assert row.split()[3:] == ["30,000", "45,000", "10,000", "3.00x", "2.50x"]
    assert "(PyTorch not importable: skipped)" in lines and "target" not in text and "MISS" not in text
    assert ("robustness (784-256-128-10, batch 128, 32,768 rows, 6 epochs each, samples/s): median alone 1,000; "
            "alternating with a numpy GEMM: median 900, worst 500 = 50% of alone") in lines
    assert "  (noise floor: the worst epoch alone is 80% of the median alone)" in lines
    assert ("inference (predict_proba, 100,000 rows, 784-256-128-10, rows/s): fastbp 2,000,000, numpy forward "
            "1,000,000 = 2.00x") in lines
    assert "cold start (fastbp train, from fastbp's start to the first trained epoch; first run, compiling the " \
           "kernels): 4.00 s" in lines
    assert any(line.startswith("warm start (") and line.endswith(": 1.50 s") for line in lines)
    assert ("fit memory (mnist, tracemalloc): peak extra 1.00 MiB at 1024 rows, 1.50 MiB at 2048 rows; params "
            "0.50 MiB, batch x width 0.25 MiB, one bool per input value 2.00 MiB at 2048 rows") in lines


def test_report_with_targets():
    results = full_results()
    lines = bench.format_report(results, targets=True).splitlines()
    assert lines[2] == "numpy float32 GEMM 2048x2048 at start: 1,234.5 GFLOP/s, BLAS threads limited to 2"
    row = next(line for line in lines if line.startswith("6-5-3, batch 4"))
    # 3.00x beats the 2.0x target, but 50 % of the GEMM rate misses its 80 %: MISS
    assert row.split()[3:] == ["30,000", "45,000", "10,000", "3.00x", "2.50x", "2.0x", "MISS", "50.0", "100", "50%",
                               "(target", "80%)"]
    assert any(line.startswith("robustness") and line.endswith("= 50% of alone  target >= 70%  MISS")
               for line in lines)
    assert any(line.startswith("inference") and line.endswith("= 2.00x  target >= 1.0x  ok") for line in lines)
    assert any(line.startswith("cold start") and line.endswith("4.00 s  target <= 5 s  ok") for line in lines)
    assert any(line.startswith("warm start") and line.endswith("1.50 s  target <= 1 s  MISS") for line in lines)
    results["configs"][0]["fastbp_gemm_fraction"] = 0.9
    row = next(line for line in bench.format_report(results, targets=True).splitlines() if line.startswith("6-5-3"))
    assert " ok " in row and "MISS" not in row


def test_cli_text_report_with_a_thread_limit(tiny, monkeypatch, capsys):
    """``fastbp bench --threads 1`` (text report): the pools are limited while it runs and given back."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setitem(bench.CONFIGS, "small", TINY)
    bench.blas_info()
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
    seen = []
    real = bench.bench_config

    def spy(*args, **kwargs):
        seen.append({lib["num_threads"] for lib in threadpoolctl.threadpool_info()})
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "bench_config", spy)
    assert bench.main(["--quick", "--config", "small", "--no-start", "--no-memory", "--no-robustness",
                       "--no-torch", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert seen == [{1}]
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info()] == before
    assert "BLAS threads limited to 1" in out and "6-5-3, batch 4" in out


def test_cli_reads_its_own_json_back(tiny, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(bench.CONFIGS, "small", TINY)
    assert bench.main(["--json", "--quick", "--config", "small", "--no-start", "--no-memory", "--no-robustness",
                       "--no-torch"]) == 0
    path = tmp_path / "bench.json"
    path.write_text(capsys.readouterr().out)
    assert bench.main(["--from-json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[quick]" in out and out.count("6-5-3, batch 4") == 1
