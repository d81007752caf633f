"""benchmarks/regress.sh's verdict, with asv replaced by a stub that prints a canned
`asv compare` table (the real run, both commits built by asv, takes minutes; its
demonstration on a deliberately slowed kernel is in benchmarks/README.md)."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADER = """| Change   |   Before [aaaaaaaa] |   After [bbbbbbbb] |   Ratio | Benchmark (Parameter) |
|----------|---------------------|--------------------|---------|-----------------------|
"""
ROWS = {
    "same": "|          |  4.47 |  4.40 |  0.98 | bench_training.TrackSpeedup.track_speedup_vs_reference('small') |\n",
    "drop": "| -        | 10.66 |  2.01 |  0.19 | bench_training.TrackSpeedup.track_speedup_vs_reference('small') |\n",
    "rise": "| +        |  2.01 | 10.66 |  5.30 | bench_training.TrackSpeedup.track_speedup_vs_reference('small') |\n",
    "failed": ("| !        |  4.47 |  failed |  n/a | "
               "bench_training.TrackSpeedup.track_speedup_vs_reference('small') |\n"),
}


def run_regress(tmp_path, table):
    stub = tmp_path / "python"
    (tmp_path / "table.txt").write_text(table)
    stub.write_text(f"""#!/usr/bin/env bash
# stands in for "python -m asv ...": compare prints the canned table, the rest succeeds
[ "$3" = compare ] && cat {tmp_path / "table.txt"}
exit 0
""")
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub))
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "regress.sh"), "HEAD", "HEAD"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None, reason="needs bash and git")
@pytest.mark.parametrize("rows, status", [(["same"], 0), (["same", "rise"], 0), (["same", "drop"], 1),
                                          (["failed"], 1), ([], 1)])
def test_verdict(tmp_path, rows, status):
    proc = run_regress(tmp_path, HEADER + "".join(ROWS[r] for r in rows))
    assert proc.returncode == status, proc.stdout + proc.stderr


def test_usage_error(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "regress.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
