"""The fused CUDA training step (``kernels/cuda_fused.py``) against ``fastbp.reference``
and against the per-layer CUDA path, under the simulator with the tiny fused geometry
of conftest (tiles of 4 rows, 8 threads, at most 2 blocks looping over tiles), on
shapes that are not tile multiples; when it is chosen; launches per step.

Runs under ``NUMBA_ENABLE_CUDASIM=1`` (or on a GPU); skipped otherwise.
"""

from dataclasses import replace

import numpy as np
import pytest

import fastbp
from fastbp import reference, spec
from fastbp.cuda_training import _device_parameters
from fastbp.kernels import cuda_config
from fastbp.training import epoch_permutation
from tests.helpers import ReferenceTrainer, assert_close, make_data

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(not fastbp.cuda_available(), reason="no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set"),
]

if fastbp.cuda_available():
    from fastbp.kernels import cuda as kc
    from fastbp.kernels import cuda_fused


def use(monkeypatch, path, **changes):
    """Run the fused step ("always") or the per-layer kernels ("never")."""
    monkeypatch.setattr(cuda_config, "config", replace(cuda_config.config, fused=path, **changes))


def fused_plans(monkeypatch):
    """Record every EpochPlan's choice."""
    chosen = []
    plan_init = kc.EpochPlan.__init__

    def recording(self, *args, **kwargs):
        plan_init(self, *args, **kwargs)
        chosen.append(self.fused)
    monkeypatch.setattr(kc.EpochPlan, "__init__", recording)
    return chosen


def reference_trainer(net):
    """The reference's float64 copy of ``net``."""
    trainer = ReferenceTrainer(net)
    trainer.weights = [W.astype(np.float64) for W in trainer.weights]
    trainer.biases = [b.astype(np.float64) for b in trainer.biases]
    trainer.state = reference.new_optimizer_state([*trainer.weights, *trainer.biases])
    return trainer


# (sizes, hidden, output, loss, optimizer, fit extras, rows, batch): widths and batches
# that are not multiples of the 4-row tile or the 2 × 2 micro-tile; partial last
# batches with fewer tiles than the grid has blocks (a block without a tile zeroes its
# gradient slice); a batch of 9 rows (3 tiles on 2 blocks: a block loops); batches of 1
CASES = [
    ([7, 13, 5], "tanh", "softmax", "cross_entropy", fastbp.Adam(0.01), dict(l2=1e-2, clip_norm=0.5), 13, 5),
    ([7, 13, 6, 3], "relu", "sigmoid", "binary_cross_entropy", fastbp.Momentum(0.05),
     dict(l1=1e-3, clip_value=0.05), 13, 6),
    ([3, 5, 2], "sigmoid", "identity", "mse", fastbp.SGD(0.1), {}, 3, 1),
    ([4, 6, 3], "leaky_relu", "softmax", "mse", fastbp.RMSprop(0.01), dict(l2=1e-3), 11, 9),
]
IDS = [f"{c[1]}-{c[2]}-{c[3]}-{c[4].name}-b{c[7]}" for c in CASES]


@pytest.mark.parametrize("dtype, case", [("float64", c) for c in range(len(CASES))] + [("float32", 0)],
                         ids=[f"float64-{i}" for i in IDS] + [f"float32-{IDS[0]}"])
def test_fused_fit_matches_reference(dtype, case, monkeypatch):
    """Epochs of the fused step (two in the first float64 case, one in the others: the
    simulator is slow) equal the NumPy reference's epochs (same permutations):
    parameters, loss history and accuracy; float64 to 1e-10, float32 to 1e-4."""
    sizes, hidden, output, loss, optimizer, extra, n, batch = CASES[case]
    epochs = 2 if case == 0 and dtype == "float64" else 1
    use(monkeypatch, "always")
    chosen = fused_plans(monkeypatch)
    X, Y = make_data(n, sizes, output, dtype, seed=case)
    y = Y.argmax(1) if output == "softmax" else Y
    net = fastbp.MLP(sizes, activation=hidden, output=output, dtype=dtype, seed=4)
    trainer = reference_trainer(net)
    history = net.fit(X, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch, seed=2, device="cuda",
                      **extra)
    assert chosen == [True]
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    for epoch in range(epochs):
        mean_loss, correct = trainer.epoch(X64, Y64, epoch_permutation(2, epoch, n), batch, loss, optimizer,
                                           optimizer.lr, **extra)
        assert_close(history.loss[epoch], mean_loss, dtype, f"loss of epoch {epoch}")
        if output != "identity":
            assert history.accuracy[epoch] == correct / n
    for l in range(len(sizes) - 1):
        assert_close(net.weights[l], trainer.weights[l], dtype, f"W{l}")
        assert_close(net.biases[l], trainer.biases[l], dtype, f"b{l}")


def test_fused_equals_per_layer_path(monkeypatch):
    """The same fit (float64) on both CUDA paths: equal to rounding (θ, optimizer state,
    loss, per-layer diagnostics)."""
    dtype = "float64"
    sizes, hidden, output, loss, optimizer, extra, _, batch = CASES[0]
    n = 9
    X, Y = make_data(n, sizes, output, dtype, seed=7)
    y = Y.argmax(1)
    nets, histories = [], []
    for path in ("always", "never"):
        use(monkeypatch, path)
        nets.append(fastbp.MLP(sizes, activation=hidden, output=output, dtype=dtype, seed=5))
        histories.append(nets[-1].fit(X, y, loss=loss, optimizer=optimizer, epochs=1, batch_size=batch,
                                      device="cuda", **extra))
    tight = dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(nets[0].theta, nets[1].theta, **tight)
    np.testing.assert_allclose(nets[0].fit_state.state1, nets[1].fit_state.state1, **tight)
    np.testing.assert_allclose(histories[0].loss, histories[1].loss, **tight)
    np.testing.assert_allclose(np.array(histories[0].grad_norm), np.array(histories[1].grad_norm), **tight)
    assert histories[0].accuracy == histories[1].accuracy


def test_automatic_choice(monkeypatch):
    """auto: fused where every width ≤ fused_max_width and a tile fits; per-layer with
    dropout, batch normalization or a wider layer; "always" refuses what it cannot run,
    before training."""
    X, Y = make_data(6, [4, 5, 3], "softmax", "float64")

    def plan(net):   # what a fit builds (no launch)
        params = _device_parameters(net)
        return kc.EpochPlan(kc.kernels("float64"), params, kc.cuda.to_device(X), kc.cuda.to_device(Y), 4,
                            spec.CROSS_ENTROPY, spec.OPT_ADAM, reduce=False, dropout=any(net.dropout))

    use(monkeypatch, "auto")
    assert plan(fastbp.MLP([4, 5, 3], dtype="float64")).fused
    assert not plan(fastbp.MLP([4, 5, 3], dtype="float64", dropout=0.2)).fused
    assert not plan(fastbp.MLP([4, 5, 3], dtype="float64", batchnorm=True)).fused
    use(monkeypatch, "auto", fused_max_width=4)
    assert not plan(fastbp.MLP([4, 5, 3], dtype="float64")).fused
    use(monkeypatch, "never")
    assert not plan(fastbp.MLP([4, 5, 3], dtype="float64")).fused
    use(monkeypatch, "always", fused_max_width=4)
    net = fastbp.MLP([4, 5, 3], dtype="float64")
    before = net.theta.copy()
    with pytest.raises(ValueError, match="width of 5 exceeds fused_max_width=4"):
        net.fit(X, Y.argmax(1), epochs=1, batch_size=4, device="cuda")
    np.testing.assert_array_equal(net.theta, before)
    use(monkeypatch, "always")
    net = fastbp.MLP([4, 5, 3], dtype="float64", batchnorm=True)
    before = net.theta.copy()
    with pytest.raises(ValueError, match="batch normalization runs the per-layer kernels"):
        net.fit(X, Y.argmax(1), epochs=1, batch_size=4, device="cuda")
    np.testing.assert_array_equal(net.theta, before)


def test_tile_rows_respect_the_shared_memory_budget():
    """Rows of a tile (the H100 defaults: ≤ 32 rows, 4 × 4 outputs a thread, 128
    threads): within 48 KiB of Σ widths × rows × itemsize, and filling the threads."""
    cfg = cuda_config.CudaConfig()
    assert cuda_fused.tile_rows([64, 64, 64, 64, 10], "float32", cfg) == 32   # 266 · 4 B · 32 = 34 KB; 128 items
    # 2088 B a row: 23 rows fit; 20 rows are 160 items (2 rounds of 128 threads), 16 are 128
    assert cuda_fused.tile_rows([128, 128, 128, 128, 10], "float32", cfg) == 16
    assert cuda_fused.tile_rows([128, 128, 128, 128, 10], "float64", cfg) == 8   # 11 fit
    assert cuda_fused.tile_rows([5, 7, 3], "float64", cfg) == 32
    for sizes, dtype in (([128] * 5, "float32"), ([100, 128, 128, 3], "float64"), ([128] * 20, "float32")):
        rows = cuda_fused.tile_rows(sizes, dtype, cfg)
        assert rows % cfg.fused_micro == 0
        assert 0 < cuda_fused.shared_bytes(sizes, rows, dtype) <= cuda_config.STATIC_SHARED_LIMIT
    assert "shared memory" in cuda_fused.why_not([128] * 60, "float64", cfg)
    assert "batch normalization" in cuda_fused.why_not([4, 5, 3], "float64", cfg, batchnorm=True)
    assert cuda_fused.tile_rows([128] * 60, "float64", cfg) == 0
    with pytest.raises(ValueError, match="FASTBP_CUDA_FUSED"):
        cuda_config.CudaConfig(fused="sometimes")
    with pytest.raises(ValueError, match="multiple of fused_micro"):
        cuda_config.CudaConfig(fused_rows=30)


def test_free_memory_estimate_counts_the_fused_gradient_slices():
    """fit_bytes (checked against the free memory before a fit allocates) counts one
    gradient slice per fused block: 264 at batch 2^14 with the H100 defaults."""
    sizes, n_params = [128, 128, 128, 128, 10], 3 * 128 * 129 + 129 * 10
    fused = cuda_config.CudaConfig()
    per_layer = replace(fused, fused="never")
    extra = kc.fit_bytes(sizes, 1 << 16, 10, 1 << 14, n_params, "float32", fused) - kc.fit_bytes(
        sizes, 1 << 16, 10, 1 << 14, n_params, "float32", per_layer)
    layer_slices = sum(kc.splits_for(1 << 14, i, o, per_layer) * (i + 1) * o for i, o in zip(sizes[:-1], sizes[1:]))
    assert extra == 4 * (264 * n_params - layer_slices) > 0
    # a batch-normalized net runs the per-layer kernels: no fused slices
    assert kc.fit_bytes(sizes, 1 << 16, 10, 1 << 14, n_params, "float32", fused, batchnorm=True) == kc.fit_bytes(
        sizes, 1 << 16, 10, 1 << 14, n_params, "float32", per_layer, batchnorm=True)


def test_fused_launches_per_training_step(monkeypatch, launch_names):
    """The fused path: 2 launches per step whatever the depth (train_step, update), 3
    with clip_norm / L1 / L2 (+ the norm reduction), against 3L + 2 per layer."""
    calls = launch_names
    use(monkeypatch, "always")
    net = fastbp.MLP([4, 5, 6, 3], activation="relu", dtype="float64")
    X, Y = make_data(5, net.sizes, "softmax", "float64", seed=12)
    for extra, per_step in (({}, 2), (dict(clip_norm=1.0), 3)):
        calls.clear()
        net.fit(X, Y.argmax(1), optimizer=fastbp.Adam(1e-3), epochs=1, batch_size=5, device="cuda", **extra)
        # one batch + the epoch's non-finite checks (θ and the optimizer's two states)
        assert len(calls) == per_step + 3 and calls.count("count_nonfinite") == 3, calls
        assert calls[0] == "train_step" and "forward_layer" not in calls and "gather_batch" not in calls
