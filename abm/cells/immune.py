"""Shared machinery of the immune layer: movement, recruitment at vessels and the saturating responses.

Immune cells (T cells, macrophages) live in an immune layer with ``immune.immune_capacity`` places per voxel,
independent of tissue occupancy, so they can enter a solid tumour nest. Rules record moves and recruitments as
intents; :meth:`abm.model.Simulation._commit` admits them by random priority against the free places.
"""

from __future__ import annotations

import numpy as np

from kernels.chemotaxis import chemotaxis_weights, pick, sample_choice

__all__ = ["hill", "motility_factor", "probability", "record_walk", "record_recruitment"]


def hill(x, half_max, n, xp):
    """Hill activation ``x^n / (x^n + K^n)`` for ``x >= 0`` (0 at 0, 1/2 at ``K``)."""
    x = xp.maximum(x, 0.0)
    xn = x**n
    return xn / (xn + float(half_max) ** n)


def probability(rate_per_min, dt_min, xp):
    """Probability of at least one event in ``dt_min`` at ``rate_per_min``: ``1 - exp(-rate dt)``."""
    return 1.0 - xp.exp(-rate_per_min * dt_min)


def motility_factor(sim, voxels, cxcl12_retention: float = 0.0, cxcl12_half_max: float = 1.0):
    """Factor (0..1) on immune motility at ``voxels``: ECM slows movement; CXCL12 retains T cells.

    Both effects belong to the stromal-exclusion mechanism and vanish when it is switched off.
    """
    xp = sim.xp
    if not sim.config.resistance.stromal_exclusion:
        return xp.ones(voxels.shape[0], dtype=np.float64)
    ecm = sim.ecm.reshape(-1)[voxels].astype(np.float64)
    factor = 1.0 - sim.config.immune.ecm.motility_block * ecm
    if cxcl12_retention > 0:
        c = sim.fields["cxcl12"].data.reshape(-1)[voxels].astype(np.float64)
        factor = factor * (1.0 - cxcl12_retention * c / (c + cxcl12_half_max))
    return factor


def record_walk(sim, kind: str, speed_um_per_min: float, sensitivity: float, half_max: float, rng,
                motility=None) -> None:
    """Record a chemokine-biased random step for the agents of table ``kind``.

    A cell tries to move with probability ``min(1, speed dt / dx) x motility``; it picks a Moore neighbour with
    room in the immune layer, weighted by :func:`kernels.chemotaxis.chemotaxis_weights` on the chemokine field.
    """
    xp = sim.xp
    table = sim.agents[kind]
    n = len(table)
    if n == 0:
        return
    voxels = table["voxel"]
    p_move = min(1.0, speed_um_per_min * sim.dt_min / sim.spacing_um)
    if motility is not None:
        p_move = p_move * motility
    tries = rng.random(n) < p_move
    rows = xp.nonzero(tries)[0]
    if rows.shape[0] == 0:
        return
    here = voxels[rows]
    flat, inside = sim.moore.neighbours(here)
    room = sim.immune_occupancy.reshape(-1).take(flat) < sim.config.immune.immune_capacity
    allowed = inside & room
    chem = sim.fields["chemokine"].data.reshape(-1)
    logw = chemotaxis_weights(chem.take(here), chem.take(flat), allowed, sensitivity, half_max)
    choice, possible = sample_choice(logw, rng.random(here.shape[0]))
    rows, targets = rows[possible], pick(flat, choice)[possible]
    sim.intents.move(kind, rows, targets)


def record_recruitment(sim, kind: str, rate_per_vessel_per_min, rng, **columns) -> None:
    """Record recruitment at vessel voxels: each vessel voxel recruits one cell with ``1 - exp(-rate dt)``.

    ``rate_per_vessel_per_min`` is a scalar or an array over the vessel voxels (in the order of
    ``sim.vessel_voxels``); ``columns`` give the new cells' non-voxel column values (scalars).
    """
    xp = sim.xp
    vessels = sim.vessel_voxels
    if vessels.shape[0] == 0:
        return
    rate = xp.asarray(rate_per_vessel_per_min, dtype=np.float64) * sim.vessel_perfusion()
    enter = rng.random(vessels.shape[0]) < probability(rate, sim.dt_min, xp)
    voxels = vessels[enter]
    if voxels.shape[0] == 0:
        return
    sim.intents.recruit(kind, voxels, columns)
