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
``pdl1_expression``
    PD-L1 relaxes to ``baseline + induced Hill(IFN-γ; 0.11 ng/mL, 1.26)`` with a 0.1-day half-life (spQSP);
    the induced part only with ``resistance.adaptive_pdl1``. Needs the immune layer (a no-op without it).
``secretion``
    Chemokine ``s (1 + boost Hill(IFN-γ)) (1 - loss)``, VEGF scaled by the hypoxic ramp below
    ``hypoxic_threshold_mmHg``, and TGF-β. Needs the immune layer (a no-op without it).

Antigenicity is heritable; with ``resistance.antigen_loss`` a daughter's antigenicity mutates at division
(applied by the schedule's commit, see :func:`mutate_antigenicity`).
"""

from __future__ import annotations

import numpy as np

from abm.agents import Column
from abm.rules import rule
from kernels.chemotaxis import pick, sample_uniform
from kernels.lattice import box_sum
from kernels.sampling import bernoulli_rows, thinned_rows

__all__ = [
    "COLUMNS",
    "DEATH_APOPTOSIS",
    "DEATH_KILLED_MACROPHAGE",
    "DEATH_KILLED_TCELL",
    "DEATH_NECROSIS",
    "RULES",
    "mutate_antigenicity",
]

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel the cell occupies"),
    "generation": Column("int32", "divisions", "divisions since the seeded ancestor"),
    "quiescent": Column("bool", "flag", "no free neighbour voxel at the last step (contact-inhibited)"),
    "antigenicity": Column("float32", "-", "antigen presentation q (0..1), heritable; factor on T-cell killing"),
    "pdl1": Column("float32", "-", "PD-L1 expression (fraction of maximal, 0..1)"),
}

DEATH_APOPTOSIS = 1
DEATH_NECROSIS = 2
DEATH_KILLED_TCELL = 3
DEATH_KILLED_MACROPHAGE = 4


def _ramp(x, x0, x1, xp):
    """Linear ramp from 0 at ``x0`` to 1 at ``x1`` (either direction), clipped to [0, 1]."""
    return xp.clip((x - x0) / (x1 - x0), 0.0, 1.0)


def _probability(rate_per_min, dt_min, xp):
    return 1.0 - xp.exp(-rate_per_min * dt_min)


@rule("oxygen_uptake", "exchange")
def oxygen_uptake(sim, rng) -> None:
    """Record first-order O2 uptake in every voxel holding a live tumour cell."""
    sim.fields["oxygen"].sink += sim.tumour_grid * sim.dtype.type(sim.config.tumour.oxygen_uptake_per_min)


@rule("proliferation", "behaviour")
def proliferation(sim, rng) -> None:
    """Record division intents: oxygen-dependent rate, daughter into a random free Moore neighbour."""
    xp, p = sim.xp, sim.config.tumour
    cells = sim.tumour
    n = len(cells)
    if n == 0:
        return
    vox = cells["voxel"]
    # Free Moore neighbours per voxel from one lattice stencil; neighbour lists only for dividing cells.
    free_grid = sim.tissue == sim.FREE
    free_count = box_sum(free_grid, 1, dtype=np.uint8).reshape(-1)  # a tumour voxel is not free itself
    has_space = free_count[vox] > 0
    cells["quiescent"] = ~has_space
    o2 = sim.fields["oxygen"].data.reshape(-1)

    def divide_probability(rows):
        ramp = _ramp(o2[vox[rows]], p.proliferation_o2_threshold_mmHg, p.proliferation_o2_saturation_mmHg, xp)
        return _probability(p.proliferation_rate_per_min * ramp, sim.dt_min, xp) * has_space[rows]

    p_max = float(_probability(p.proliferation_rate_per_min, sim.dt_min, np))
    parents = thinned_rows(rng, n, p_max, divide_probability, xp)
    if parents.shape[0] == 0:
        return
    flat, inside = sim.moore.neighbours(vox[parents])
    free = inside & (sim.tissue.reshape(-1).take(flat) == sim.FREE)
    choice, _ = sample_uniform(free, rng.random(parents.shape[0]))  # every parent has a free neighbour
    sim.intents.divide("tumour", parents, pick(flat, choice))


@rule("apoptosis", "behaviour")
def apoptosis(sim, rng) -> None:
    """Record background apoptosis at a constant rate."""
    prob = float(_probability(sim.config.tumour.apoptosis_rate_per_min, sim.dt_min, np))
    sim.intents.kill("tumour", bernoulli_rows(rng, len(sim.tumour), prob, sim.xp), DEATH_APOPTOSIS)


@rule("necrosis", "behaviour")
def necrosis(sim, rng) -> None:
    """Record necrotic death under hypoxia (PhysiCell's linear ramp between onset and maximal pO2)."""
    xp, p = sim.xp, sim.config.tumour
    vox = sim.tumour["voxel"]
    o2 = sim.fields["oxygen"].data.reshape(-1)

    def death_probability(rows):
        ramp = _ramp(o2[vox[rows]], p.necrosis_onset_mmHg, p.necrosis_max_mmHg, xp)
        return _probability(p.necrosis_rate_per_min * ramp, sim.dt_min, xp)

    p_max = float(_probability(p.necrosis_rate_per_min, sim.dt_min, np))
    sim.intents.kill("tumour", thinned_rows(rng, len(sim.tumour), p_max, death_probability, xp), DEATH_NECROSIS)


@rule("necrotic_clearance", "behaviour")
def necrotic_clearance(sim, rng) -> None:
    """Record which necrotic voxels are cleared (freed) this step."""
    xp = sim.xp
    necrotic = xp.nonzero(sim.necrotic.reshape(-1))[0]
    if necrotic.shape[0] == 0:
        return
    prob = float(_probability(sim.config.tumour.necrotic_clearance_per_min, sim.dt_min, np))
    sim.intents.clear_necrotic(necrotic[rng.random(necrotic.shape[0]) < prob])


def _ifng_response(sim, voxels):
    """Hill response to IFN-γ at ``voxels`` in the field's precision, computed in place."""
    xp, p = sim.xp, sim.config.tumour
    x = sim.fields["ifng"].data.reshape(-1).take(voxels)
    xp.maximum(x, np.float32(0), out=x)
    xp.power(x, np.float32(p.pdl1_ifng_hill), out=x)
    return xp.divide(x, x + np.float32(p.pdl1_ifng_half_max**p.pdl1_ifng_hill), out=x)


@rule("pdl1_expression", "behaviour")
def pdl1_expression(sim, rng) -> None:
    """Relax PD-L1 toward its baseline plus IFN-γ induction (adaptive resistance), with the PD-L1 half-life."""
    xp, p = sim.xp, sim.config.tumour
    cells = sim.tumour
    if "ifng" not in sim.fields or len(cells) == 0:
        return
    relax = np.float32(1.0 - np.exp(-np.log(2.0) / p.pdl1_half_life_min * sim.dt_min))
    cur = cells["pdl1"]
    if sim.config.resistance.adaptive_pdl1:
        new = _ifng_response(sim, cells["voxel"])  # target = baseline + induced h(IFN-γ), built in place
        new *= np.float32(p.pdl1_ifng_induced)
        new += np.float32(p.pdl1_baseline)
        new -= cur
    else:
        new = np.float32(p.pdl1_baseline) - cur
    new *= relax  # relax toward the target; between values in [0, 1] it stays in [0, 1]
    new += cur
    cells["pdl1"] = xp.clip(new, np.float32(0), np.float32(1), out=new)


@rule("secretion", "exchange")
def secretion(sim, rng) -> None:
    """Record chemokine (IFN-γ-boosted, reduced by chemokine loss), hypoxic VEGF and TGF-β secretion."""
    xp, cfg = sim.xp, sim.config
    p = cfg.tumour
    cells = sim.tumour
    if "chemokine" not in sim.fields or len(cells) == 0:
        return
    vox = cells["voxel"]
    rate = p.chemokine_secretion
    if cfg.resistance.chemokine_loss:
        rate *= 1.0 - cfg.immune.chemokine_loss_fraction
    dtype = sim.dtype.type
    chem = _ifng_response(sim, vox)
    chem *= dtype(rate * p.chemokine_ifng_boost)
    chem += dtype(rate)  # rate (1 + boost h(IFN-γ))
    sim.fields["chemokine"].secrete(vox, chem)
    if p.hypoxic_threshold_mmHg > 0:  # a threshold of 0 mmHg: no cell is hypoxic
        # Hypoxic VEGF: rate x ramp(pO2; 1 at 0 mmHg, 0 at the threshold) = clip(rate (1 - pO2/threshold), 0, rate).
        vegf = sim.fields["oxygen"].data.reshape(-1).take(vox)
        vegf *= dtype(-p.vegf_secretion_hypoxic / p.hypoxic_threshold_mmHg)
        vegf += dtype(p.vegf_secretion_hypoxic)
        xp.clip(vegf, dtype(0), dtype(p.vegf_secretion_hypoxic), out=vegf)
        sim.fields["vegf"].secrete(vox, vegf)
    sim.fields["tgfb"].source += sim.tumour_grid * dtype(p.tgfb_secretion)


def mutate_antigenicity(sim, antigenicity, rng):
    """Daughters' antigenicity after division: with ``antigen_mutation_prob`` add ``N(0, step)``, clip to 0..1.

    Parameters
    ----------
    antigenicity : float32 array, shape ``(N,)``
        Inherited values.

    Returns
    -------
    float32 array, shape ``(N,)``
    """
    xp, p = sim.xp, sim.config.tumour
    n = antigenicity.shape[0]
    if not sim.config.resistance.antigen_loss or n == 0 or p.antigen_mutation_prob == 0:
        return antigenicity
    mutates = rng.random(n) < p.antigen_mutation_prob
    delta = rng.normal(n) * p.antigen_mutation_step
    return xp.clip(antigenicity + xp.where(mutates, delta, 0.0), 0.0, 1.0).astype(np.float32)


RULES = {
    r.name: r
    for r in (oxygen_uptake, proliferation, apoptosis, necrosis, necrotic_clearance, pdl1_expression, secretion)
}
