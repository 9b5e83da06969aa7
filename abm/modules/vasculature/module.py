"""The vasculature module: vessel voxels, their oxygen supply and perfusion, and VEGF-driven angiogenesis.

Owns the ``oxygen`` field and the ``vessels`` layer, publishes the flat indices of the vessel voxels as
``world.indices["vessel_voxels"]`` and provides the factor ``perfusion`` (read by O2 supply and immune entry):
``1 / (1 + VEGF/K)`` with ``resistance.abnormal_vasculature`` and a VEGF field, else 1.

Rules: ``oxygen_supply`` (exchange): each vessel voxel relaxes toward blood pO2 at ``vessel_supply_per_min`` x
perfusion, implicitly (a per-voxel sink plus the matching source); ``angiogenesis`` (behaviour, with
``vessels.angiogenesis``): a free tissue voxel next to a vessel becomes a vessel at rate
``r VEGF/(VEGF + K)``.
"""

from __future__ import annotations

import numpy as np

from abm.engine.module import Declaration, FieldSpec, LayerSpec, Readout, rule
from abm.engine.world import FREE
from abm.modules.base import BaseModule, Params
from abm.modules.common import blocked, initial_region, probability
from kernels.lattice import box_sum

__all__ = ["VasculatureModule"]


def supply(world, field: str, rate_per_min: float, level: float) -> None:
    """Exchange between blood and tissue at every vessel voxel: ``dc/dt = k perfusion (level - c)``, implicit.

    The sink ``k perfusion`` and the source ``k perfusion level`` are written at the vessel voxels only (they are
    distinct, so ``+=`` is exact). Oxygen uses it with the blood pO2; the therapy module with each drug's plasma
    concentration.

    Parameters
    ----------
    field : str
        Field name.
    rate_per_min : float
        Exchange rate ``k`` of a fully perfused vessel voxel, 1/min.
    level : float
        Blood-side concentration, in the field's unit.
    """
    target, vessels = world.fields[field], world.indices["vessel_voxels"]
    if vessels.shape[0] == 0:
        return
    rate = world.xp.full(vessels.shape[0], rate_per_min, dtype=world.dtype)
    inflow = rate * world.dtype.type(level)
    if world.provides("perfusion"):
        perfusion = world.factor("perfusion", vessels).astype(world.dtype)
        rate, inflow = rate * perfusion, inflow * perfusion
    target.sink.reshape(-1)[vessels] += rate
    target.source.reshape(-1)[vessels] += inflow


@rule("oxygen_supply", "exchange", needs=("field:oxygen",))
def oxygen_supply(world, params, rng, intents) -> None:
    """Vessel O2 supply: vessel voxels relax toward blood pO2 at ``vessel_supply_per_min`` x perfusion."""
    supply(world, "oxygen", params.oxygen.vessel_supply_per_min, params.oxygen.blood_mmHg)


@rule("angiogenesis", "behaviour", needs=("field:vegf",))
def angiogenesis(world, params, rng, intents) -> None:
    """Record VEGF-driven sprouting: free tissue voxels next to a vessel become vessels.

    Rate ``r V/(V + K)`` per free voxel with a vessel in its Moore neighbourhood, ``V`` the VEGF signal there
    (``VEGF (1 - θ)`` under VEGF-pathway blockade of occupancy ``θ``).
    """
    xp, vs = world.xp, params.vessels
    near = box_sum(world.layers["vessels"], 1).reshape(-1) > 0.5
    candidates = xp.nonzero(near & (world.tissue.reshape(-1) == FREE))[0]
    if candidates.shape[0] == 0:
        return
    vegf = world.fields["vegf"].data.reshape(-1)[candidates].astype(np.float64)
    theta = blocked(world, "vegf", candidates)  # anti-VEGF and VEGFR TKIs block the sprouting signal
    if theta is not None:
        vegf = vegf * (1.0 - theta)
    rate = vs.angiogenesis_rate_per_min * vegf / (vegf + vs.angiogenesis_vegf_half_max)
    sprout = rng.random(candidates.shape[0]) < 1.0 - xp.exp(-rate * world.dt_min)
    intents.note("vessel_sprouts", (candidates, sprout))  # no mask picks the sprouts: a host sync on a GPU


@rule("vessel_pruning", "behaviour", needs=("layer:occupancy_vegf_sustained",))
def vessel_pruning(world, params, rng, intents) -> None:
    """Under sustained high VEGF-pathway blockade vessel voxels regress (the far side of the normalisation window).

    Rate ``r max(0, m - θ_prune) / (1 - θ_prune)`` per vessel voxel, ``m`` the running mean of the VEGF occupancy
    at the voxel over ``effects.vegf.sustained_day`` (the therapy module's ``occupancy_vegf_sustained``), so a
    saturating course first normalises the vessels and prunes them only after days.
    """
    vessels = world.indices["vessel_voxels"]
    e = params.effects.vegf
    if vessels.shape[0] == 0 or e.prune_per_day == 0 or e.prune_threshold >= 1:
        return
    sustained = world.layers["occupancy_vegf_sustained"].reshape(-1).take(vessels).astype(np.float64)
    excess = world.xp.clip((sustained - e.prune_threshold) / (1.0 - e.prune_threshold), 0.0, 1.0)
    prune = rng.random(vessels.shape[0]) < probability(e.prune_per_day / 1440.0 * excess, world.dt_min, world.xp)
    # Every vessel voxel is written (the pruned ones False), so no mask picks the pruned ones: a host sync.
    intents.set_layer("vessels", vessels, ~prune)
    intents.note("vessels_pruned", world.xp.count_nonzero(prune))


RULES = {r.name: r for r in (oxygen_supply, angiogenesis, vessel_pruning)}


class VasculatureModule(BaseModule):
    """Vessel voxels as oxygen sources and immune entry points."""

    name = "vasculature"
    seed_order = 0

    @classmethod
    def from_config(cls, config, namespaced: bool = True) -> VasculatureModule:
        """The module with the sections of ``config`` it reads."""
        params = Params(
            vessels=config.vessels, oxygen=config.fields.oxygen, initial=config.initial.tumour,
            abnormal_vasculature=config.resistance.abnormal_vasculature,
            vegf_half_max=config.immune.vessel_abnormality_vegf_half_max, effects=config.effects,
            namespaced=namespaced,
        )
        params.perfusion_from_vegf = False  # set in attach(), once the fields are known
        rules = ["oxygen_supply", "vessel_pruning"] + (["angiogenesis"] if config.vessels.angiogenesis else [])
        return cls(params, rules)

    def declare(self) -> Declaration:
        """The oxygen field, the vessel layer, the supply (and angiogenesis) rules and vessel readouts."""
        ox = self.params.oxygen
        return Declaration(
            fields=[FieldSpec("oxygen", "mmHg", ox.diffusivity_um2_per_min, ox.decay_per_min, ox.initial_mmHg,
                              ox.boundary, ox.substeps, solver=ox.solver, tolerance=ox.tolerance)],
            layers=[LayerSpec("vessels", "flag", "bool", False, tissue_mark=True)],
            rules=self.rules(RULES),
            readouts=[Readout("vessel_voxels", "voxels", "count", "vessel voxels"),
                      Readout("vessels_sprouted", "voxels", "event", "vessel voxels added by angiogenesis"),
                      Readout("vessels_pruned", "voxels", "event", "vessel voxels lost to sustained VEGF blockade")],
        )

    def seed(self, world, rng) -> None:
        """Vessel voxels: ``random`` (density, optionally outside the seeded nodule), ``list`` or ``none``."""
        xp, vs = world.xp, self.params.vessels
        vessels = xp.zeros(world.size, dtype=bool)
        if vs.pattern == "random":
            vessels = rng.random(world.size) < vs.density
            if vs.exclude_tumour:
                inside, _ = initial_region(world, self.params.initial)
                vessels &= ~inside
        elif vs.pattern == "list" and vs.positions:
            idx = np.ravel_multi_index(np.asarray(vs.positions).T, world.shape)
            vessels[xp.asarray(idx)] = True
        world.layers["vessels"] = vessels.reshape(world.shape)

    def attach(self, world) -> None:
        """Publish the vessel voxels and provide the perfusion factor."""
        self._index(world)
        p = self.params
        p.perfusion_from_vegf = bool(p.abnormal_vasculature and "vegf" in world.fields)
        if p.perfusion_from_vegf and not world.provides("perfusion"):
            vegf_field, half_max = world.fields["vegf"], p.vegf_half_max

            def perfusion(voxels):
                vegf = vegf_field.data.reshape(-1)[voxels].astype(np.float64)
                theta = blocked(world, "vegf", voxels)  # VEGF-pathway blockade normalises the vessels
                if theta is not None:
                    vegf = vegf * (1.0 - theta)
                return 1.0 / (1.0 + vegf / half_max)

            world.provide("perfusion", perfusion)

    def _index(self, world) -> None:
        world.indices["vessel_voxels"] = world.xp.nonzero(world.layers["vessels"].reshape(-1))[0].astype(np.int64)

    def commit(self, world, record, intents, events: dict) -> None:
        """Turn the sprouts into vessels, except where a tissue agent was placed this step; re-index after pruning."""
        xp = world.xp
        zero = xp.zeros((), dtype=np.int64)
        pruned = intents.notes.get("vessels_pruned", [])
        events["vessels_pruned"] = xp.asarray(sum(pruned, zero), dtype=np.int64)
        sprouts = intents.notes.get("vessel_sprouts", [])
        events["vessels_sprouted"] = zero
        if sprouts:
            # The sprouts as a lattice (the candidates of one note are distinct), less the voxels a tissue agent
            # holds (a daughter placed this step keeps its voxel): no unique and no mask (host syncs on a GPU).
            new = xp.zeros(world.size, dtype=bool)
            for candidates, sprout in sprouts:
                new[candidates] = new.take(candidates) | sprout
            for name, spec in world.table_specs.items():
                if spec.layer == "tissue":
                    new[world.tables[name]["voxel"]] = False
            vessels = world.layers["vessels"].reshape(-1)
            vessels |= new
            events["vessels_sprouted"] = xp.asarray(xp.count_nonzero(new), dtype=np.int64)
        if pruned or sprouts:
            self._index(world)

    def measure(self, world) -> dict:
        """Number of vessel voxels."""
        return {"vessel_voxels": world.xp.asarray(world.indices["vessel_voxels"].shape[0], dtype=np.float64)}
