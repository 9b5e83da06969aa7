"""Tumour-cell rules (each switchable through ``tumour.rules``).

``oxygen_uptake`` (exchange)
    A voxel holding a live tumour cell takes up O2 at first order, ``U c`` (applied implicitly by the field).
``secretion`` (exchange; needs the immune and stromal fields)
    Chemokine ``s (1 + boost Hill(IFN-γ)) (1 - loss) (1 + Σ b θ)`` (θ: innate-agonist occupancies, STING and
    TLR7/8), VEGF scaled by the hypoxic ramp below
    ``hypoxic_threshold_mmHg``, and TGF-β.
``pdl1_expression`` (update; needs IFN-γ)
    PD-L1 relaxes to ``baseline + induced Hill(IFN-γ; 0.11 ng/mL, 1.26)`` with a 0.1-day half-life (spQSP);
    the induced part only with ``resistance.adaptive_pdl1``.
``proliferation`` (behaviour)
    A cell divides with probability ``1 - exp(-r(pO2) dt)``, ``r`` rising linearly from 0 at the proliferation
    threshold to the maximal rate at saturation. The daughter takes a random free Moore neighbour; two cells
    wanting one voxel are resolved by random priority at the commit. A cell with no free neighbour is quiescent
    (the rule keeps the ``quiescent`` column). A cell infected by an oncolytic virus does not divide.
``apoptosis`` (behaviour)
    Background death at a constant rate; the voxel is freed.
``necrosis`` (behaviour)
    Death under sustained hypoxia, rate rising linearly from 0 at the onset pO2 to the maximum at the maximal
    pO2; the voxel is marked necrotic.
``necrotic_clearance`` (behaviour)
    A necrotic voxel is cleared and freed at a constant rate.

Antigenicity is heritable; with ``resistance.antigen_loss`` a daughter's antigenicity mutates at division
(:func:`on_divide`).
"""

from __future__ import annotations

import numpy as np

from abm.engine.module import rule
from abm.engine.world import FREE
from abm.modules.common import innate_chemokine_factor, probability, ramp
from kernels.chemotaxis import pick, sample_uniform
from kernels.lattice import box_sum
from kernels.sampling import bernoulli_rows, thinned_rows

__all__ = ["RULES", "on_divide"]


def _tumour_grid(world):
    return world.tissue == world.code("tumour")


@rule("oxygen_uptake", "exchange", needs=("field:oxygen",))
def oxygen_uptake(world, params, rng, intents) -> None:
    """Record first-order O2 uptake in every voxel holding a live tumour cell."""
    world.fields["oxygen"].sink += _tumour_grid(world) * world.dtype.type(params.tumour.oxygen_uptake_per_min)


@rule("proliferation", "behaviour", writes=("tumour.quiescent",), needs=("field:oxygen",))
def proliferation(world, params, rng, intents) -> None:
    """Record division intents: oxygen-dependent rate, daughter into a random free Moore neighbour."""
    xp, p = world.xp, params.tumour
    cells = world.tables["tumour"]
    n = len(cells)
    if n == 0:
        return
    vox = cells["voxel"]
    # Free Moore neighbours per voxel from one lattice stencil; neighbour lists only for dividing cells.
    free_grid = world.tissue == FREE
    free_count = box_sum(free_grid, 1, dtype=np.uint8).reshape(-1)  # a tumour voxel is not free itself
    has_space = free_count[vox] > 0
    cells["quiescent"] = ~has_space
    if "infection_min" in cells.schema:  # the virus takes over the host cell: no division once infected
        has_space = has_space & (cells["infection_min"] < 0)
    o2 = world.fields["oxygen"].data.reshape(-1)

    def divide_probability(rows):
        r = ramp(o2[vox[rows]], p.proliferation_o2_threshold_mmHg, p.proliferation_o2_saturation_mmHg, xp)
        return probability(p.proliferation_rate_per_min * r, world.dt_min, xp) * has_space[rows]

    p_max = float(probability(p.proliferation_rate_per_min, world.dt_min, np))
    parents = thinned_rows(rng, n, p_max, divide_probability, xp)
    if parents.shape[0] == 0:
        return
    flat, inside = world.moore.neighbours(vox[parents])
    free = inside & (world.tissue.reshape(-1).take(flat) == FREE)
    choice, _ = sample_uniform(free, rng.random(parents.shape[0]))  # every parent has a free neighbour
    intents.divide("tumour", parents, pick(flat, choice))


@rule("apoptosis", "behaviour")
def apoptosis(world, params, rng, intents) -> None:
    """Record background apoptosis at a constant rate."""
    prob = float(probability(params.tumour.apoptosis_rate_per_min, world.dt_min, np))
    intents.kill("tumour", bernoulli_rows(rng, len(world.tables["tumour"]), prob, world.xp), "apoptosis")


@rule("necrosis", "behaviour", needs=("field:oxygen",))
def necrosis(world, params, rng, intents) -> None:
    """Record necrotic death under hypoxia (PhysiCell's linear ramp between onset and maximal pO2)."""
    xp, p = world.xp, params.tumour
    cells = world.tables["tumour"]
    vox = cells["voxel"]
    o2 = world.fields["oxygen"].data.reshape(-1)

    def death_probability(rows):
        r = ramp(o2[vox[rows]], p.necrosis_onset_mmHg, p.necrosis_max_mmHg, xp)
        return probability(p.necrosis_rate_per_min * r, world.dt_min, xp)

    p_max = float(probability(p.necrosis_rate_per_min, world.dt_min, np))
    intents.kill("tumour", thinned_rows(rng, len(cells), p_max, death_probability, xp), "necrosis")


@rule("necrotic_clearance", "behaviour")
def necrotic_clearance(world, params, rng, intents) -> None:
    """Record which necrotic voxels are cleared (freed) this step."""
    necrotic = world.xp.nonzero(world.layers["necrotic"].reshape(-1))[0]
    if necrotic.shape[0] == 0:
        return
    prob = float(probability(params.tumour.necrotic_clearance_per_min, world.dt_min, np))
    cleared = rng.random(necrotic.shape[0]) < prob
    # Every necrotic voxel is written (the cleared ones False), so no mask picks the cleared ones: a host sync.
    intents.set_layer("necrotic", necrotic, ~cleared)
    intents.note("necrotic_cleared", world.xp.count_nonzero(cleared))


def _ifng_response(world, p, voxels):
    """Hill response to IFN-γ at ``voxels`` in the field's precision, computed in place."""
    xp = world.xp
    x = world.fields["ifng"].data.reshape(-1).take(voxels)
    xp.maximum(x, np.float32(0), out=x)
    xp.power(x, np.float32(p.pdl1_ifng_hill), out=x)
    return xp.divide(x, x + np.float32(p.pdl1_ifng_half_max**p.pdl1_ifng_hill), out=x)


@rule("pdl1_expression", "update", writes=("tumour.pdl1",), needs=("field:ifng",))
def pdl1_expression(world, params, rng, intents) -> None:
    """Relax PD-L1 toward its baseline plus IFN-γ induction (adaptive resistance), with the PD-L1 half-life."""
    xp, p = world.xp, params.tumour
    cells = world.tables["tumour"]
    if len(cells) == 0:
        return
    relax = np.float32(1.0 - np.exp(-np.log(2.0) / p.pdl1_half_life_min * world.dt_min))
    cur = cells["pdl1"]
    if params.resistance.adaptive_pdl1:
        new = _ifng_response(world, p, cells["voxel"])  # target = baseline + induced h(IFN-γ), built in place
        new *= np.float32(p.pdl1_ifng_induced)
        new += np.float32(p.pdl1_baseline)
        new -= cur
    else:
        new = np.float32(p.pdl1_baseline) - cur
    new *= relax  # relax toward the target; between values in [0, 1] it stays in [0, 1]
    new += cur
    cells["pdl1"] = xp.clip(new, np.float32(0), np.float32(1), out=new)


@rule("secretion", "exchange", needs=("field:chemokine", "field:vegf", "field:tgfb", "field:ifng", "field:oxygen"))
def secretion(world, params, rng, intents) -> None:
    """Record chemokine (IFN-γ- and innate-agonist-boosted, reduced by chemokine loss), hypoxic VEGF and TGF-β."""
    xp, p = world.xp, params.tumour
    cells = world.tables["tumour"]
    if len(cells) == 0:
        return
    vox = cells["voxel"]
    rate = p.chemokine_secretion
    if params.resistance.chemokine_loss:
        rate *= 1.0 - params.chemokine_loss_fraction
    dtype = world.dtype.type
    chem = _ifng_response(world, p, vox)
    chem *= dtype(rate * p.chemokine_ifng_boost)
    chem += dtype(rate)  # rate (1 + boost h(IFN-γ))
    factor = innate_chemokine_factor(world, params.effects.innate, vox)  # STING, TLR7/8 agonists: x (1 + Σ b θ)
    if factor is not None:
        chem *= factor.astype(world.dtype)
    world.fields["chemokine"].secrete(vox, chem)
    if p.hypoxic_threshold_mmHg > 0:  # a threshold of 0 mmHg: no cell is hypoxic
        # Hypoxic VEGF: rate x ramp(pO2; 1 at 0 mmHg, 0 at the threshold) = clip(rate (1 - pO2/threshold), 0, rate).
        vegf = world.fields["oxygen"].data.reshape(-1).take(vox)
        vegf *= dtype(-p.vegf_secretion_hypoxic / p.hypoxic_threshold_mmHg)
        vegf += dtype(p.vegf_secretion_hypoxic)
        xp.clip(vegf, dtype(0), dtype(p.vegf_secretion_hypoxic), out=vegf)
        world.fields["vegf"].secrete(vox, vegf)
    world.fields["tgfb"].source += _tumour_grid(world) * dtype(p.tgfb_secretion)


def on_divide(world, params, table, parents, daughters) -> None:
    """Division bookkeeping: parents count a generation; daughters' antigenicity may mutate (immune editing).

    With ``resistance.antigen_loss`` a daughter's antigenicity mutates with ``antigen_mutation_prob`` by
    ``N(0, antigen_mutation_step)``, clipped to 0..1 (stream ``tumour/antigen_mutation``).
    """
    xp, p = world.xp, params.tumour
    gen = table["generation"]
    gen[parents] += 1
    daughters["generation"] = gen.take(parents)
    n = parents.shape[0]
    if not params.resistance.antigen_loss or n == 0 or p.antigen_mutation_prob == 0:
        return
    rng = world.rng(params.stream("antigen_mutation"))
    mutates = rng.random(n) < p.antigen_mutation_prob
    delta = rng.normal(n) * p.antigen_mutation_step
    daughters["antigenicity"] = xp.clip(daughters["antigenicity"] + xp.where(mutates, delta, 0.0), 0.0, 1.0
                                        ).astype(np.float32)


#: Canonical order of the tumour rules (config selects, never orders).
RULES = {r.name: r for r in (oxygen_uptake, secretion, pdl1_expression, proliferation, apoptosis, necrosis,
                             necrotic_clearance)}
