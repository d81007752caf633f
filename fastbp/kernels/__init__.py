"""The compiled core: ``cpu`` (Numba ``@njit``) and ``cuda`` (``@cuda.jit``) kernels.

Compatibility: numba-cuda 0.30 registers an overload for ``numpy.row_stack`` when it
first compiles a kernel, and NumPy 2.5 removed that alias (seen on the GPU machine:
every CUDA compile failed with ``AttributeError: module 'numpy' has no attribute
'row_stack'``). Restoring the alias, the same function as ``numpy.vstack``, before any
kernel is compiled keeps the CUDA backend working there; it changes nothing where the
alias exists.
"""

import numpy as _np

if not hasattr(_np, "row_stack"):  # pragma: no cover - NumPy >= 2.5 only
    _np.row_stack = _np.vstack
