"""Tumour-associated macrophages in the immune layer: M0, M1 and M2 states.

Rules (each switchable through ``immune.macrophage.rules``):

``macrophage_secretion``
    M1 secrete chemokine; M2 secrete TGF-β and VEGF.
``macrophage_recruitment``
    Each vessel voxel recruits an M0 macrophage with rate ``r c/(c + K) perfusion``.
``macrophage_polarisation``
    M0 -> M1 at ``r1 max(IFN-γ/(IFN-γ + K), debris)`` (debris: a necrotic voxel in the Moore neighbourhood);
    M0/M1 -> M2 at ``r_base + (r_max - r_base) (1 - Hill(pO2; 5 mmHg, 8)) + r_tgfb TGF-β/(TGF-β + K)``
    (PhysiCell rules_sample; the hypoxic part only with ``resistance.hypoxia``); M2 -> M1 at
    ``r1 IFN-γ/(IFN-γ + K)`` (repolarisation).
``macrophage_kill``
    An M1 macrophage kills a random tumour cell in its own or a neighbour voxel with ``1 - exp(-k dt)``.
``macrophage_move``
    Chemokine-biased random walk, slowed by ECM.
``macrophage_death``
    Death at rate 1/lifespan.
"""

from __future__ import annotations

import numpy as np

from abm.agents import Column
from abm.cells.immune import hill, motility_factor, probability, record_recruitment, record_walk
from abm.rules import rule
from kernels.sampling import bernoulli_rows

__all__ = ["COLUMNS", "M0", "M1", "M2", "RULES"]

M0, M1, M2 = 0, 1, 2

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel in the immune layer"),
    "state": Column("int8", "-", "polarisation: 0 = M0, 1 = M1, 2 = M2"),
    "age_min": Column("float32", "min", "time since recruitment"),
}

DEATH_LIFESPAN = 1


@rule("macrophage_secretion", "exchange")
def macrophage_secretion(sim, rng) -> None:
    """Record chemokine (M1), TGF-β and VEGF (M2) secretion."""
    m = sim.agents["macrophage"]
    if len(m) == 0:
        return
    p = sim.config.immune.macrophage
    vox, state = m["voxel"], m["state"]
    m1, m2 = vox[state == M1], vox[state == M2]
    sim.fields["chemokine"].secrete(m1, p.m1_chemokine_secretion)
    sim.fields["tgfb"].secrete(m2, p.m2_tgfb_secretion)
    sim.fields["vegf"].secrete(m2, p.m2_vegf_secretion)


@rule("macrophage_recruitment", "behaviour")
def macrophage_recruitment(sim, rng) -> None:
    """Record M0 recruitment at vessel voxels (chemokine dependent)."""
    p = sim.config.immune.macrophage
    if sim.vessel_voxels.shape[0] == 0 or p.recruitment_per_min == 0:
        return
    c = sim.fields["chemokine"].data.reshape(-1)[sim.vessel_voxels].astype(np.float64)
    rate = p.recruitment_per_min * c / (c + sim.config.immune.tcell.recruitment_chemokine_half_max)
    record_recruitment(sim, "macrophage", rate, rng, state=M0, age_min=0.0)


@rule("macrophage_polarisation", "behaviour")
def macrophage_polarisation(sim, rng) -> None:
    """Change polarisation state: M0 -> M1 (IFN-γ, debris), M0/M1 -> M2 (hypoxia, TGF-β), M2 -> M1 (IFN-γ)."""
    xp, cfg = sim.xp, sim.config
    p = cfg.immune.macrophage
    m = sim.agents["macrophage"]
    n = len(m)
    if n == 0:
        return
    vox, state = m["voxel"], m["state"]
    ifng = sim.fields["ifng"].data.reshape(-1)[vox].astype(np.float64)
    ifn_drive = ifng / (ifng + p.m1_ifng_half_max)
    flat, inside = sim.moore.neighbours(vox)
    debris = (inside & sim.necrotic.reshape(-1).take(flat)).any(axis=0) | sim.necrotic.reshape(-1)[vox]
    to_m1_rate = p.m1_rate_per_min * xp.where(state == M0, xp.maximum(ifn_drive, debris.astype(np.float64)),
                                              xp.where(state == M2, ifn_drive, 0.0))
    m2_rate = xp.full(n, p.m2_base_rate_per_min, dtype=np.float64)
    if cfg.resistance.hypoxia:
        o2 = sim.fields["oxygen"].data.reshape(-1)[vox].astype(np.float64)
        low_o2 = 1.0 - hill(o2, p.m2_o2_half_max_mmHg, p.m2_o2_hill, xp)
        m2_rate = m2_rate + (p.m2_max_rate_per_min - p.m2_base_rate_per_min) * low_o2
    tgfb = sim.fields["tgfb"].data.reshape(-1)[vox].astype(np.float64)
    m2_rate = m2_rate + p.m2_tgfb_rate_per_min * tgfb / (tgfb + p.m2_tgfb_half_max)
    m2_rate = xp.where(state == M2, 0.0, m2_rate)
    p1 = probability(to_m1_rate, sim.dt_min, xp)
    p2 = probability(m2_rate, sim.dt_min, xp)
    u = rng.random(n)
    new = xp.where(u < p1, M1, xp.where(u < p1 + p2 * (1.0 - p1), M2, state))
    m["state"] = new.astype(np.int8)


@rule("macrophage_kill", "behaviour")
def macrophage_kill(sim, rng) -> None:
    """Record kills of neighbouring tumour cells by M1 macrophages."""
    xp = sim.xp
    p = sim.config.immune.macrophage
    m = sim.agents["macrophage"]
    rows = xp.nonzero(m["state"] == M1)[0] if len(m) else xp.zeros(0, dtype=np.int64)
    if rows.shape[0] == 0 or len(sim.tumour) == 0:
        return
    here = m["voxel"][rows]
    target, engaged = sim.adjacent_tumour_cell(here, rng.random(here.shape[0]))
    prob = float(probability(p.m1_kill_rate_per_day / 1440.0, sim.dt_min, np))
    kill = engaged & (rng.random(rows.shape[0]) < prob)
    sim.intents.kill("tumour", target[kill], sim.tumour_death_codes["macrophage"])


@rule("macrophage_move", "behaviour")
def macrophage_move(sim, rng) -> None:
    """Record chemokine-biased moves, slowed by ECM."""
    p = sim.config.immune.macrophage
    m = sim.agents["macrophage"]
    if len(m) == 0:
        return
    record_walk(sim, "macrophage", p.speed_um_per_min, sim.config.immune.tcell.chemotaxis_sensitivity,
                sim.config.immune.tcell.recruitment_chemokine_half_max, rng, motility_factor(sim, m["voxel"]))


@rule("macrophage_death", "behaviour")
def macrophage_death(sim, rng) -> None:
    """Record deaths at rate 1/lifespan."""
    m = sim.agents["macrophage"]
    n = len(m)
    if n == 0:
        return
    m["age_min"] = m["age_min"] + np.float32(sim.dt_min)
    prob = float(probability(1.0 / sim.config.immune.macrophage.lifespan_min, sim.dt_min, np))
    sim.intents.kill("macrophage", bernoulli_rows(rng, n, prob, sim.xp), DEATH_LIFESPAN)


RULES = {r.name: r for r in (macrophage_secretion, macrophage_recruitment, macrophage_polarisation,
                             macrophage_kill, macrophage_move, macrophage_death)}
