"""Biased random walk on the lattice: choose each walker's next voxel up a chemoattractant gradient.

Pure kernels on NumPy or CuPy arrays; no model logic.
"""

from __future__ import annotations

import numpy as np

from kernels._xp import array_namespace

__all__ = ["chemotaxis_weights", "pick", "sample_choice", "sample_uniform"]


def chemotaxis_weights(c_here, c_nbr, allowed, sensitivity: float, half_max: float):
    """Log-weights of each candidate neighbour for a gradient-biased step.

    The weight of neighbour ``k`` is ``exp(s (c_k - c_here) / (c_here + K))``: relative gradient sensing, so a
    flat field gives equal weights (no drift) and the bias saturates at high concentration.

    Arrays over a neighbourhood are neighbour-major, ``(K, N)`` (as :class:`kernels.lattice.Stencil` returns
    them): one contiguous row per neighbour, so a reduction over the neighbourhood is K elementwise operations.

    Parameters
    ----------
    c_here : float array, shape ``(N,)``
        Attractant at each walker's voxel.
    c_nbr : float array, shape ``(K, N)``
        Attractant at each candidate neighbour.
    allowed : bool array, shape ``(K, N)``
        Candidates the walker may take (inside the lattice, with room).
    sensitivity : float
        ``s`` (dimensionless); 0 gives an unbiased walk.
    half_max : float
        ``K`` (attractant unit), > 0.

    Returns
    -------
    float array, shape ``(K, N)``
        Log-weights in the attractant's precision (at least float32), ``-inf`` where not allowed.
    """
    xp = array_namespace(c_here, c_nbr)
    dtype = np.result_type(c_here.dtype, c_nbr.dtype, np.float32)
    c_here = c_here.astype(dtype, copy=False)[None, :]
    gain = sensitivity / (c_here + dtype.type(half_max))
    return xp.where(allowed, gain * (c_nbr.astype(dtype, copy=False) - c_here), dtype.type(-np.inf))


def _cumsum_rows(a, xp):
    """Cumulative sum over axis 0 of a short ``(K, N)`` array: K vector adds (NumPy's cumsum is slow here)."""
    out = xp.empty(a.shape, dtype=np.result_type(a.dtype, np.int32) if a.dtype == bool else a.dtype)
    out[0] = a[0]
    for k in range(1, a.shape[0]):
        xp.add(out[k - 1], a[k], out=out[k])
    return out


def sample_choice(log_weights, uniforms):
    """Sample one neighbour per walker with probability proportional to ``exp(log_weights)`` (inverse CDF).

    Parameters
    ----------
    log_weights : float array, shape ``(K, N)``
        Neighbour-major; ``-inf`` marks an impossible choice.
    uniforms : float array, shape ``(N,)``
        Uniform numbers in [0, 1), one per walker.

    Returns
    -------
    choice : int64 array, shape ``(N,)``
        Chosen neighbour (row of ``log_weights``) per walker.
    possible : bool array, shape ``(N,)``
        False where every choice was impossible (``choice`` is then meaningless).
    """
    xp = array_namespace(log_weights, uniforms)
    top = log_weights.max(axis=0)
    possible = top > -xp.inf
    cum = _cumsum_rows(xp.exp(log_weights - xp.where(possible, top, 0)[None, :]), xp)  # largest weight is 1
    total = cum[-1]
    # The threshold stays below the total even when u * total rounds up, so a zero-weight row is never hit;
    # the cumulative weights are non-decreasing, so the choice is the number of them at or below it.
    threshold = xp.minimum(uniforms * total, xp.nextafter(total, xp.zeros_like(total)))
    choice = xp.minimum((cum <= threshold[None, :]).sum(axis=0), log_weights.shape[0] - 1)  # bound when impossible
    return choice, possible


def sample_uniform(candidates, uniforms):
    """Sample one candidate neighbour per walker, all candidates equally likely (inverse CDF).

    Parameters
    ----------
    candidates : bool array, shape ``(K, N)``
        Neighbour-major.
    uniforms : float array, shape ``(N,)``
        Uniform numbers in [0, 1), one per walker.

    Returns
    -------
    choice : int64 array, shape ``(N,)``
        Chosen neighbour (row of ``candidates``) per walker.
    possible : bool array, shape ``(N,)``
        False where a walker has no candidate (``choice`` is then meaningless).
    """
    xp = array_namespace(candidates, uniforms)
    cum = _cumsum_rows(candidates, xp)
    count = cum[-1]
    k = xp.floor(uniforms * count)  # the k-th candidate (0-based), k < count
    choice = xp.minimum((cum <= k[None, :]).sum(axis=0), candidates.shape[0] - 1)  # bound when no candidate
    return choice, count > 0


def pick(a, choice):
    """``a[choice[i], i]`` for each column ``i`` of a neighbour-major ``(K, N)`` array, shape ``(N,)``."""
    xp = array_namespace(a, choice)
    n = a.shape[1]
    # Row-major (K, N): element (choice[i], i) sits at choice[i] * N + i (cheaper than take_along_axis).
    return a.reshape(-1).take(choice * n + xp.arange(n, dtype=choice.dtype))
