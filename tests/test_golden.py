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

RECORDS = {path.name: json.loads(path.read_text()) for path in record.records()}
CONFIGS = record.configurations()
pytestmark = pytest.mark.filterwarnings("ignore:training diverged:RuntimeWarning")


@pytest.fixture(scope="module")
def golden():
    """The record taken with this machine's BLAS (skip where there is none)."""
    here = record.platform()["blas"]
    for recorded in RECORDS.values():
        if recorded["platform"]["blas"] == here:
            return recorded
    pytest.skip(f"no record for this BLAS ({here}; recorded: {[r['platform']['blas'] for r in RECORDS.values()]}): "
                "bitwise results are not comparable; add one with python tests/golden/record.py at the "
                "commit the others were recorded at")


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_record_names_only_configurations(name):
    assert set(RECORDS[name]["results"]) <= set(CONFIGS)


def test_some_record_covers_grid():
    """A deliberate change of results re-records its entries on one machine and drops
    them from the records of other BLAS builds (``dropped``), which cannot be re-taken here."""
    assert any(set(r["results"]) == set(CONFIGS) for r in RECORDS.values())


def refused_now(config):
    """Configurations the recorded code trained that fit now refuses on purpose: batch
    normalization over single rows (x̂ = 0; refused since the hardening of issue 11)."""
    return bool(config.get("batchnorm")) and config["batch_size"] == 1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bitwise_equal_to_record(name, golden):
    if name not in golden["results"]:
        pytest.skip("dropped from this BLAS build's record by a deliberate change of results")
    if refused_now(CONFIGS[name]):
        with pytest.raises(ValueError, match="batchnorm needs batches of at least 2 rows"):
            record.train(CONFIGS[name])
        return
    assert record.train(CONFIGS[name]) == golden["results"][name]
