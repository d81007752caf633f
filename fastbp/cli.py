"""The ``fastbp`` command line: ``fastbp train`` (the main job) and ``fastbp bench``."""

import argparse
import os
import sys
import time

import numpy as np


def seconds_since_process_start():
    """Wall time since this process started (Linux /proc; else since this module loaded)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _T_MODULE


_T_MODULE = time.perf_counter()


def _digits(seed):
    from .datasets import load_digits, stratified_split
    X, y = load_digits()
    train, test = stratified_split(y, 0.25, seed)
    X = X / 16.0
    return X[train], X[test], y[train], y[test]


def _reference_samples_per_second(net, X, Y, epochs, batch_size, optimizer, l2, seed):
    """Train a copy of ``net`` with the NumPy reference on the same data, batches and
    shuffles; returns samples/s averaged over the epochs."""
    from . import reference
    weights = [W.copy() for W in net.weights]
    biases = [b.copy() for b in net.biases]
    state = reference.new_optimizer_state([*weights, *biases])
    constants = optimizer.constants()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        reference.train_epoch(weights, biases, net.layer_activations, X, Y, rng.permutation(len(X)),
                              batch_size, "cross_entropy", optimizer.name, state, optimizer.lr, 0.0, l2,
                              momentum=constants["momentum"], beta2=constants["beta2"], eps=constants["eps"])
    return epochs * len(X) / (time.perf_counter() - t0)


def train(args):
    import fastbp
    Xtr, Xte, ytr, yte = _digits(args.seed)
    sizes = [Xtr.shape[1], *args.hidden, 10]
    net = fastbp.MLP(sizes, activation=args.activation, output="softmax", init="he", seed=args.seed,
                     dtype=args.dtype)
    optimizer = fastbp.optimizers.get_optimizer(args.optimizer)
    optimizer = type(optimizer)(args.lr) if args.lr else optimizer
    print(f"fastbp {fastbp.__version__}: training {net.sizes} ({args.activation}, softmax, {args.dtype}) "
          f"on scikit-learn's digits: {len(Xtr)} train / {len(Xte)} held-out samples")
    print(f"optimizer {optimizer}, batch {args.batch_size}, l2 {args.l2}, {args.epochs} epochs\n")
    notice = fastbp.cpu_training.compile_notice()
    if notice:
        print(notice, flush=True)
    first = {}

    def report(net_, epoch, hist):
        if epoch == 0:
            first["seconds"] = seconds_since_process_start()
        print(f"epoch {epoch + 1:>3}/{args.epochs}  loss {hist.loss[-1]:.4f}  "
              f"train acc {hist.accuracy[-1]:.4f}  {hist.samples_per_second[-1]:>12,.0f} samples/s")
        return False

    hist = net.fit(Xtr, ytr, loss="cross_entropy", optimizer=optimizer, epochs=args.epochs,
                   batch_size=args.batch_size, l2=args.l2, callbacks=[report])
    held_out = net.evaluate(Xte, yte)
    # epoch 1 includes JIT compilation (or loading it from the cache): leave it out of the rate
    steady = hist.samples_per_second[1:] or hist.samples_per_second
    fast_rate = len(steady) * len(Xtr) / sum(len(Xtr) / s for s in steady)
    print(f"\nheld-out accuracy {held_out['accuracy']:.4f}  (loss {held_out['loss']:.4f})")
    print(f"time to first trained epoch (process start, imports, JIT or cache load): {first['seconds']:.2f} s")
    print(f"fastbp:          {fast_rate:>12,.0f} samples/s (epochs 2..{args.epochs})")
    if not args.no_reference:
        Y = np.eye(10, dtype=net.dtype)[ytr]
        ref_net = fastbp.MLP(sizes, activation=args.activation, output="softmax", init="he",
                             seed=args.seed, dtype=args.dtype)
        ref_rate = _reference_samples_per_second(ref_net, Xtr.astype(net.dtype), Y, args.epochs,
                                                 args.batch_size, optimizer, args.l2, args.seed)
        print(f"NumPy reference: {ref_rate:>12,.0f} samples/s (same data, batches, optimizer)")
        print(f"speed-up:        {fast_rate / ref_rate:>12.1f}x")
    if args.plot:
        hist.plot(args.plot, title=f"fastbp {net.sizes} on digits")
        print(f"learning curves written to {args.plot}")
    if args.min_accuracy is not None and held_out["accuracy"] < args.min_accuracy:
        print(f"held-out accuracy below --min-accuracy {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="fastbp", description="JIT-compiled backpropagation for MLPs")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train an MLP on scikit-learn's bundled digits and report speed")
    p.add_argument("--hidden", type=int, nargs="+", default=[64], help="hidden layer widths (default: 64)")
    p.add_argument("--activation", default="relu")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's)")
    p.add_argument("--l2", type=float, default=1e-4)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-reference", action="store_true", help="skip timing the NumPy reference")
    p.add_argument("--min-accuracy", type=float, default=None, help="exit 1 below this held-out accuracy")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="write learning curves (loss, accuracy, gradient norms) to this image")
    p.set_defaults(func=train)
    try:
        from . import bench
    except ImportError:  # pragma: no cover - bench module optional during development
        bench = None
    if bench is not None:
        b = sub.add_parser("bench", help="benchmark fastbp against the NumPy reference")
        bench.add_arguments(b)
        b.set_defaults(func=bench.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
