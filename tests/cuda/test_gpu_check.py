"""``benchmarks/gpu_check.py --dry-run`` end to end under the simulator, so the
one-shot hardware check cannot rot between GPU sessions."""

import json
import os

import pytest

import fastbp
from fastbp import bench



def load_gpu_check():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    module_spec = importlib.util.spec_from_file_location("gpu_check_under_test", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_a_killed_test_run_is_counted_from_its_log(tmp_path):
    """When the device test run times out there is no JUnit file: the per-test lines of
    ``pytest -v`` in its log give the counts and the failures."""
    gpu_check = load_gpu_check()
    log = tmp_path / "cuda_tests.log"
    log.write_text("tests/cuda/test_a.py::test_x[float64] PASSED  [  1%]\n"
                   "tests/cuda/test_a.py::test_y FAILED  [  2%]\n"
                   "tests/cuda/test_a.py::test_z SKIPPED (no)  [  3%]\n")

    class Killed:
        timed_out = True
        log_path = log

        def wait(self):
            return None, 170.0, log.read_text()

    report = gpu_check.Report(tmp_path)
    gpu_check.finish_tests(report, Killed(), tmp_path)
    result = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["tests"]["result"]
    assert (result["passed"], result["failures"], result["skipped"], result["timed_out"]) == (1, 1, 1, True)
    assert result["failures_detail"][0]["test"] == "tests/cuda/test_a.py::test_y"


def test_torch_compile_worker_times_only_after_the_go_file(tmp_path):
    """The torch.compile worker compiles during the other sections and times only once
    the parent writes OUTDIR/torch_compile.go; its JSON lines land in the report."""
    import sys
    import time
    gpu_check = load_gpu_check()
    worker = ("import json, pathlib, sys, time\n"
              "out = pathlib.Path(sys.argv[1])\n"
              "started = time.time()\n"
              "while not (out / 'torch_compile.go').exists(): time.sleep(0.05)\n"
              "(out / 'torch_compile.jsonl').write_text(json.dumps({'width': 64, 'batch': 16384, "
              "'torch_compile': 1.0, 'waited': time.time() - started}) + '\\n')\n")
    child = gpu_check.Child([sys.executable, "-c", worker, str(tmp_path)], tmp_path / "torch_compile.log", 60)
    time.sleep(0.5)
    assert not (tmp_path / "torch_compile.jsonl").exists()   # still waiting for the go
    report = gpu_check.Report(tmp_path)
    gpu_check.finish_torch_compile(report, child, tmp_path, time.perf_counter() + 30)
    result = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["speed"]["torch_compile"]
    assert result["returncode"] == 0 and not result["timed_out"]
    assert result["rows"][0]["torch_compile"] == 1.0
    assert "| 64 | 16384 |" not in gpu_check.format_table(report.data)   # no speed rows: no table


@pytest.mark.cudasim
@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"),
                    reason="the dry run is for the simulator (on a GPU run gpu_check.py itself)")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_gpu_check_dry_run_writes_every_section(tmp_path, capsys):
    assert fastbp.cuda_available()
    assert bench.run_gpu_check(tmp_path, quick=True) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = data["sections"]
    tests = sections["tests"]["result"]
    assert tests["failures"] == tests["errors"] == 0 and tests["passed"] >= 3, tests
    cases = {c["case"]: c for c in sections["parity"]["cases"]}
    for key in ("float64/adam-clip-l2/auto", "float64/adam-clip-l2/layers", "float64/adam-clip-l2/wide",
                "float32/adam-clip-l2/auto"):
        assert cases[key]["status"] == "ok", cases[key]
    assert cases["float64/adam-clip-l2/wide"]["rel_diff_theta"] <= 1e-9
    assert all(c["status"] == "ok" or c["status"].startswith("refused on cuda") for c in cases.values()), cases
    for mode in ("dropout", "batchnorm", "checkpoint"):
        assert cases[f"float64/{mode}/auto"]["status"] == "ok", cases[f"float64/{mode}/auto"]
    assert "skipped" in sections["sanitizer"]
    rows = sections["speed"]["rows"]
    assert [(r["width"], r["batch"]) for r in rows] == [(4, 2), (4, 4)]
    assert all(r["fastbp_cuda"] > 0 and r["fastbp_cpu"] > 0 for r in rows), rows
    # width 4 fits the fused step: timed by default and with the per-layer kernels forced
    assert all(r["fastbp_cuda_path"] == "fused" and r["fastbp_cuda_layers"] > 0 for r in rows), rows
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| 4 | 4 |" in table and "parity" in table
    assert table in capsys.readouterr().out
