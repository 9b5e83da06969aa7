"""Lattice neighbourhoods and vectorised conflict resolution.

Voxels are addressed by their flat (C-order) index into the lattice array. These kernels are pure functions of
their array arguments and work on NumPy and CuPy alike.
"""

from __future__ import annotations

import itertools

import numpy as np

from kernels._xp import array_namespace

__all__ = ["moore_offsets", "neighbours", "resolve_conflicts", "scatter_count"]


def moore_offsets(ndim: int) -> np.ndarray:
    """Coordinate offsets of the Moore neighbourhood (8 in 2-D, 26 in 3-D), shape ``(K, ndim)``, int64."""
    offs = [o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)]
    return np.asarray(offs, dtype=np.int64)


def neighbours(voxels, shape, offsets):
    """Flat indices of each voxel's neighbours and whether they lie inside the lattice.

    Parameters
    ----------
    voxels : int array, shape ``(N,)``
        Flat voxel indices.
    shape : tuple of int
        Lattice shape.
    offsets : int array, shape ``(K, ndim)``
        Coordinate offsets (e.g. :func:`moore_offsets`), on the same backend as ``voxels``.

    Returns
    -------
    flat : int64 array, shape ``(N, K)``
        Flat neighbour indices; entries outside the lattice are clamped to 0 and must be masked.
    inside : bool array, shape ``(N, K)``
        True where the neighbour lies inside the lattice.
    """
    xp = array_namespace(voxels, offsets)
    coords = xp.stack(xp.unravel_index(voxels, shape), axis=1)  # (N, ndim)
    nbr = coords[:, None, :] + offsets[None, :, :]  # (N, K, ndim)
    inside = xp.ones(nbr.shape[:2], dtype=bool)
    flat = xp.zeros(nbr.shape[:2], dtype=np.int64)
    for axis, n in enumerate(shape):
        c = nbr[:, :, axis]
        inside &= (c >= 0) & (c < n)
        flat = flat * n + xp.clip(c, 0, n - 1)
    flat = xp.where(inside, flat, 0)
    return flat, inside


def resolve_conflicts(targets, priority):
    """Pick one winner per target among agents that want the same voxel, by highest priority.

    The outcome depends only on the priorities, not on the order of the arrays, so it is the same whatever
    order agents are stored in.

    Parameters
    ----------
    targets : int array, shape ``(N,)``
        The voxel each candidate wants.
    priority : float array, shape ``(N,)``
        Random priorities; the highest wins each voxel.

    Returns
    -------
    bool array, shape ``(N,)``
        True for each candidate that won its voxel.
    """
    xp = array_namespace(targets, priority)
    won = xp.zeros(targets.shape[0], dtype=bool)
    if targets.shape[0] == 0:
        return won
    order = xp.lexsort(xp.stack([-priority, targets]))  # by target, then descending priority
    sorted_targets = targets[order]
    first = xp.ones(order.shape[0], dtype=bool)
    first[1:] = sorted_targets[1:] != sorted_targets[:-1]
    won[order[first]] = True
    return won


def scatter_count(voxels, size: int, weights=None, dtype=np.float64):
    """Sum ``weights`` (or count ones) per voxel: a dense array of length ``size``.

    A scatter-add that is deterministic and identical on NumPy and CuPy (``bincount``).
    """
    xp = array_namespace(voxels, weights)
    out = xp.bincount(voxels, weights=weights, minlength=size)
    return out.astype(dtype, copy=False)
