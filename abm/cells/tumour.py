"""Tumour cells: columns and rules.

Rules (each switchable through ``tumour.rules``):

``oxygen_uptake``
    A voxel holding a live tumour cell takes up O2 at first order, ``U c`` (applied implicitly by the field).
``proliferation``
    A cell divides with probability ``1 - exp(-r(pO2) dt)``, ``r`` rising linearly from 0 at the proliferation
    threshold to the maximal rate at saturation. The daughter takes a random free Moore neighbour; two cells
    wanting one voxel are resolved by random priority. A cell with no free neighbour is quiescent.
``apoptosis``
    Background death at a constant rate; the voxel is freed.
``necrosis``
    Death under sustained hypoxia, rate rising linearly from 0 at the onset pO2 to the maximum at the maximal
    pO2; the voxel is marked necrotic.
``necrotic_clearance``
    A necrotic voxel is cleared and freed at a constant rate.
"""

from __future__ import annotations

import numpy as np

from abm.agents import Column
from abm.rules import rule
from kernels.lattice import neighbours

__all__ = ["COLUMNS", "DEATH_APOPTOSIS", "DEATH_NECROSIS", "RULES"]

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel the cell occupies"),
    "generation": Column("int32", "divisions", "divisions since the seeded ancestor"),
    "quiescent": Column("bool", "flag", "no free neighbour voxel at the last step (contact-inhibited)"),
}

DEATH_APOPTOSIS = 1
DEATH_NECROSIS = 2


def _ramp(x, x0, x1, xp):
    """Linear ramp from 0 at ``x0`` to 1 at ``x1`` (either direction), clipped to [0, 1]."""
    return xp.clip((x - x0) / (x1 - x0), 0.0, 1.0)


def _probability(rate_per_min, dt_min, xp):
    return 1.0 - xp.exp(-rate_per_min * dt_min)


@rule("oxygen_uptake", "exchange")
def oxygen_uptake(sim, rng) -> None:
    """Record first-order O2 uptake in every voxel holding a live tumour cell."""
    field = sim.fields["oxygen"]
    field.sink.reshape(-1)[sim.tumour["voxel"]] += sim.config.tumour.oxygen_uptake_per_min


@rule("proliferation", "behaviour")
def proliferation(sim, rng) -> None:
    """Record division intents: oxygen-dependent rate, daughter into a random free Moore neighbour."""
    xp, p = sim.xp, sim.config.tumour
    cells = sim.tumour
    n = len(cells)
    if n == 0:
        return
    o2 = sim.fields["oxygen"].data.reshape(-1)[cells["voxel"]]
    rate = p.proliferation_rate_per_min * _ramp(
        o2, p.proliferation_o2_threshold_mmHg, p.proliferation_o2_saturation_mmHg, xp
    )
    wants = rng.random(n) < _probability(rate, sim.dt_min, xp)
    flat, inside = neighbours(cells["voxel"], sim.shape, sim.offsets)
    free = inside & (sim.tissue.reshape(-1)[flat] == sim.FREE)
    has_space = free.any(axis=1)
    cells["quiescent"] = ~has_space
    parents = xp.nonzero(wants & has_space)[0]
    if parents.shape[0] == 0:
        return
    score = xp.where(free[parents], rng.random(free[parents].shape), -1.0)
    choice = xp.argmax(score, axis=1)
    targets = flat[parents, choice]
    sim.intents.divide("tumour", parents, targets)


@rule("apoptosis", "behaviour")
def apoptosis(sim, rng) -> None:
    """Record background apoptosis at a constant rate."""
    n = len(sim.tumour)
    if n == 0:
        return
    prob = float(_probability(sim.config.tumour.apoptosis_rate_per_min, sim.dt_min, np))
    sim.intents.kill("tumour", rng.random(n) < prob, DEATH_APOPTOSIS)


@rule("necrosis", "behaviour")
def necrosis(sim, rng) -> None:
    """Record necrotic death under hypoxia (PhysiCell's linear ramp between onset and maximal pO2)."""
    xp, p = sim.xp, sim.config.tumour
    n = len(sim.tumour)
    if n == 0:
        return
    o2 = sim.fields["oxygen"].data.reshape(-1)[sim.tumour["voxel"]]
    rate = p.necrosis_rate_per_min * _ramp(o2, p.necrosis_onset_mmHg, p.necrosis_max_mmHg, xp)
    sim.intents.kill("tumour", rng.random(n) < _probability(rate, sim.dt_min, xp), DEATH_NECROSIS)


@rule("necrotic_clearance", "behaviour")
def necrotic_clearance(sim, rng) -> None:
    """Record which necrotic voxels are cleared (freed) this step."""
    xp = sim.xp
    necrotic = xp.nonzero(sim.necrotic.reshape(-1))[0]
    if necrotic.shape[0] == 0:
        return
    prob = float(_probability(sim.config.tumour.necrotic_clearance_per_min, sim.dt_min, np))
    sim.intents.clear_necrotic(necrotic[rng.random(necrotic.shape[0]) < prob])


RULES = {r.name: r for r in (oxygen_uptake, proliferation, apoptosis, necrosis, necrotic_clearance)}
