"""T cells: CD8 effectors and regulatory T cells (a T-cell state), in the immune layer.

Rules (each switchable through ``immune.tcell.rules``):

``tcell_secretion`` (exchange)
    An effector engaged with a tumour cell at the last step secretes IFN-γ into its voxel.
``tcell_recruitment`` (behaviour)
    Each vessel voxel recruits an effector with rate ``r priming c/(c + K) perfusion`` (chemokine ``c``), and a
    Treg with rate ``r_treg priming c/(c + K) perfusion`` (stream ``immune/treg_recruitment``).
``tcell_kill`` (behaviour)
    An effector that is not exhausted picks a random tumour cell in its own or a Moore-neighbour voxel and kills
    it with ``p = 1 - exp(-k dt q (1 - s))`` (spQSP), ``q`` the target's antigenicity and ``s`` the combined
    suppression ``1 - prod(1 - s_i)`` of PD-1/PD-L1 engagement, LAG-3/TIM-3, TGF-β, hypoxia, nearby M2
    macrophages, Tregs and MDSCs. The rule keeps the engagement bookkeeping of its own table (``engaged``, ``kills``,
    ``exhaustion``, ``lag3_tim3``): engagement accumulates exhaustion; at exhaustion 1 the cell stops killing.
``tcell_move`` (behaviour)
    Chemokine-biased random walk (see :func:`abm.modules.immune.common.record_walk`), slowed by ECM and CXCL12.
``tcell_death`` (behaviour)
    Death at rate 1/lifespan, and after ``max_kills`` kills.

Adoptively transferred cells (``[cell_therapy.<name>]``, column ``product`` > 0) follow the same rules with their
product's parameters (:func:`product_laws`): a CAR-T cell recognises its target with the product's
``car_recognition`` in place of the target's antigenicity; the product's kill rate, kill limit and death rate
replace the endogenous ones; its ``pd1_sensitivity`` scales the PD-1/PD-L1 suppression and PD-1 exhaustion
signalling. Kills by transferred cells are noted for the immune module's readouts.
"""

from __future__ import annotations

import numpy as np

from abm.engine.agents import Column
from abm.engine.module import rule
from abm.modules.common import blocked, hill, probability
from abm.modules.immune.common import (
    adjacent_tumour_cell,
    counts_near,
    motility_factor,
    record_recruitment,
    record_walk,
)
from kernels.sampling import bernoulli_rows

__all__ = ["COLUMNS", "NEW_CELL", "RULES", "columns", "new_cell", "product_laws", "suppression_components"]

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel in the immune layer"),
    "is_treg": Column("bool", "flag", "regulatory T cell (suppresses effectors; never kills)"),
    "kills": Column("int32", "kills", "tumour cells killed"),
    "exhaustion": Column("float32", "-", "accumulated exhaustion; >= 1 means exhausted (stops killing)"),
    "lag3_tim3": Column("float32", "-", "alternative checkpoint (LAG-3/TIM-3) level, min(exhaustion, 1)"),
    "engaged": Column("bool", "flag", "engaged with a tumour cell at the last step (secretes IFN-γ)"),
    "age_min": Column("float32", "min", "time since recruitment"),
}

NEW_CELL = {"kills": 0, "exhaustion": 0.0, "lag3_tim3": 0.0, "engaged": False, "age_min": 0.0}

#: The column a run with adoptive transfer adds (``[cell_therapy.<name>]``): which product a cell came from.
PRODUCT_COLUMN = Column("int8", "-", "adoptive-transfer product: 0 endogenous, k the k-th [cell_therapy] table")


def columns(products) -> dict:
    """The table's columns: :data:`COLUMNS`, plus ``product`` when there are transferred products."""
    return {**COLUMNS, "product": PRODUCT_COLUMN} if products else dict(COLUMNS)


def new_cell(products, product: int = 0) -> dict:
    """Non-voxel column values of a new effector or Treg (``product`` 0: endogenous)."""
    return {**NEW_CELL, "product": product} if products else dict(NEW_CELL)


def product_laws(xp, products, tcell) -> dict:
    """Per-product parameters indexed by the ``product`` code (row 0: endogenous cells), on the backend.

    Returns
    -------
    dict of str to array, shape ``(1 + len(products),)``
        ``car`` (bool: recognition through the CAR), ``recognition`` (CAR recognition q), ``kill_per_min``,
        ``max_kills``, ``death_per_min`` and ``pd1_sensitivity``.
    """
    rows = [(False, 0.0, tcell.kill_rate_per_day, tcell.max_kills, 1.0 / tcell.lifespan_min, 1.0)]
    for _, c in products:
        rows.append((c.kind == "car_t", c.car_recognition, c.kill_rate_per_day or tcell.kill_rate_per_day,
                     c.max_kills or tcell.max_kills, c.death_per_day / 1440.0, c.pd1_sensitivity))
    car, recognition, kill, max_kills, death, pd1 = zip(*rows)
    return {"car": xp.asarray(car, dtype=bool), "recognition": xp.asarray(recognition, dtype=np.float64),
            "kill_per_min": xp.asarray(kill, dtype=np.float64) / 1440.0,
            "max_kills": xp.asarray(max_kills, dtype=np.int64), "death_per_min": xp.asarray(death, dtype=np.float64),
            "pd1_sensitivity": xp.asarray(pd1, dtype=np.float64)}


def _effectors(world, params):
    t = world.tables["tcell"]
    active = ~t["is_treg"]
    if params.resistance.exhaustion:
        active &= t["exhaustion"] < 1.0
    return active


@rule("tcell_secretion", "exchange")
def tcell_secretion(world, params, rng, intents) -> None:
    """Record IFN-γ secretion of effectors engaged at the last step."""
    t = world.tables["tcell"]
    if len(t) == 0:
        return
    # Every cell adds its amount, 0 where not engaged (exact): no mask picks the engaged ones (a host sync).
    engaged = t["engaged"] & ~t["is_treg"]
    world.fields["ifng"].secrete(t["voxel"], world.xp.where(engaged, params.tcell.ifng_secretion, 0.0))


@rule("tcell_recruitment", "behaviour")
def tcell_recruitment(world, params, rng, intents) -> None:
    """Record effector and Treg recruitment at vessel voxels (priming and chemokine dependent)."""
    p = params.tcell
    vessels = world.indices["vessel_voxels"]
    if vessels.shape[0] == 0:
        return
    c = world.fields["chemokine"].data.reshape(-1)[vessels].astype(np.float64)
    drive = params.priming * c / (c + p.recruitment_chemokine_half_max)
    cols = new_cell(params.products)
    record_recruitment(world, intents, "tcell", p.recruitment_per_min * drive, rng, "tcell_recruited",
                       is_treg=False, **cols)
    if p.treg_recruitment_per_min > 0:
        record_recruitment(world, intents, "tcell", p.treg_recruitment_per_min * drive,
                           world.rng(params.stream("treg_recruitment")), "treg_recruited", is_treg=True, **cols)


def _pd1_axis_free(world, voxels, target_voxels) -> list:
    """Unblocked fractions of the PD-1/PD-L1 axis: ``1 - θ_PD-1`` at ``voxels``, ``1 - θ_PD-L1`` at the targets.

    Only the targets some drug binds are listed (an empty list without checkpoint therapy).
    """
    free = []
    for slug, where in (("pd1", voxels), ("pdl1", target_voxels)):
        theta = blocked(world, slug, where) if where is not None else None
        if theta is not None:
            free.append(1.0 - theta)
    return free


def suppression_components(world, params, voxels, target_pdl1, exhaustion, target_voxels=None, *,
                           pd1_free=None, alt_free=None) -> dict:
    """Each suppression term (0..1) acting on T cells at ``voxels``, honouring the resistance switches.

    Therapy read points: PD-1 occupancy at the T cell and PD-L1 occupancy at the target (``target_voxels``) each
    remove their fraction of the PD-1/PD-L1 term; LAG-3 and TIGIT occupancy remove theirs of the
    alternative-checkpoint term; TGF-β occupancy (ligand traps and receptor inhibitors) removes its fraction of
    the TGF-β signal.

    ``pd1_free`` and ``alt_free`` (from :func:`_pd1_axis_free` and :func:`_alt_checkpoint_free`) may be passed
    by a caller that needs them too; otherwise they are read here.

    Returns
    -------
    dict of str to float64 array, shape ``(N,)``
        ``pd1`` (PD-1/PD-L1 engagement), ``lag3_tim3``, ``tgfb``, ``hypoxia``, ``m2``, ``treg``, ``mdsc`` (0
        without MDSCs).
    """
    xp = world.xp
    p, res = params.tcell, params.resistance
    zero = xp.zeros(voxels.shape[0], dtype=np.float64)
    out = {"pd1": p.pd1_suppression * xp.clip(target_pdl1, 0.0, 1.0)}
    for free in _pd1_axis_free(world, voxels, target_voxels) if pd1_free is None else pd1_free:
        out["pd1"] = out["pd1"] * free
    out["lag3_tim3"] = p.lag3_tim3_suppression * xp.clip(exhaustion, 0.0, 1.0) if res.exhaustion else zero
    free_alt = _alt_checkpoint_free(world, voxels) if alt_free is None else alt_free
    if free_alt is not None and res.exhaustion:
        out["lag3_tim3"] = out["lag3_tim3"] * free_alt
    if res.stromal_exclusion:
        tgfb = world.fields["tgfb"].data.reshape(-1)[voxels].astype(np.float64)
        theta = blocked(world, "tgfb", voxels)
        if theta is not None:
            tgfb = tgfb * (1.0 - theta)
        out["tgfb"] = p.tgfb_suppression * tgfb / (tgfb + p.tgfb_half_max)
    else:
        out["tgfb"] = zero
    if res.hypoxia:
        o2 = world.fields["oxygen"].data.reshape(-1)[voxels].astype(np.float64)
        out["hypoxia"] = p.hypoxia_suppression * (1.0 - hill(o2, p.hypoxia_half_max_mmHg, p.hypoxia_hill, xp))
    else:
        out["hypoxia"] = zero
    if res.suppressive_cells:
        n_m2 = counts_near(world, "m2", params.suppression_window, voxels)
        n_treg = counts_near(world, "treg", params.suppression_window, voxels)
        out["m2"] = 1.0 - (1.0 - p.m2_suppression) ** n_m2
        out["treg"] = 1.0 - (1.0 - p.treg_suppression) ** n_treg
    else:
        out["m2"] = out["treg"] = zero
    out["mdsc"] = _mdsc_suppression(world, params, voxels) if res.suppressive_cells else zero
    return out


def _mdsc_suppression(world, params, voxels):
    """``σ_MDSC min(1, n/K)``, ``n`` the MDSCs in the Moore neighbourhood of ``voxels`` (0 without the table)."""
    if "mdsc" not in world.tables:
        return world.xp.zeros(voxels.shape[0], dtype=np.float64)
    m = params.mdsc
    n = counts_near(world, "mdsc", world.moore_and_self, voxels)
    return m.suppression * world.xp.minimum(1.0, n / m.saturation_count)


def _alt_checkpoint_free(world, voxels):
    """Fraction of the alternative checkpoints (LAG-3, TIGIT) left unblocked at ``voxels``, or ``None``."""
    free = None
    for slug in ("lag3", "tigit"):
        theta = blocked(world, slug, voxels)
        if theta is not None:
            free = (1.0 - theta) if free is None else free * (1.0 - theta)
    return free


@rule("tcell_kill", "behaviour", writes=("tcell.engaged", "tcell.kills", "tcell.exhaustion", "tcell.lag3_tim3"),
      needs=("table:tumour",))
def tcell_kill(world, params, rng, intents) -> None:
    """Record kills by effectors (spQSP kill law) and update engagement, kills and exhaustion."""
    xp, p, res = world.xp, params.tcell, params.resistance
    t = world.tables["tcell"]
    n = len(t)
    if n == 0:
        return
    t["engaged"] = xp.zeros(n, dtype=bool)
    rows = xp.nonzero(_effectors(world, params))[0]
    tum = world.tables["tumour"]
    if rows.shape[0] == 0 or len(tum) == 0:
        return
    here = t["voxel"][rows]
    target, engaged = adjacent_tumour_cell(world, here, rng.random(here.shape[0]))
    picked = xp.flatnonzero(engaged)  # one index array for the three: one host sync
    rows, here, target = rows.take(picked), here.take(picked), target.take(picked)
    if rows.shape[0] == 0:
        return
    pdl1 = tum["pdl1"][target].astype(np.float64)
    if res.suppressive_cells and params.macrophage.m2_pdl1 > 0:
        pdl1 = xp.minimum(1.0, pdl1 + params.macrophage.m2_pdl1 * counts_near(world, "m2", world.moore_and_self, here))
    exhaustion = t["exhaustion"][rows].astype(np.float64)
    pd1_free = _pd1_axis_free(world, here, tum["voxel"][target])
    alt_free = _alt_checkpoint_free(world, here)
    parts = suppression_components(world, params, here, pdl1, exhaustion, pd1_free=pd1_free, alt_free=alt_free)
    q = tum["antigenicity"][target].astype(np.float64)
    kill_per_min = p.kill_rate_per_day / 1440.0
    if params.products:  # transferred cells: CAR recognition, own kill rate and PD-1 sensitivity
        law = params.product_laws
        product = t["product"][rows].astype(np.int64)
        q = xp.where(law["car"][product], law["recognition"][product], q)
        kill_per_min = law["kill_per_min"][product]
        pd1_sensitivity = law["pd1_sensitivity"][product]
        parts["pd1"] = parts["pd1"] * pd1_sensitivity
    keep = xp.ones(rows.shape[0], dtype=np.float64)
    for s in parts.values():
        keep = keep * (1.0 - s)
    p_kill = probability(kill_per_min * q * keep, world.dt_min, xp)
    kill = rng.random(rows.shape[0]) < p_kill
    intents.kill("tumour", target, "killed_tcell", where=kill)
    if params.products:
        intents.note("transferred_kills", (product, kill))

    engaged_all = xp.zeros(n, dtype=bool)
    engaged_all[rows] = True
    t["engaged"] = engaged_all
    kills = t["kills"]
    kills[rows] += kill.astype(kills.dtype)  # rows are distinct
    if res.exhaustion:
        ex = t["exhaustion"]
        signalling = pdl1  # PD-1 signalling; blockade of either side removes its share
        for free in pd1_free:
            signalling = signalling * free
        if params.products:
            signalling = signalling * pd1_sensitivity
        gain = p.exhaustion_per_engagement * (1.0 + signalling)
        if alt_free is not None:  # LAG-3/TIGIT blockade slows exhaustion
            gain = gain * (1.0 - params.effects.alt_checkpoint.exhaustion_relief * (1.0 - alt_free))
        ex[rows] += gain.astype(np.float32)
        t["lag3_tim3"] = xp.minimum(ex, 1.0)


@rule("tcell_move", "behaviour")
def tcell_move(world, params, rng, intents) -> None:
    """Record chemokine-biased moves, slowed by ECM and CXCL12."""
    p = params.tcell
    t = world.tables["tcell"]
    if len(t) == 0:
        return
    motility = motility_factor(world, params, t["voxel"], p.cxcl12_retention, p.cxcl12_half_max)
    record_walk(world, intents, "tcell", p.speed_um_per_min, p.chemotaxis_sensitivity,
                p.recruitment_chemokine_half_max, rng, params.capacity, motility)


@rule("tcell_death", "behaviour")
def tcell_death(world, params, rng, intents) -> None:
    """Record deaths at the end of the lifespan (rate 1/lifespan) and after the maximal number of kills."""
    p = params.tcell
    t = world.tables["tcell"]
    n = len(t)
    if n == 0:
        return
    old = bernoulli_rows(rng, n, float(probability(1.0 / p.lifespan_min, world.dt_min, np)), world.xp)
    if not params.products:
        intents.kill("tcell", old, "lifespan")
        intents.kill("tcell", t["kills"] >= p.max_kills, "kill_limit")
        return
    # Transferred cells die at their product's rate (own stream), endogenous ones at 1/lifespan as before.
    xp, law, product = world.xp, params.product_laws, t["product"].astype(np.int64)
    intents.kill("tcell", old, "lifespan", where=product.take(old) == 0)
    rows = xp.nonzero(product > 0)[0]  # the draws below are one per transferred cell: their number is needed
    if rows.shape[0]:
        rate = law["death_per_min"][product[rows]]
        u = world.rng(params.stream("transferred_death")).random(rows.shape[0])
        intents.kill("tcell", rows, "lifespan", where=u < probability(rate, world.dt_min, xp))
    intents.kill("tcell", t["kills"] >= law["max_kills"][product], "kill_limit")


RULES = {r.name: r for r in (tcell_secretion, tcell_recruitment, tcell_kill, tcell_move, tcell_death)}
