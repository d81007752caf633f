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


def refused_now(config):
    """Configurations the recorded code trained that fit now refuses on purpose: batch
    normalization over single rows (x̂ = 0; refused since the hardening of issue 11)."""
    return bool(config.get("batchnorm")) and config["batch_size"] == 1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bitwise_equal_to_record(name):
    if refused_now(CONFIGS[name]):
        with pytest.raises(ValueError, match="batchnorm needs batches of at least 2 rows"):
            record.train(CONFIGS[name])
        return
    assert record.train(CONFIGS[name]) == GOLDEN["results"][name]
