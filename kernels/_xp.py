"""Array-namespace dispatch shared by the kernels.

The kernels work on NumPy and CuPy arrays alike. They find the namespace from the arrays they are given, so
that CuPy is imported only when a CuPy array actually arrives.
"""

from __future__ import annotations

import numpy as np


def array_namespace(*arrays):
    """Return ``numpy`` or ``cupy``, whichever owns the given arrays.

    Parameters
    ----------
    *arrays : array-like
        Arrays (or scalars) to inspect. Scalars and host arrays mean NumPy.

    Returns
    -------
    module
        The array module (``numpy`` or ``cupy``).
    """
    for a in arrays:
        if type(a).__module__.split(".", 1)[0] == "cupy":
            import cupy

            return cupy
    return np
