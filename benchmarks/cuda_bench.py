#!/usr/bin/env python
"""GPU training throughput of fastbp's CUDA kernels against its CPU kernels and PyTorch.

First checks the device result against the reference (a short fit on the GPU equals
the CPU fit from the same seed; the device forward pass equals
``fastbp.reference.forward``) and stops if it does not. Then, for every hidden width
and batch size, trains an MLP [width, width, width, 10] (ReLU, softmax, cross-entropy,
Adam) on random data and reports samples/s of the training epochs (after a warm-up
epoch that compiles the kernels):

    python benchmarks/cuda_bench.py                        # widths 64..1024, batches 2^10..2^16
    python benchmarks/cuda_bench.py --widths 256 --batches 12,14 --no-torch

Needs a CUDA GPU. Under NUMBA_ENABLE_CUDASIM=1 it runs (very slowly) for a smoke test
of the script itself: ``--widths 8 --batches 2,3 --samples 16 --epochs 1``; the
numbers are then meaningless.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fastbp  # noqa: E402
from fastbp import reference  # noqa: E402
from fastbp.layout import weight_views  # noqa: E402


def check_against_reference():
    """A fit on the device must match the CPU fit and the reference forward pass."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((37, 7))
    y = rng.integers(0, 3, 37)
    gpu, cpu = (fastbp.MLP([7, 9, 3], activation="tanh", dtype="float64", seed=1) for _ in range(2))
    kwargs = dict(optimizer=fastbp.Adam(0.01), epochs=2, batch_size=8, clip_norm=1.0, l2=1e-4)
    h_gpu = gpu.fit(X, y, device="cuda", **kwargs)
    h_cpu = cpu.fit(X, y, **kwargs)
    np.testing.assert_allclose(gpu.theta, cpu.theta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h_gpu.loss, h_cpu.loss, rtol=1e-9)
    W, b = weight_views(gpu.theta, gpu.layout)
    expected = reference.forward(list(W), list(b), gpu.layer_activations, X)[1][-1]
    np.testing.assert_allclose(gpu.forward(X, device="cuda"), expected, rtol=1e-9, atol=1e-12)
    print("check: device fit == CPU fit, device forward == reference (float64)")


def data(n, width, classes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, width)).astype(dtype), rng.integers(0, classes, n)


def fastbp_rate(X, y, width, batch, epochs, device, dtype):
    net = fastbp.MLP([width, width, width, 10], activation="relu", dtype=dtype, seed=0)
    kwargs = dict(optimizer=fastbp.Adam(1e-3), batch_size=batch, device=device)
    net.fit(X, y, epochs=1, **kwargs)                     # compile + warm up
    history = net.fit(X, y, epochs=epochs, warm_start=True, **kwargs)
    return float(np.median(history.samples_per_second))


def torch_rate(X, y, width, batch, epochs, dtype):
    import torch
    device = torch.device("cuda")
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                torch.nn.ReLU(), torch.nn.Linear(width, 10)).to(device=device, dtype=tdtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xd = torch.as_tensor(X, device=device)
    yd = torch.as_tensor(y, device=device)
    n = X.shape[0]
    rates = []
    for epoch in range(epochs + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(Xd[idx]), yd[idx]).backward()
            optimizer.step()
        torch.cuda.synchronize()
        if epoch:  # the first epoch warms up
            rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


def main(argv=None):
    parser = argparse.ArgumentParser(description="fastbp CUDA training throughput")
    parser.add_argument("--widths", default="64,128,256,1024")
    parser.add_argument("--batches", default="10,11,12,13,14,15,16", help="log2 of the batch sizes")
    parser.add_argument("--samples", type=int, default=1 << 16, help="training samples per epoch (GPU)")
    parser.add_argument("--cpu-samples", type=int, default=1 << 13, help="samples per epoch on the CPU")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--no-cpu", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)

    if not fastbp.cuda_available():
        sys.exit("no CUDA GPU (and NUMBA_ENABLE_CUDASIM is not set): nothing to benchmark")
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if simulated:
        from fastbp.kernels import cuda_config
        cuda_config.config = cuda_config.CudaConfig(tile=4, micro=2, depth=3, block=8, reduce_blocks=2, bn_columns=2,
                                                    fused_rows=4, fused_micro=2, fused_threads=8, fused_blocks=2)
        print("NUMBA_ENABLE_CUDASIM=1: smoke test of the script only, the rates are meaningless")
    check_against_reference()

    torch_ok = False
    if not args.no_torch and not simulated:
        try:
            import torch
            torch_ok = torch.cuda.is_available()
        except ImportError:
            pass
        if not torch_ok:
            print("PyTorch with CUDA not available: its column is left out")

    widths = [int(w) for w in args.widths.split(",")]
    batches = [1 << int(b) for b in args.batches.split(",")]
    header = ["width", "batch", "fastbp cuda"] + ([] if args.no_cpu else ["fastbp cpu"]) + \
             (["torch cuda"] if torch_ok else []) + ["cuda/cpu"] * (not args.no_cpu)
    print(f"\nsamples/s, MLP [w, w, w, 10] relu/softmax/CE/Adam, {args.dtype}, "
          f"{args.samples} samples/epoch on the GPU, {args.cpu_samples} on the CPU")
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for width in widths:
        X, y = data(max(args.samples, max(batches)), width, 10, args.dtype)
        Xc, yc = X[:args.cpu_samples], y[:args.cpu_samples]
        for batch in batches:
            gpu = fastbp_rate(X, y, width, min(batch, len(X)), args.epochs, "cuda", args.dtype)
            row = [str(width), str(batch), f"{gpu:,.0f}"]
            if not args.no_cpu:
                cpu = fastbp_rate(Xc, yc, width, min(batch, len(Xc)), args.epochs, "cpu", args.dtype)
                row.append(f"{cpu:,.0f}")
            if torch_ok:
                row.append(f"{torch_rate(X, y, width, batch, args.epochs, args.dtype):,.0f}")
            if not args.no_cpu:
                row.append(f"{gpu / cpu:.1f}×")
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
