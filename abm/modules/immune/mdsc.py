"""Myeloid-derived suppressor cells in the immune layer (``immune.mdsc.enabled``).

Rules (each switchable through ``immune.mdsc.rules``):

``mdsc_ccl2_secretion`` (exchange)
    Every tumour cell secretes the CCL2-like attractant at ``s (1 + b h)``, ``h = clip(1 - pO2/p_h, 0, 1)`` the
    hypoxic ramp (1 at anoxia, 0 from the threshold ``p_h`` up). The rule belongs to the MDSCs rather than to the
    tumour module so that the attractant, its secretion and the cells it draws switch on and off together.
``mdsc_recruitment`` (behaviour)
    Each vessel voxel recruits an MDSC with rate
    ``r c/(c + K) perfusion [φ (1 - θ_CCR2) + (1 - φ)(1 - θ_CXCR2)]``: a monocytic share ``φ`` enters through
    CCR2, the granulocytic rest through CXCR2; each blockade removes its occupancy's fraction of its own share.
``mdsc_move`` (behaviour)
    CCL2-biased random walk (:func:`abm.modules.immune.common.record_walk`), slowed by ECM.
``mdsc_death`` (behaviour)
    Death at rate 1/lifespan.

Suppression of effector killing (a term of :func:`abm.modules.immune.tcell.suppression_components`):
``σ_MDSC min(1, n/K)``, ``n`` the MDSCs in the effector's Moore neighbourhood, itself included.
"""

from __future__ import annotations

import numpy as np

from abm.engine.agents import Column
from abm.engine.module import rule
from abm.modules.common import blocked, probability
from abm.modules.immune.common import motility_factor, record_recruitment, record_walk
from kernels.sampling import bernoulli_rows

__all__ = ["COLUMNS", "RULES", "recruitment_free_fraction"]

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel in the immune layer"),
    "age_min": Column("float32", "min", "time since recruitment"),
}


@rule("mdsc_ccl2_secretion", "exchange", needs=("table:tumour", "field:oxygen"))
def mdsc_ccl2_secretion(world, params, rng, intents) -> None:
    """Record CCL2 secretion of tumour cells, raised under hypoxia."""
    xp, p = world.xp, params.mdsc
    cells = world.tables["tumour"]
    if len(cells) == 0 or p.ccl2_secretion == 0:
        return
    vox = cells["voxel"]
    o2 = world.fields["oxygen"].data.reshape(-1).take(vox).astype(np.float64)
    hypoxic = xp.clip(1.0 - o2 / p.ccl2_hypoxia_threshold_mmHg, 0.0, 1.0)
    world.fields["ccl2"].secrete(vox, (p.ccl2_secretion * (1.0 + p.ccl2_hypoxia_boost * hypoxic)).astype(world.dtype))


def recruitment_free_fraction(world, params, vessels):
    """``φ (1 - θ_CCR2) + (1 - φ)(1 - θ_CXCR2)`` at ``vessels`` (float64), or ``None`` when neither is bound."""
    ccr2, cxcr2 = blocked(world, "ccr2", vessels), blocked(world, "cxcr2", vessels)
    if ccr2 is None and cxcr2 is None:
        return None
    phi = params.mdsc.monocytic_fraction
    monocytic = phi * (1.0 - (ccr2 if ccr2 is not None else 0.0))
    return monocytic + (1.0 - phi) * (1.0 - (cxcr2 if cxcr2 is not None else 0.0))


@rule("mdsc_recruitment", "behaviour")
def mdsc_recruitment(world, params, rng, intents) -> None:
    """Record MDSC recruitment at vessel voxels (CCL2 dependent; CCR2 and CXCR2 blockade lower it)."""
    p = params.mdsc
    vessels = world.indices["vessel_voxels"]
    if vessels.shape[0] == 0 or p.recruitment_per_min == 0:
        return
    c = world.fields["ccl2"].data.reshape(-1)[vessels].astype(np.float64)
    rate = p.recruitment_per_min * c / (c + p.ccl2_half_max)
    free = recruitment_free_fraction(world, params, vessels)
    if free is not None:
        rate = rate * free
    record_recruitment(world, intents, "mdsc", rate, rng, "mdsc_recruited", age_min=0.0)


@rule("mdsc_move", "behaviour")
def mdsc_move(world, params, rng, intents) -> None:
    """Record CCL2-biased moves, slowed by ECM."""
    p = params.mdsc
    m = world.tables["mdsc"]
    if len(m) == 0:
        return
    record_walk(world, intents, "mdsc", p.speed_um_per_min, p.chemotaxis_sensitivity, p.ccl2_half_max, rng,
                params.capacity, motility_factor(world, params, m["voxel"]), attractant="ccl2")


@rule("mdsc_death", "behaviour")
def mdsc_death(world, params, rng, intents) -> None:
    """Record deaths at rate 1/lifespan."""
    m = world.tables["mdsc"]
    n = len(m)
    if n == 0:
        return
    prob = float(probability(1.0 / params.mdsc.lifespan_min, world.dt_min, np))
    intents.kill("mdsc", bernoulli_rows(rng, n, prob, world.xp), "lifespan")


RULES = {r.name: r for r in (mdsc_ccl2_secretion, mdsc_recruitment, mdsc_move, mdsc_death)}
