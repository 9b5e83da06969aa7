"""T cells: CD8 effectors and regulatory T cells (a T-cell state), in the immune layer.

Rules (each switchable through ``immune.tcell.rules``):

``tcell_secretion``
    An effector engaged with a tumour cell at the last step secretes IFN-γ into its voxel.
``tcell_recruitment``
    Each vessel voxel recruits an effector with rate ``r priming c/(c + K) perfusion`` (chemokine ``c``), and a
    Treg with rate ``r_treg priming c/(c + K) perfusion``.
``tcell_kill``
    An effector that is not exhausted picks a random tumour cell in its own or a Moore-neighbour voxel and kills
    it with ``p = 1 - exp(-k dt q (1 - s))`` (spQSP), ``q`` the target's antigenicity and ``s`` the combined
    suppression ``1 - prod(1 - s_i)`` of PD-1/PD-L1 engagement, LAG-3/TIM-3, TGF-β, hypoxia, nearby M2
    macrophages and Tregs. Engagement accumulates exhaustion; at exhaustion 1 the cell stops killing.
``tcell_move``
    Chemokine-biased random walk (see :func:`abm.cells.immune.record_walk`), slowed by ECM and CXCL12.
``tcell_death``
    Death at rate 1/lifespan, and after ``max_kills`` kills.
"""

from __future__ import annotations

import numpy as np

from abm.agents import Column
from abm.cells.immune import hill, motility_factor, probability, record_recruitment, record_walk
from abm.rules import rule
from kernels.sampling import bernoulli_rows

__all__ = ["COLUMNS", "DEATH_KILL_LIMIT", "DEATH_LIFESPAN", "RULES", "suppression_components"]

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel in the immune layer"),
    "is_treg": Column("bool", "flag", "regulatory T cell (suppresses effectors; never kills)"),
    "kills": Column("int32", "kills", "tumour cells killed"),
    "exhaustion": Column("float32", "-", "accumulated exhaustion; >= 1 means exhausted (stops killing)"),
    "lag3_tim3": Column("float32", "-", "alternative checkpoint (LAG-3/TIM-3) level, min(exhaustion, 1)"),
    "engaged": Column("bool", "flag", "engaged with a tumour cell at the last step (secretes IFN-γ)"),
    "age_min": Column("float32", "min", "time since recruitment"),
}

DEATH_LIFESPAN = 1
DEATH_KILL_LIMIT = 2

NEW_CELL = {"kills": 0, "exhaustion": 0.0, "lag3_tim3": 0.0, "engaged": False, "age_min": 0.0}


def _effectors(sim):
    t = sim.agents["tcell"]
    active = ~t["is_treg"]
    if sim.config.resistance.exhaustion:
        active &= t["exhaustion"] < 1.0
    return active


@rule("tcell_secretion", "exchange")
def tcell_secretion(sim, rng) -> None:
    """Record IFN-γ secretion of effectors engaged at the last step."""
    t = sim.agents["tcell"]
    if len(t) == 0:
        return
    p = sim.config.immune.tcell
    engaged = t["engaged"] & ~t["is_treg"]
    sim.fields["ifng"].secrete(t["voxel"][engaged], p.ifng_secretion)


@rule("tcell_recruitment", "behaviour")
def tcell_recruitment(sim, rng) -> None:
    """Record effector and Treg recruitment at vessel voxels (priming and chemokine dependent)."""
    p = sim.config.immune.tcell
    if sim.vessel_voxels.shape[0] == 0:
        return
    c = sim.fields["chemokine"].data.reshape(-1)[sim.vessel_voxels].astype(np.float64)
    drive = sim.priming * c / (c + p.recruitment_chemokine_half_max)
    record_recruitment(sim, "tcell", p.recruitment_per_min * drive, rng, is_treg=False, **NEW_CELL)
    if p.treg_recruitment_per_min > 0:
        record_recruitment(sim, "tcell", p.treg_recruitment_per_min * drive, sim.rng("treg_recruitment"),
                           is_treg=True, **NEW_CELL)


def suppression_components(sim, voxels, target_pdl1, exhaustion) -> dict:
    """Each suppression term (0..1) acting on T cells at ``voxels``, honouring the resistance switches.

    Returns
    -------
    dict of str to float64 array, shape ``(N,)``
        ``pd1`` (PD-1/PD-L1 engagement), ``lag3_tim3``, ``tgfb``, ``hypoxia``, ``m2``, ``treg``.
    """
    xp, cfg = sim.xp, sim.config
    p, res = cfg.immune.tcell, cfg.resistance
    zero = xp.zeros(voxels.shape[0], dtype=np.float64)
    out = {"pd1": p.pd1_suppression * xp.clip(target_pdl1, 0.0, 1.0)}
    out["lag3_tim3"] = p.lag3_tim3_suppression * xp.clip(exhaustion, 0.0, 1.0) if res.exhaustion else zero
    if res.stromal_exclusion:
        tgfb = sim.fields["tgfb"].data.reshape(-1)[voxels].astype(np.float64)
        out["tgfb"] = p.tgfb_suppression * tgfb / (tgfb + p.tgfb_half_max)
    else:
        out["tgfb"] = zero
    if res.hypoxia:
        o2 = sim.fields["oxygen"].data.reshape(-1)[voxels].astype(np.float64)
        out["hypoxia"] = p.hypoxia_suppression * (1.0 - hill(o2, p.hypoxia_half_max_mmHg, p.hypoxia_hill, xp))
    else:
        out["hypoxia"] = zero
    if res.suppressive_cells:
        n_m2 = sim.suppressor_counts("m2", voxels)
        n_treg = sim.suppressor_counts("treg", voxels)
        out["m2"] = 1.0 - (1.0 - p.m2_suppression) ** n_m2
        out["treg"] = 1.0 - (1.0 - p.treg_suppression) ** n_treg
    else:
        out["m2"] = out["treg"] = zero
    return out


@rule("tcell_kill", "behaviour")
def tcell_kill(sim, rng) -> None:
    """Record kills by effectors (spQSP kill law) and update engagement, kills and exhaustion."""
    xp, cfg = sim.xp, sim.config
    p = cfg.immune.tcell
    t = sim.agents["tcell"]
    n = len(t)
    if n == 0:
        return
    t["engaged"] = xp.zeros(n, dtype=bool)
    rows = xp.nonzero(_effectors(sim))[0]
    if rows.shape[0] == 0 or len(sim.tumour) == 0:
        return
    here = t["voxel"][rows]
    target, engaged = sim.adjacent_tumour_cell(here, rng.random(here.shape[0]))
    rows, here, target = rows[engaged], here[engaged], target[engaged]
    if rows.shape[0] == 0:
        return
    tum = sim.tumour
    pdl1 = tum["pdl1"][target].astype(np.float64)
    if cfg.resistance.suppressive_cells and cfg.immune.macrophage.m2_pdl1 > 0:
        pdl1 = xp.minimum(1.0, pdl1 + cfg.immune.macrophage.m2_pdl1 * sim.m2_neighbour_counts(here))
    exhaustion = t["exhaustion"][rows].astype(np.float64)
    parts = suppression_components(sim, here, pdl1, exhaustion)
    keep = xp.ones(rows.shape[0], dtype=np.float64)
    for s in parts.values():
        keep = keep * (1.0 - s)
    q = tum["antigenicity"][target].astype(np.float64)
    p_kill = probability(p.kill_rate_per_day / 1440.0 * q * keep, sim.dt_min, xp)
    kill = rng.random(rows.shape[0]) < p_kill
    sim.intents.kill("tumour", target[kill], sim.tumour_death_codes["tcell"])

    engaged_all = xp.zeros(n, dtype=bool)
    engaged_all[rows] = True
    t["engaged"] = engaged_all
    kills = t["kills"]
    kills[rows[kill]] += 1
    if cfg.resistance.exhaustion:
        ex = t["exhaustion"]
        ex[rows] += (p.exhaustion_per_engagement * (1.0 + pdl1)).astype(np.float32)
        t["lag3_tim3"] = xp.minimum(ex, 1.0)


@rule("tcell_move", "behaviour")
def tcell_move(sim, rng) -> None:
    """Record chemokine-biased moves, slowed by ECM and CXCL12."""
    p = sim.config.immune.tcell
    t = sim.agents["tcell"]
    if len(t) == 0:
        return
    motility = motility_factor(sim, t["voxel"], p.cxcl12_retention, p.cxcl12_half_max)
    record_walk(sim, "tcell", p.speed_um_per_min, p.chemotaxis_sensitivity, p.recruitment_chemokine_half_max, rng,
                motility)


@rule("tcell_death", "behaviour")
def tcell_death(sim, rng) -> None:
    """Record deaths at the end of the lifespan (rate 1/lifespan) and after the maximal number of kills."""
    p = sim.config.immune.tcell
    t = sim.agents["tcell"]
    n = len(t)
    if n == 0:
        return
    t["age_min"] = t["age_min"] + np.float32(sim.dt_min)
    old = bernoulli_rows(rng, n, float(probability(1.0 / p.lifespan_min, sim.dt_min, np)), sim.xp)
    sim.intents.kill("tcell", old, DEATH_LIFESPAN)
    sim.intents.kill("tcell", t["kills"] >= p.max_kills, DEATH_KILL_LIMIT)


RULES = {r.name: r for r in (tcell_secretion, tcell_recruitment, tcell_kill, tcell_move, tcell_death)}
RULE_NAMES = tuple(RULES)
