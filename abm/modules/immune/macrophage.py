"""Tumour-associated macrophages in the immune layer: M0, M1 and M2 states.

Rules (each switchable through ``immune.macrophage.rules``):

``macrophage_secretion`` (exchange)
    M1 secrete chemokine (x ``1 + Σ b θ`` of the innate agonists bound at the macrophage); M2 secrete TGF-β and
    VEGF.
``macrophage_recruitment`` (behaviour)
    Each vessel voxel recruits an M0 macrophage with rate ``r c/(c + K) perfusion``, times ``1 - θ`` of CSF-1R
    and of CCR2 blockade at the vessel.
``macrophage_polarisation`` (update)
    M0 -> M1 at ``r1 max(IFN-γ/(IFN-γ + K), debris)`` (debris: a necrotic voxel in the Moore neighbourhood; an
    innate agonist's (STING, TLR7/8) weighted occupancy ``w θ`` replaces the IFN-γ term where larger);
    M0/M1 -> M2 at ``r_base + (r_max - r_base) (1 - Hill(pO2; 5 mmHg, 8)) + r_tgfb TGF-β/(TGF-β + K)``
    (PhysiCell rules_sample; the hypoxic part only with ``resistance.hypoxia``); M2 -> M1 at
    ``r1 max(IFN-γ/(IFN-γ + K), max_i w_i θ_i)`` (repolarisation).
``macrophage_kill`` (behaviour)
    An M1 macrophage kills a random tumour cell in its own or a neighbour voxel with ``1 - exp(-k dt)``.
``macrophage_move`` (behaviour)
    Chemokine-biased random walk, slowed by ECM.
``macrophage_death`` (behaviour)
    Death at rate 1/lifespan.
"""

from __future__ import annotations

import numpy as np

from abm.engine.agents import Column
from abm.engine.module import rule
from abm.modules.common import blocked, hill, innate_agonism, innate_chemokine_factor, probability
from abm.modules.immune.common import (
    M0,
    M1,
    M2,
    adjacent_tumour_cell,
    motility_factor,
    record_recruitment,
    record_walk,
)
from kernels.sampling import bernoulli_rows

__all__ = ["COLUMNS", "M0", "M1", "M2", "RULES"]

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel in the immune layer"),
    "state": Column("int8", "-", "polarisation: 0 = M0, 1 = M1, 2 = M2"),
    "age_min": Column("float32", "min", "time since recruitment"),
}


@rule("macrophage_secretion", "exchange", needs=("field:tgfb", "field:vegf"))
def macrophage_secretion(world, params, rng, intents) -> None:
    """Record chemokine (M1), TGF-β and VEGF (M2) secretion."""
    m = world.tables["macrophage"]
    if len(m) == 0:
        return
    p = params.macrophage
    xp = world.xp
    vox, state = m["voxel"], m["state"]
    # Every macrophage adds its amount, 0 outside the secreting state (exact): no mask picks the M1 or M2 cells
    # (a host sync each). Innate agonists induce CXCL9/10; macrophages sharing a voxel share its factor, so the
    # sum stays reproducible.
    m1, m2 = state == M1, state == M2
    factor = innate_chemokine_factor(world, params.effects.innate, vox)
    chemokine = p.m1_chemokine_secretion if factor is None else p.m1_chemokine_secretion * factor
    world.fields["chemokine"].secrete(vox, xp.where(m1, chemokine, 0.0))
    world.fields["tgfb"].secrete(vox, xp.where(m2, p.m2_tgfb_secretion, 0.0))
    world.fields["vegf"].secrete(vox, xp.where(m2, p.m2_vegf_secretion, 0.0))


@rule("macrophage_recruitment", "behaviour")
def macrophage_recruitment(world, params, rng, intents) -> None:
    """Record M0 recruitment at vessel voxels (chemokine dependent)."""
    p = params.macrophage
    vessels = world.indices["vessel_voxels"]
    if vessels.shape[0] == 0 or p.recruitment_per_min == 0:
        return
    c = world.fields["chemokine"].data.reshape(-1)[vessels].astype(np.float64)
    rate = p.recruitment_per_min * c / (c + p.recruitment_chemokine_half_max)
    theta = blocked(world, "csf1r", vessels)  # CSF-1R blockade: fewer monocytes enter
    if theta is not None:
        rate = rate * (1.0 - theta)
    theta = blocked(world, "ccr2", vessels)  # CCR2 blockade: fewer monocytes answer CCL2
    if theta is not None:
        rate = rate * (1.0 - theta)
    record_recruitment(world, intents, "macrophage", rate, rng, "macrophage_recruited", state=M0, age_min=0.0)


@rule("macrophage_polarisation", "update", writes=("macrophage.state",), needs=("field:tgfb", "layer:necrotic"))
def macrophage_polarisation(world, params, rng, intents) -> None:
    """Change polarisation state: M0 -> M1 (IFN-γ, debris), M0/M1 -> M2 (hypoxia, TGF-β), M2 -> M1 (IFN-γ)."""
    xp = world.xp
    p = params.macrophage
    m = world.tables["macrophage"]
    n = len(m)
    if n == 0:
        return
    vox, state = m["voxel"], m["state"]
    ifng = world.fields["ifng"].data.reshape(-1)[vox].astype(np.float64)
    ifn_drive = ifng / (ifng + p.m1_ifng_half_max)
    for strength, theta in innate_agonism(world, params.effects.innate, vox):  # STING, TLR7/8 drive M1 like IFN-γ
        ifn_drive = xp.maximum(ifn_drive, strength.repolarisation * theta)
    necrotic = world.layers["necrotic"].reshape(-1)
    flat, inside = world.moore.neighbours(vox)
    debris = (inside & necrotic.take(flat)).any(axis=0) | necrotic[vox]
    to_m1_rate = p.m1_rate_per_min * xp.where(state == M0, xp.maximum(ifn_drive, debris.astype(np.float64)),
                                              xp.where(state == M2, ifn_drive, 0.0))
    m2_rate = xp.full(n, p.m2_base_rate_per_min, dtype=np.float64)
    if params.resistance.hypoxia:
        o2 = world.fields["oxygen"].data.reshape(-1)[vox].astype(np.float64)
        low_o2 = 1.0 - hill(o2, p.m2_o2_half_max_mmHg, p.m2_o2_hill, xp)
        m2_rate = m2_rate + (p.m2_max_rate_per_min - p.m2_base_rate_per_min) * low_o2
    tgfb = world.fields["tgfb"].data.reshape(-1)[vox].astype(np.float64)
    theta = blocked(world, "tgfb", vox)
    if theta is not None:
        tgfb = tgfb * (1.0 - theta)
    m2_rate = m2_rate + p.m2_tgfb_rate_per_min * tgfb / (tgfb + p.m2_tgfb_half_max)
    theta = blocked(world, "csf1r", vox)  # CSF-1R blockade: less M2 polarisation
    if theta is not None:
        m2_rate = m2_rate * (1.0 - theta)
    m2_rate = xp.where(state == M2, 0.0, m2_rate)
    p1 = probability(to_m1_rate, world.dt_min, xp)
    p2 = probability(m2_rate, world.dt_min, xp)
    u = rng.random(n)
    new = xp.where(u < p1, M1, xp.where(u < p1 + p2 * (1.0 - p1), M2, state))
    m["state"] = new.astype(np.int8)


@rule("macrophage_kill", "behaviour", needs=("table:tumour",))
def macrophage_kill(world, params, rng, intents) -> None:
    """Record kills of neighbouring tumour cells by M1 macrophages."""
    xp = world.xp
    m = world.tables["macrophage"]
    rows = xp.nonzero(m["state"] == M1)[0] if len(m) else xp.zeros(0, dtype=np.int64)
    if rows.shape[0] == 0 or len(world.tables["tumour"]) == 0:
        return
    here = m["voxel"][rows]
    target, engaged = adjacent_tumour_cell(world, here, rng.random(here.shape[0]))
    prob = float(probability(params.macrophage.m1_kill_rate_per_day / 1440.0, world.dt_min, np))
    kill = engaged & (rng.random(rows.shape[0]) < prob)
    intents.kill("tumour", target, "killed_macrophage", where=kill)


@rule("macrophage_move", "behaviour")
def macrophage_move(world, params, rng, intents) -> None:
    """Record chemokine-biased moves, slowed by ECM."""
    p = params.macrophage
    m = world.tables["macrophage"]
    if len(m) == 0:
        return
    record_walk(world, intents, "macrophage", p.speed_um_per_min, p.chemotaxis_sensitivity,
                p.recruitment_chemokine_half_max, rng, params.capacity, motility_factor(world, params, m["voxel"]))


@rule("macrophage_death", "behaviour")
def macrophage_death(world, params, rng, intents) -> None:
    """Record deaths at rate 1/lifespan."""
    m = world.tables["macrophage"]
    n = len(m)
    if n == 0:
        return
    prob = float(probability(1.0 / params.macrophage.lifespan_min, world.dt_min, np))
    intents.kill("macrophage", bernoulli_rows(rng, n, prob, world.xp), "lifespan")


RULES = {r.name: r for r in (macrophage_secretion, macrophage_recruitment, macrophage_polarisation,
                             macrophage_kill, macrophage_move, macrophage_death)}
