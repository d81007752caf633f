"""fastbp's training features on scikit-learn's digits, each one checked by an assert:
validation + early stopping, ReduceOnPlateau, dropout, gradient warnings, save/load with
exact resumption, gradient checkpointing, batch normalization, progress bar and
learning-curve plot.

    python examples/features.py            # about half a minute
    python examples/features.py --quick    # a few seconds (CI)
    python examples/features.py --plot curves.png
"""

import argparse
import os
import tempfile
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastbp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, smaller nets (CI)")
    parser.add_argument("--plot", default=None, help="write the learning curves to this PNG")
    args = parser.parse_args(argv)
    epochs = 12 if args.quick else 60
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)

    # 1. validation split, early stopping (best epoch restored), adaptive learning rate, dropout
    net = fastbp.MLP([64, 128, 64, 10], activation="relu", dropout=[0.2, 0.1], seed=0)
    plateau = fastbp.ReduceOnPlateau(factor=0.2, patience=2, monitor="val_loss")
    hist = net.fit(Xtr, ytr, optimizer=fastbp.Adam(2e-3), epochs=epochs, batch_size=32,
                   validation_split=0.15, early_stopping=5, callbacks=[plateau], verbose=1)
    accuracy = net.evaluate(Xte, yte)["accuracy"]
    best = hist.best_epoch
    print(f"[fit] {hist.epochs} epochs (stopped early: {hist.stopped_early}), best epoch {best + 1}: "
          f"val_loss {hist.val_loss[best]:.4f}; "
          f"learning rates {sorted({float(format(lr, '.3g')) for lr in hist.lr}, reverse=True)}; "
          f"held-out accuracy {accuracy:.4f}")
    assert len(hist.val_loss) == hist.epochs and hist.val_loss[best] == min(hist.val_loss)
    assert accuracy >= (0.90 if args.quick else 0.95), accuracy
    assert all(b <= a for a, b in zip(hist.lr, hist.lr[1:]))  # the plateau callback only lowers it

    # 2. save / load: 3 epochs + save + load + 3 warm-started epochs == 6 straight (shuffled)
    kwargs = dict(optimizer=fastbp.Adam(1e-3), batch_size=64, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits.npz")
        first = fastbp.MLP([64, 32, 10], seed=1, dropout=0.1)
        first.fit(Xtr, ytr, epochs=3, **kwargs)
        first.save(path)
        resumed = fastbp.MLP.load(path)
        resumed.fit(Xtr, ytr, epochs=3, warm_start=True, **kwargs)
        straight = fastbp.MLP([64, 32, 10], seed=1, dropout=0.1)
        straight.fit(Xtr, ytr, epochs=6, **kwargs)
        assert np.array_equal(resumed.theta, straight.theta)
        print(f"[save/load] {os.path.getsize(path):,} bytes; 3 + load + 3 epochs == 6 straight: bitwise")

    # 3. gradient checkpointing: same parameters bit for bit
    deep = [64] + [48] * (4 if args.quick else 8) + [10]
    plain, ckpt = fastbp.MLP(deep, seed=2), fastbp.MLP(deep, seed=2)
    plain.fit(Xtr, ytr, epochs=2, batch_size=128)
    ckpt.fit(Xtr, ytr, epochs=2, batch_size=128, checkpoint=True)
    assert np.array_equal(plain.theta, ckpt.theta)
    print(f"[checkpoint] {len(deep) - 1} layers, checkpoint=True: identical parameters")

    # 4. gradient warnings: a deep sigmoid net with small weights starves its first layers
    starved = fastbp.MLP([64] + [32] * 10 + [10], activation="sigmoid", init="xavier", seed=3)
    for W in starved.weights:
        W *= 0.3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        starved.fit(Xtr, ytr, epochs=1, optimizer="sgd")
    messages = [str(w.message) for w in caught if issubclass(w.category, fastbp.GradientWarning)]
    assert messages and messages[0].startswith("vanishing gradient in layer 1 "), messages
    print(f"[gradients] {len(messages)} GradientWarnings, first: {messages[0]}")

    # 5. batch normalization: batch statistics in training, running statistics at inference
    bn = fastbp.MLP([64, 64, 32, 10], batchnorm=True, seed=4)
    bn.fit(Xtr, ytr, epochs=4 if args.quick else 15, batch_size=32)
    bn_accuracy = bn.evaluate(Xte, yte)["accuracy"]
    one_by_one = np.vstack([bn.predict_proba(Xte[i:i + 1]) for i in range(5)])
    assert np.allclose(one_by_one, bn.predict_proba(Xte[:5]), atol=1e-5)  # no batch dependence
    assert bn_accuracy >= (0.90 if args.quick else 0.95), bn_accuracy
    # tol 1e-5, not 1e-6: on a trained net some gradients are ~1e-6, where the loss's
    # rounding (~1e-16 / eps) alone gives relative errors of ~1e-6
    assert fastbp.gradcheck(bn, Xtr[:16], ytr[:16], n_samples=200, tol=1e-5).passed
    print(f"[batchnorm] held-out accuracy {bn_accuracy:.4f}; gradcheck (batch statistics) passed")

    # 6. learning curves
    if args.plot:
        hist.plot(args.plot, title="fastbp on digits: dropout, ReduceOnPlateau, early stopping")
        print(f"[plot] learning curves written to {args.plot}")
    print("all feature checks passed")


if __name__ == "__main__":
    main()
