"""CpuEngine and CudaEngine implement the written Engine protocol (fastbp/engine.py):
every method it declares, with the same parameters, and every attribute it names."""

import inspect

import pytest

from fastbp import cpu_training, cuda_training, engine

PROTOCOL_METHODS = {name: member for name, member in vars(engine.Engine).items()
                    if inspect.isfunction(member) and (not name.startswith("_") or name == "__init__")}
PROTOCOL_ATTRIBUTES = set(engine.Engine.__annotations__)


def test_protocol_declares_what_the_training_loop_calls():
    assert {"__init__", "train_batches", "validate", "finite", "diagnostics", "save_point", "restore",
            "to_host", "from_host", "finish"} <= set(PROTOCOL_METHODS)
    assert {"bmax", "n_batches", "chunked", "computes_diagnostics"} <= PROTOCOL_ATTRIBUTES


@pytest.mark.parametrize("engine_class", [cpu_training.CpuEngine, cuda_training.CudaEngine])
@pytest.mark.parametrize("name", sorted(PROTOCOL_METHODS))
def test_engine_implements_method(engine_class, name):
    implemented = getattr(engine_class, name, None)
    assert inspect.isfunction(implemented), f"{engine_class.__name__} lacks {name}"
    expected = inspect.signature(PROTOCOL_METHODS[name]).parameters
    actual = inspect.signature(implemented).parameters
    assert list(actual) == list(expected), (engine_class.__name__, name)
    for param in expected.values():  # keyword-only stays keyword-only, defaults stay optional
        assert actual[param.name].kind == param.kind, (engine_class.__name__, name, param.name)
        assert (actual[param.name].default is inspect.Parameter.empty) == \
            (param.default is inspect.Parameter.empty), (engine_class.__name__, name, param.name)


@pytest.mark.parametrize("engine_class", [cpu_training.CpuEngine, cuda_training.CudaEngine])
def test_engine_class_attributes(engine_class):
    for name in ("chunked", "computes_diagnostics"):
        assert isinstance(getattr(engine_class, name, None), bool), (engine_class.__name__, name)
