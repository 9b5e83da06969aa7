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
        Arrays (or scalars) to inspect. Scalars and host arrays mean NumPy. Another array type that names its
        namespace (``__array_namespace__``, as the array API standard asks) gets that namespace: the host-sync
        audit's counting arrays (:mod:`abm.sync_audit`) do.

    Returns
    -------
    module
        The array module (``numpy``, ``cupy`` or the arrays' own).
    """
    for a in arrays:
        package = type(a).__module__.split(".", 1)[0]
        if package == "cupy":
            import cupy

            return cupy
        if package not in ("numpy", "builtins") and hasattr(a, "__array_namespace__"):
            return a.__array_namespace__()
    return np
