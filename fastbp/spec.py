"""Names and integer codes shared by the reference, the kernels and the API.

Kernels branch on small integers rather than on strings or Python objects; this
module is the single table that maps user-facing names to those integers.
Adding an activation means one entry here, its f and f' in ``reference.py`` and
in each kernel backend (``kernels/cpu.py``, ``kernels/cuda.py``).
"""

# --- activations -----------------------------------------------------------
IDENTITY = 0
SIGMOID = 1
TANH = 2
RELU = 3
LEAKY_RELU = 4
SOFTMAX = 5  # output layer only
EXP = 6  # output layer only (Poisson regression)

ACTIVATIONS = {
    "identity": IDENTITY,
    "linear": IDENTITY,
    "sigmoid": SIGMOID,
    "logistic": SIGMOID,
    "tanh": TANH,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "softmax": SOFTMAX,
    "exp": EXP,
}
HIDDEN_ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")
#: the output activations the compiled kernels implement (and fastbp.MLP accepts)
OUTPUT_ACTIVATIONS = ("identity", "sigmoid", "softmax", "exp")
#: outputs that regress (values, no classes, no accuracy)
REGRESSION_OUTPUTS = ("identity", "exp")
ACTIVATION_NAMES = {IDENTITY: "identity", SIGMOID: "sigmoid", TANH: "tanh",
                    RELU: "relu", LEAKY_RELU: "leaky_relu", SOFTMAX: "softmax", EXP: "exp"}

#: slope of leaky ReLU for z < 0
LEAKY_SLOPE = 0.01

# --- losses ----------------------------------------------------------------
MSE = 0
BINARY_CROSS_ENTROPY = 1
CROSS_ENTROPY = 2
POISSON = 3  # half Poisson deviance, with the exp output

LOSSES = {
    "mse": MSE,
    "squared_error": MSE,
    "binary_cross_entropy": BINARY_CROSS_ENTROPY,
    "bce": BINARY_CROSS_ENTROPY,
    "cross_entropy": CROSS_ENTROPY,
    "categorical_cross_entropy": CROSS_ENTROPY,
    "log_loss": CROSS_ENTROPY,
    "poisson": POISSON,
}
LOSS_NAMES = {MSE: "mse", BINARY_CROSS_ENTROPY: "binary_cross_entropy",
              CROSS_ENTROPY: "cross_entropy", POISSON: "poisson"}

# --- optimizers --------------------------------------------------------------
OPT_SGD = 0
OPT_MOMENTUM = 1
OPT_NESTEROV = 2
OPT_RMSPROP = 3
OPT_ADAM = 4

# Layout of the float64 hyper-parameter vector handed to the update kernels.
# hyper[H_LR] is the learning rate of the current epoch, the rest are fixed.
H_LR = 0
H_MOMENTUM = 1   # momentum / nesterov: mu; rmsprop: rho; adam: beta1
H_BETA2 = 2      # adam: beta2
H_EPS = 3        # rmsprop / adam: epsilon
H_L1 = 4
H_L2 = 5
H_CLIP_NORM = 6  # <= 0: off
H_CLIP_VALUE = 7  # <= 0: off
N_HYPER = 8


def resolve_loss(loss, output):
    """Return the loss code for ``loss`` with output activation ``output``.

    Allowed pairs (anything else raises ``ValueError``):

    * ``mse`` with any output (identity for regression; with softmax or sigmoid
      the full activation Jacobian is used, which is legal but trains slowly);
    * ``cross_entropy`` with softmax, or with sigmoid where it means the
      binary cross-entropy of each output unit;
    * ``binary_cross_entropy`` with sigmoid;
    * ``poisson`` with exp.
    """
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a string, got {type(loss).__name__}")
    key = loss.lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(set(LOSS_NAMES.values()))}")
    code = LOSSES[key]
    if code == CROSS_ENTROPY and output == "sigmoid":
        code = BINARY_CROSS_ENTROPY
    if code == CROSS_ENTROPY and output != "softmax":
        raise ValueError(f"loss {loss!r} needs a softmax (or sigmoid) output layer, not {output!r}")
    if code == BINARY_CROSS_ENTROPY and output != "sigmoid":
        raise ValueError(f"loss {loss!r} needs a sigmoid output layer, not {output!r}")
    if (code == POISSON) != (output == "exp"):
        raise ValueError(f"loss {loss!r} with output {output!r}: the poisson loss goes with the exp "
                         "output, and the exp output with the poisson loss")
    return code

# --- batch normalization ---------------------------------------------------------
#: ε in x̂ = (u − μ)/√(σ² + ε)
BN_EPS = 1e-5
