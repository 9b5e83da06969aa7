"""Exact Bernoulli trials over many agents at a cost proportional to the expected number of successes.

A rule that gives each of ``n`` agents a small per-step probability ``p`` of an event (apoptosis, death at the
end of a lifespan, division) would otherwise draw ``n`` uniforms every step to find a handful of successes.
Here the gaps between successes are drawn instead: they are geometric with parameter ``p``, so about ``n p``
numbers are drawn. Per-agent probabilities bounded by ``p_max`` are handled by thinning: candidates are drawn at
``p_max`` and each is kept with probability ``p_i / p_max``, which gives every agent exactly ``p_i``.

Pure kernels on NumPy or CuPy arrays; the random stream is any object with ``random(shape)``
(:class:`abm.backend.StepRandom`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["bernoulli_rows", "thinned_rows"]

_DENSE = 0.05  # above this probability, one uniform per agent is cheaper than drawing gaps


def bernoulli_rows(rng, n: int, p: float, xp):
    """Indices in ``0..n-1`` whose independent Bernoulli(``p``) trial succeeds, in increasing order.

    Parameters
    ----------
    rng : random stream
        Has ``random(shape)`` returning uniforms in [0, 1) on the backend.
    n : int
        Number of trials.
    p : float
        Success probability of each trial, in [0, 1].
    xp : module
        Array module of the result.

    Returns
    -------
    int64 array, shape ``(k,)``
    """
    p = float(p)
    if n <= 0 or p <= 0.0:
        return xp.zeros(0, dtype=np.int64)
    if p >= _DENSE:
        return xp.nonzero(rng.random(n) < p)[0].astype(np.int64, copy=False)
    log_q = math.log1p(-p)
    expected = n * p
    batch = int(expected + 6.0 * math.sqrt(expected) + 16)
    found = []
    last = -1  # index of the last success so far
    while True:
        u = rng.random(batch)
        # Gap to the next success: 1 + floor(log(V) / log(1 - p)), V = 1 - u uniform on (0, 1].
        gaps = xp.floor(xp.log1p(-u) / log_q) + 1.0
        positions = last + xp.cumsum(gaps)
        # Positions increase, so the count below n is where n would be inserted: one host sync per batch, and
        # the batch is large enough that one almost always suffices.
        inside = int(xp.searchsorted(positions, n))
        if inside < batch:
            found.append(positions[:inside])
            break
        found.append(positions)
        last = float(positions[-1])
    rows = found[0] if len(found) == 1 else xp.concatenate(found)
    return rows.astype(np.int64)


def thinned_rows(rng, n: int, p_max: float, probability, xp):
    """Indices whose trial succeeds when agent ``i`` has its own probability ``p_i <= p_max``.

    Parameters
    ----------
    rng : random stream
    n : int
        Number of agents.
    p_max : float
        An upper bound of every ``p_i``.
    probability : callable
        ``probability(rows)`` returns ``p_i`` for the candidate ``rows`` only (so per-agent inputs are read for
        the candidates alone).
    xp : module

    Returns
    -------
    int64 array, shape ``(k,)``
        Successful rows, in increasing order.
    """
    candidates = bernoulli_rows(rng, n, p_max, xp)
    if candidates.shape[0] == 0:
        return candidates
    keep = rng.random(candidates.shape[0]) * p_max < probability(candidates)
    return candidates[keep]
