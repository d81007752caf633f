"""The small-network path (fastbp/kernels/cpu_small.py) against the NumPy reference: the
register-tiled GEMM (float64 tightly, float32 loosely, odd shapes: batch 1, 17, 33,
leftover rows and columns, transposed A), one batch's gradients, whole fits of every
output/loss and of plain Adam next to the BLAS path, bitwise stability across
processes, the choice of path, and the FMA instructions in the assembly."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import cpu_training, reference, spec, threads
from fastbp.kernels import cpu_small
from fastbp.kernels.cpu import python_callable
from fastbp.bench import synthetic
from fastbp.kernels.bundles import Small
from fastbp.network import FitState

from helpers import ReferenceTrainer, assert_close, make_data

# (m, k, n): one element, batch 1, leftover rows (m mod 4) and columns (n mod 16, n < 16,
# n > 16), k of 1, the small config's products
SHAPES = [(1, 1, 1), (1, 17, 33), (33, 17, 5), (17, 33, 9), (3, 10, 7), (5, 1, 40), (32, 64, 128),
          (128, 32, 10)]


#: the tile GEMM, compiled-only in the library, as a function the tests can call
gemm = python_callable(cpu_small.gemm)


def scratch(dtype, longest=300):
    return Small(np.zeros(longest * longest, dtype), np.zeros(cpu_small.TILE_COLS * longest, dtype),
                 np.zeros(cpu_small.TILE_COLS * longest, dtype))


@pytest.mark.parametrize("transposed", [False, True], ids=["A", "A.T view"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_matches_numpy(shape, transposed, dtype):
    m, k, n = shape
    rng = np.random.default_rng(m * 100 + n)
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    gemm(np.ascontiguousarray(A.T).T if transposed else A, B, out, scratch(dtype))
    assert_close(out, A.astype(np.float64) @ B.astype(np.float64), dtype)


ACTIVATIONS = ["relu", "tanh", "sigmoid", "leaky_relu", "identity"]
OUTPUT_LOSS = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("identity", "mse")]


def small_engine(net, X, Y, loss, optimizer, batch_size):
    engine = cpu_training.CpuEngine(net, X, Y, FitState(net.n_params, net.dtype),
                                    batch_size=batch_size, optimizer=optimizer, loss_code=spec.LOSSES[loss],
                                    l1=0.0, l2=0.0, clip_norm=0.0, clip_value=0.0)
    engine.small = cpu_training.small_bundle(net, engine.bmax)
    return engine


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output,loss", OUTPUT_LOSS)
@pytest.mark.parametrize("rows", [1, 7, 33])
def test_batch_gradients_match_reference(activation, output, loss, rows, dtype):
    """One batch_pass (forward, loss, backward) of a 17-33-5 network: the gradient in
    opt.grad against reference.gradients."""
    sizes = [17, 33, 5]
    net = fastbp.MLP(sizes, activation=activation, output=output, seed=2, dtype=dtype)
    X, Y = make_data(rows, sizes, output, dtype, seed=rows)
    engine = small_engine(net, X, Y, loss, fastbp.Adam(0.01), rows)
    x, y = engine.work.xb[:rows], engine.work.yb[:rows]
    x[...], y[...] = X, Y
    total, _ = python_callable(cpu_small.batch_pass)(engine.network, engine.optimizer, engine.work, x, y,
                                                     engine.small)
    _, dWs, dbs = reference.gradients(net.weights, net.biases, net.layer_activations, X, Y, loss)
    expected = np.concatenate([np.concatenate([dW.ravel(), db]) for dW, db in zip(dWs, dbs)])
    assert_close(engine.optimizer.grad, expected, dtype, "gradient")
    losses = reference.sample_losses(*[v[-1] for v in reference.forward(net.weights, net.biases,
                                                                        net.layer_activations, X)],
                                     Y, loss, output)
    assert_close(total, losses.sum(), dtype, "loss sum")


@pytest.fixture
def path(request, monkeypatch):
    """Force the small path (``small``) or the BLAS path (``blas``) for every fit."""
    monkeypatch.setattr(cpu_small, "wins", lambda sizes, batch, dtype: request.param == "small")
    return request.param


@pytest.mark.parametrize("path", ["small", "blas"], indirect=True)
@pytest.mark.parametrize("optimizer", [fastbp.Adam(0.01), fastbp.Momentum(0.05), fastbp.RMSprop(0.01)],
                         ids=lambda o: o.name)
@pytest.mark.parametrize("batch_size", [1, 10, None], ids=["sgd", "mini-partial", "full"])
def test_fit_matches_reference(path, optimizer, batch_size):
    """float32 fits (the path's dtype) of 3 epochs on 23 rows, plain Adam (the float32
    step) and the optimizers that go through cpu.update_params."""
    dtype = np.dtype(np.float32)
    sizes = [17, 33, 5]
    net = fastbp.MLP(sizes, activation="tanh", output="softmax", seed=7, dtype=dtype)
    X, Y = make_data(23, sizes, "softmax", dtype, seed=4)
    ref = ReferenceTrainer(net)
    for epoch in range(3):
        ref.epoch(X, Y, np.arange(23), min(batch_size or 23, 23), "cross_entropy", optimizer, optimizer.lr)
    net.fit(X, Y, loss="cross_entropy", optimizer=optimizer, epochs=3, batch_size=batch_size, shuffle=False)
    assert_close(net.theta, ref.flat(), dtype, f"parameters after 3 epochs ({path} path)")


@pytest.mark.parametrize("path", ["small"], indirect=True)
def test_regularised_adam_takes_update_params(path):
    """L2 and clipping on the small path go through cpu.update_params: still the reference."""
    dtype = np.dtype(np.float32)
    sizes = [17, 33, 5]
    net = fastbp.MLP(sizes, activation="relu", output="softmax", seed=11, dtype=dtype)
    X, Y = make_data(37, sizes, "softmax", dtype, seed=5)
    optimizer = fastbp.Adam(0.01)
    ref = ReferenceTrainer(net)
    for epoch in range(2):
        ref.epoch(X, Y, np.arange(37), 8, "cross_entropy", optimizer, optimizer.lr, l2=1e-2, clip_norm=0.5)
    net.fit(X, Y, loss="cross_entropy", optimizer=optimizer, epochs=2, batch_size=8, shuffle=False, l2=1e-2,
            clip_norm=0.5)
    assert_close(net.theta, ref.flat(), dtype, "parameters")


def test_small_and_blas_paths_agree_to_rounding(monkeypatch):
    """The 64-128-10 bench network, one epoch at batch 32 from the same start: the two
    paths' parameters differ by float32 rounding only (or not at all: on an AVX-512
    machine OpenBLAS's float32 kernel summed in the tile's order and gave the same bits)."""
    X, labels = synthetic((64, 128, 10), 256, seed=0)
    thetas, calls = [], []
    driver = cpu_small.train_batches
    monkeypatch.setattr(cpu_small, "train_batches", lambda *args: calls.append(1) or driver(*args))
    for small in (True, False):
        monkeypatch.setattr(cpu_small, "wins", lambda sizes, batch, dtype, small=small: small)
        net = fastbp.MLP([64, 128, 10], activation="relu", output="softmax", seed=0, dtype="float32")
        net.fit(X, labels, optimizer=fastbp.Adam(1e-3), epochs=1, batch_size=32, seed=1)
        thetas.append(net.theta.copy())
        assert bool(calls) == small  # the small fit took the small path, the other did not
        calls.clear()
    np.testing.assert_allclose(thetas[0], thetas[1], rtol=1e-4, atol=1e-5)


def test_path_choice_follows_the_table():
    def wins(sizes, batch, dtype="float32"):
        return cpu_small.wins(sizes, batch, dtype, "haswell")
    assert wins([64, 128, 10], 32)
    assert wins([17, 33, 5], 4)
    assert wins([64, 256, 10], 32)
    assert not wins([17, 33, 5], 1)              # batch 1: BLAS won at every width
    assert not wins([64, 128, 10], 32, "float64")  # the tiles are float32
    assert not wins([784, 256, 10], 1)           # wider than any measured win
    assert not wins([64, 256, 10], 128)          # a tie at 256 × 128: BLAS
    assert not wins([64, 128, 10], 129)          # past the largest measured batch
    assert cpu_small.wins([64, 128, 10], 32, "float32", "zen")
    assert not cpu_small.wins([17, 33, 5], 4, "float32", "skylakex")  # AVX-512 OpenBLAS won everywhere
    assert not cpu_small.wins([17, 33, 5], 4, "float32", "unknown")   # not measured: BLAS


def small_engine_taken(net, X, Y):
    engine = cpu_training.CpuEngine(net, X.astype(net.dtype), Y.astype(net.dtype), FitState(net.n_params, net.dtype),
                                    batch_size=8, optimizer=fastbp.Adam(0.01), loss_code=spec.CROSS_ENTROPY,
                                    l1=0.0, l2=0.0, clip_norm=0.0, clip_value=0.0)
    return engine.small is not None


def test_engine_takes_the_path_from_this_machines_blas(monkeypatch):
    X, Y = make_data(20, [5, 9, 3], "softmax", np.float32)
    monkeypatch.setattr(threads, "kernel_blas_architecture", lambda: "haswell")
    for net, expect in [(fastbp.MLP([5, 9, 3], dtype="float32"), True),
                        (fastbp.MLP([5, 9, 3], dtype="float32", dropout=0.2), False),
                        (fastbp.MLP([5, 9, 3], dtype="float64"), False)]:
        assert small_engine_taken(net, X, Y) == expect
    monkeypatch.setattr(threads, "kernel_blas_architecture", lambda: "skylakex")
    assert not small_engine_taken(fastbp.MLP([5, 9, 3], dtype="float32"), X, Y)
    monkeypatch.undo()
    real = threads.kernel_blas_architecture()  # SciPy's OpenBLAS (a test dependency) names its kernels
    assert isinstance(real, str) and real == real.lower() and real


def test_checkpointing_keeps_the_plain_fits_bits(monkeypatch):
    """A checkpointed fit that the table sends to the small path takes it too (the whole
    activation cache is small), so checkpoint=True still trains the plain fit's bits."""
    monkeypatch.setattr(threads, "kernel_blas_architecture", lambda: "haswell")
    X, Y = make_data(40, [9, 12, 12, 12, 3], "softmax", np.float32, seed=3)
    plain, ckpt = (fastbp.MLP([9, 12, 12, 12, 3], seed=2, dtype="float32") for _ in range(2))
    plain.fit(X, Y, epochs=2, batch_size=16)
    ckpt.fit(X, Y, epochs=2, batch_size=16, checkpoint=True)
    assert cpu_small.wins(plain.sizes, 16, "float32")
    assert np.array_equal(plain.theta, ckpt.theta)
    deep = [64] + [64] * 80 + [10]                       # 128 rows: 5.3 MB of z and a
    assert max(deep) <= cpu_small.FASTER_THAN_BLAS["haswell"][128]  # narrow enough: only the cache refuses it
    assert not cpu_small.wins(deep, 128, "float32")


SCRIPT = """
import json, sys, numpy as np, fastbp
from fastbp.bench import synthetic
notice = fastbp.cpu_training.compile_notice()
X, labels = synthetic((64, 128, 10), 200, seed=0)
net = fastbp.MLP([64, 128, 10], activation="relu", output="softmax", seed=0, dtype="float32")
net.fit(X, labels, optimizer=fastbp.Adam(1e-3), epochs=2, batch_size=32, seed=1)
print(json.dumps({"theta": net.theta.tobytes().hex(), "notice": notice}))
"""


def test_bitwise_stable_across_runs(tmp_path):
    """Two processes on one fresh Numba cache (the first compiles, the second loads): the
    same bits; and the second sees the cache (no "compiling the kernels" notice, as
    ``fastbp train`` prints it) although the small path never compiles ``cpu.train_batches``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [json.loads(subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                                      timeout=900, env=env).stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert runs[0]["theta"] == runs[1]["theta"] and len(runs[0]["theta"]) > 0
    assert runs[0]["notice"] is not None and runs[1]["notice"] is None


def test_tile_is_fma_on_ymm():
    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    if not (features.get("avx2") and features.get("fma")):
        pytest.skip("the host has no AVX2/FMA")
    from numba import njit
    # a fresh, uncached compile (Numba cannot inspect cached code)
    tile = njit(nogil=True, error_model="numpy", boundscheck=False)(cpu_small._tile16.py_func)
    A, B, out = np.ones((4, 64), np.float32), np.ones((64, 16), np.float32), np.zeros((4, 16), np.float32)
    tile(A, B, out, 0, 0)
    assert (out == 64).all()
    asm = tile.inspect_asm(tile.signatures[0])
    packed = re.findall(r"vfmadd\d+ps\s+[^\n]*%ymm", asm)
    assert len(packed) >= 8, "expected the 4x16 tile's eight accumulators as packed FMAs on ymm registers"
    assert not re.findall(r"vfmadd\d+ss", asm), "no scalar FMAs in the tile"


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "row weights"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_softmax_cross_entropy_is_the_two_passes(weighted, dtype):
    """The small path's output layer: bias + softmax + cross-entropy loss and δ in one pass
    per row (each exp once) gives the bits of forward_epilogue then output_delta; and the
    loss is the reference's."""
    from fastbp.kernels import cpu
    rng = np.random.default_rng(2)
    rows, k = 17, 9
    product = (rng.normal(size=(rows, k)) * 4).astype(dtype)
    bias = rng.normal(size=k).astype(dtype)
    Y = np.eye(k, dtype=dtype)[rng.integers(0, k, rows)]
    weights = rng.random(rows) if weighted else None
    z1, a1, delta1 = product.copy(), np.empty_like(product), np.empty_like(product)
    python_callable(cpu.forward_epilogue)(z1, bias, cpu.SOFTMAX, a1)
    loss1 = python_callable(cpu.output_delta)(z1, a1, Y, cpu.SOFTMAX, cpu.CE, 1 / rows, weights, delta1)
    z2, a2, delta2 = product.copy(), np.empty_like(product), np.empty_like(product)
    loss2 = python_callable(cpu.softmax_cross_entropy)(z2, bias, a2, Y, 1 / rows, weights, delta2)
    for first, second in ((z1, z2), (a1, a2), (delta1, delta2), (loss1, loss2)):
        np.testing.assert_array_equal(first, second)
    z = product.astype(np.float64) + bias
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    expected = -(Y * log_p).sum(axis=1) @ (np.ones(rows) if weights is None else weights)
    assert_close(loss2, expected, dtype, "loss")
