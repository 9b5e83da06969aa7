"""Biased random walk on the lattice: choose each walker's next voxel up a chemoattractant gradient.

Pure kernels on NumPy or CuPy arrays; no model logic.
"""

from __future__ import annotations

import numpy as np

from kernels._xp import array_namespace

__all__ = ["chemotaxis_weights", "sample_choice", "sample_uniform"]


def chemotaxis_weights(c_here, c_nbr, allowed, sensitivity: float, half_max: float):
    """Log-weights of each candidate neighbour for a gradient-biased step.

    The weight of neighbour ``k`` is ``exp(s (c_k - c_here) / (c_here + K))``: relative gradient sensing, so a
    flat field gives equal weights (no drift) and the bias saturates at high concentration.

    Parameters
    ----------
    c_here : float array, shape ``(N,)``
        Attractant at each walker's voxel.
    c_nbr : float array, shape ``(N, K)``
        Attractant at each candidate neighbour.
    allowed : bool array, shape ``(N, K)``
        Candidates the walker may take (inside the lattice, with room).
    sensitivity : float
        ``s`` (dimensionless); 0 gives an unbiased walk.
    half_max : float
        ``K`` (attractant unit), > 0.

    Returns
    -------
    float64 array, shape ``(N, K)``
        Log-weights, ``-inf`` where not allowed.
    """
    xp = array_namespace(c_here, c_nbr)
    rel = (c_nbr.astype(np.float64) - c_here.astype(np.float64)[:, None]) / (
        c_here.astype(np.float64)[:, None] + half_max
    )
    return xp.where(allowed, sensitivity * rel, -xp.inf)


def sample_choice(log_weights, uniforms):
    """Sample one column per row with probability proportional to ``exp(log_weights)`` (Gumbel-max trick).

    Parameters
    ----------
    log_weights : float array, shape ``(N, K)``
        ``-inf`` marks an impossible choice.
    uniforms : float array, shape ``(N, K)``
        Uniform numbers in [0, 1).

    Returns
    -------
    choice : int64 array, shape ``(N,)``
        Chosen column per row.
    possible : bool array, shape ``(N,)``
        False where every choice was impossible (``choice`` is then meaningless).
    """
    xp = array_namespace(log_weights, uniforms)
    gumbel = -xp.log(-xp.log(xp.clip(uniforms, 1e-300, 1.0 - 1e-16)))
    score = log_weights + gumbel
    return xp.argmax(score, axis=1), xp.isfinite(log_weights).any(axis=1)


def sample_uniform(candidates, uniforms):
    """Sample one candidate column per row, all candidates of a row equally likely (inverse CDF).

    Parameters
    ----------
    candidates : bool array, shape ``(N, K)``
    uniforms : float array, shape ``(N,)``
        Uniform numbers in [0, 1), one per row.

    Returns
    -------
    choice : int64 array, shape ``(N,)``
        Chosen column per row.
    possible : bool array, shape ``(N,)``
        False where a row has no candidate (``choice`` is then meaningless).
    """
    xp = array_namespace(candidates, uniforms)
    count = candidates.sum(axis=1)
    k = xp.floor(uniforms * count)  # the k-th candidate (0-based) of the row, k < count
    choice = xp.argmax(xp.cumsum(candidates, axis=1) > k[:, None], axis=1)
    return choice, count > 0
