"""The compiled core trains bit for bit what the recorded code trained (tests/golden/record.py).

A refactoring that changes one bit of θ, of the optimizer state or of a forward pass for any
recorded configuration fails here. Skipped when the BLAS library differs from the recorded
one (bits then legitimately differ)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import record  # noqa: E402

GOLDEN = json.loads(record.RECORD.read_text())


@pytest.fixture(scope="module", autouse=True)
def same_platform():
    here = record.platform()
    if here["blas"] != GOLDEN["platform"]["blas"]:
        pytest.skip(f"BLAS differs from the recorded one ({here['blas']} vs {GOLDEN['platform']['blas']}): "
                    "bitwise results are not comparable; re-record with python tests/golden/record.py")


CONFIGS = record.configurations()
pytestmark = pytest.mark.filterwarnings("ignore:training diverged:RuntimeWarning")


def test_record_covers_grid():
    assert set(GOLDEN["results"]) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bitwise_equal_to_record(name):
    assert record.train(CONFIGS[name]) == GOLDEN["results"][name]
