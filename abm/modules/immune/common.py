"""Shared machinery of the immune layer: movement, recruitment at vessels, target picking, suppressor counts.

Immune cells (T cells, macrophages) live in the ``immune`` capacity layer with ``immune.immune_capacity`` places
per voxel, independent of tissue occupancy, so they can enter a solid tumour nest. Rules record moves and
recruitments as intents; the engine's commit admits them by random priority against the free places.
"""

from __future__ import annotations

import numpy as np

from abm.modules.common import blocked, probability
from kernels.chemotaxis import chemotaxis_weights, pick, sample_choice, sample_uniform

__all__ = ["adjacent_tumour_cell", "counts_near", "motility_factor", "record_recruitment", "record_walk"]

M0, M1, M2 = 0, 1, 2


def motility_factor(world, params, voxels, cxcl12_retention: float = 0.0, cxcl12_half_max: float = 1.0):
    """Factor (0..1) on immune motility at ``voxels``: ECM slows movement; CXCL12 retains T cells.

    Both effects belong to the stromal-exclusion mechanism and vanish when it is switched off.
    """
    xp = world.xp
    if not params.resistance.stromal_exclusion:
        return xp.ones(voxels.shape[0], dtype=np.float64)
    ecm = world.layers["ecm"].reshape(-1)[voxels].astype(np.float64)
    factor = 1.0 - params.ecm.motility_block * ecm
    if cxcl12_retention > 0:
        c = world.fields["cxcl12"].data.reshape(-1)[voxels].astype(np.float64)
        retention = cxcl12_retention * c / (c + cxcl12_half_max)
        theta = blocked(world, "cxcr4", voxels)  # CXCR4 antagonists lift the CXCL12 retention
        if theta is not None:
            retention = retention * (1.0 - theta)
        factor = factor * (1.0 - retention)
    return factor


def record_walk(world, intents, table: str, speed_um_per_min: float, sensitivity: float, half_max: float, rng,
                capacity: int, motility=None, attractant: str = "chemokine") -> None:
    """Record a chemokine-biased random step for the agents of ``table``.

    A cell tries to move with probability ``min(1, speed dt / dx) x motility``; it picks a Moore neighbour with
    room in the immune layer, weighted by :func:`kernels.chemotaxis.chemotaxis_weights` on the ``attractant``
    field (the chemokine unless named; MDSCs follow CCL2).
    """
    xp = world.xp
    agents = world.tables[table]
    n = len(agents)
    if n == 0:
        return
    voxels = agents["voxel"]
    p_move = min(1.0, speed_um_per_min * world.dt_min / world.spacing_um)
    if motility is not None:
        p_move = p_move * motility
    tries = rng.random(n) < p_move
    rows = xp.nonzero(tries)[0]
    if rows.shape[0] == 0:
        return
    here = voxels[rows]
    flat, inside = world.moore.neighbours(here)
    room = world.counts("immune").take(flat) < capacity
    allowed = inside & room
    chem = world.fields[attractant].data.reshape(-1)
    logw = chemotaxis_weights(chem.take(here), chem.take(flat), allowed, sensitivity, half_max)
    choice, possible = sample_choice(logw, rng.random(here.shape[0]))
    keep = xp.flatnonzero(possible)  # one index array for both: one host sync
    intents.move(table, rows.take(keep), pick(flat, choice).take(keep))


def record_recruitment(world, intents, table: str, rate_per_vessel_per_min, rng, readout: str, **columns) -> None:
    """Record recruitment at vessel voxels: each vessel voxel recruits one cell with ``1 - exp(-rate dt)``.

    ``rate_per_vessel_per_min`` is a scalar or an array over the vessel voxels (in the order of
    ``world.indices["vessel_voxels"]``), scaled by the ``perfusion`` factor; ``columns`` give the new cells'
    non-voxel column values (scalars); ``readout`` counts the admitted ones.
    """
    xp = world.xp
    vessels = world.indices["vessel_voxels"]
    if vessels.shape[0] == 0:
        return
    rate = xp.asarray(rate_per_vessel_per_min, dtype=np.float64) * world.factor("perfusion", vessels)
    enter = rng.random(vessels.shape[0]) < probability(rate, world.dt_min, xp)
    intents.recruit(table, vessels, columns, readout, where=enter)


def adjacent_tumour_cell(world, voxels, uniforms):
    """A tumour cell picked uniformly in each of ``voxels`` or its Moore neighbours.

    Returns
    -------
    rows : int array, shape ``(N,)``
        Tumour-table row of the pick (meaningless where ``found`` is false).
    found : bool array, shape ``(N,)``
        Whether any tumour cell was in reach.
    """
    flat, inside = world.moore_and_self.neighbours(voxels)
    tumour_row = world.rows("tumour").take(flat)
    choice, found = sample_uniform(inside & (tumour_row >= 0), uniforms)
    return pick(tumour_row, choice), found


def counts_near(world, kind: str, window, voxels):
    """How many ``kind`` cells (``"m2"``, ``"treg"`` or ``"mdsc"``) have each of ``voxels`` within their ``window``.

    Each suppressor adds its (symmetric) window onto a persistent all-zero count grid; the asking voxels
    gather one value each and the touched entries are zeroed again. Suppressors are few, so the cost follows
    their number, never the lattice size or the number of asking cells. On a GPU every cell of the table adds
    its window, 0 where it is no suppressor (the integer sums are the same): picking the suppressors is a host
    sync there.

    Returns
    -------
    float64 array, shape ``(N,)``
    """
    xp = world.xp
    if kind == "m2":
        m = world.tables["macrophage"]
        vox, member = m["voxel"], m["state"] == M2
    elif kind == "mdsc":
        vox, member = world.tables["mdsc"]["voxel"], None
    else:
        t = world.tables["tcell"]
        vox, member = t["voxel"], t["is_treg"]
    if member is not None and xp is np:
        vox, member = vox[member], None
    if vox.shape[0] == 0:  # none present: common, and saves the scatter
        return xp.zeros(voxels.shape[0], dtype=np.float64)
    flat, inside = window.neighbours(vox)
    adds = inside if member is None else inside & member[None, :]  # outside entries point home and add 0
    return world.scratch_sum(flat.reshape(-1), adds.reshape(-1).astype(np.int32), voxels).astype(np.float64)
