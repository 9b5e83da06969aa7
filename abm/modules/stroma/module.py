"""The stroma module: cancer-associated fibroblasts, the ECM layer, and the stromal signals TGF-β, VEGF, CXCL12.

Owns the ``caf`` table (exclusive tissue layer), the ``ecm`` layer (density 0..1, written to snapshots as
``fields/ecm``), the ``tgfb``, ``vegf`` and ``cxcl12`` fields, and the ECM hindrance of large molecules: every
field declared ``ecm_hindered`` (by any module) diffuses with ``D (1 - hindrance ECM)`` (the field's own
``ecm_hindrance`` where it declares one) under ``resistance.stromal_exclusion``, rebuilt every
``immune.ecm.update_every_steps`` steps when the ECM moved by more than 0.01 anywhere.

Rules (each switchable through ``immune.caf.rules``):

``caf_secretion`` (exchange)
    A CAF secretes TGF-β and CXCL12 in proportion to its activation ``a``.
``caf_activation`` (update)
    ``da/dt = r_on s (1 - a) - r_off (1 - s) a`` with ``s = TGF-β/(TGF-β + K)`` the TGF-β signalling of the
    CAF (free TGF-β: receptor blockade lowers it), integrated exactly over the step with ``s`` held: the
    activation relaxes toward ``r_on s / (r_on s + r_off (1 - s))``, so CAFs stay activated while TGF-β
    signals and drift back toward quiescence when it stops.
``ecm_remodelling`` (update; the one writer of the ECM)
    ECM density ``E`` in a CAF's voxel and its Moore neighbours grows as ``dE/dt = d a (1 - E)``; tumour cells
    and macrophages degrade it (MMPs) as ``dE/dt = -m E`` in their voxels.
"""

from __future__ import annotations

import numpy as np

from abm.engine.agents import Column
from abm.engine.module import Declaration, LayerSpec, Readout, TableSpec, rule
from abm.modules.base import BaseModule, Params
from abm.modules.common import blocked, initial_region, probability, solute_spec

__all__ = ["COLUMNS", "StromaModule"]

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel the CAF occupies (tissue layer)"),
    "activation": Column("float32", "-", "activation level 0..1 (myofibroblast-like when near 1)"),
}

_FIXED_ONE = float(2**32)  # fixed-point scale of CAF activation sums (resolution 2.3e-10, far below float32's)


@rule("caf_secretion", "exchange")
def caf_secretion(world, params, rng, intents) -> None:
    """Record TGF-β and CXCL12 secretion by CAFs, proportional to activation."""
    c = world.tables["caf"]
    if len(c) == 0:
        return
    p = params.caf
    act = c["activation"]  # one CAF per voxel (tissue layer)
    world.fields["tgfb"].secrete(c["voxel"], act * np.float32(p.tgfb_secretion))
    world.fields["cxcl12"].secrete(c["voxel"], act * np.float32(p.cxcl12_secretion))


@rule("caf_activation", "update", writes=("caf.activation",))
def caf_activation(world, params, rng, intents) -> None:
    """Relax activation toward its TGF-β-set balance of activation and inactivation (exact over the step)."""
    c = world.tables["caf"]
    if len(c) == 0:
        return
    xp, p = world.xp, params.caf
    tgfb = world.fields["tgfb"].data.reshape(-1)[c["voxel"]].astype(np.float64)
    theta = blocked(world, "tgfb", c["voxel"])
    if theta is not None:
        tgfb = tgfb * (1.0 - theta)
    signal = tgfb / (tgfb + p.activation_tgfb_half_max)
    on = p.activation_rate_per_min * signal
    off = p.deactivation_rate_per_min * (1.0 - signal)
    total = on + off
    act = c["activation"].astype(np.float64)
    relax = probability(total, world.dt_min, xp)  # 1 - exp(-(on + off) dt)
    drift = xp.where(total > 0, (on * (1.0 - act) - off * act) / xp.where(total > 0, total, 1.0), 0.0)
    c["activation"] = xp.clip(act + drift * relax, 0.0, 1.0)


@rule("ecm_remodelling", "update", writes=("layer:ecm",))
def ecm_remodelling(world, params, rng, intents) -> None:
    """Deposit ECM around CAFs (logistic to 1) and degrade it where tumour cells and macrophages sit (MMPs)."""
    xp = world.xp
    ecm = world.layers["ecm"].reshape(-1)
    c = world.tables["caf"]
    if len(c):
        # Drive of a voxel: the summed activation of the CAFs in its Moore neighbourhood (itself included).
        # Summed in 32.32 fixed point, so the sum is exact and the same on every run, also on a GPU, whose
        # scatter-add applies the terms in any order (a float scatter-add could differ in the last bits).
        flat, inside = world.moore_and_self.neighbours(c["voxel"])
        fixed = xp.rint(c["activation"].astype(np.float64) * _FIXED_ONE).astype(np.int64)
        entries = flat.reshape(-1)
        drive = world.scratch_sum(entries, (inside * fixed[None, :]).reshape(-1), entries, dtype=np.int64)
        drive = drive.reshape(flat.shape) * (1.0 / _FIXED_ONE)
        # Every entry naming a voxel (duplicates, and outside entries pointing home) carries the voxel's whole
        # drive, so they all write the same value: the fancy assignment is exact despite the duplicates.
        theta = blocked(world, "lox", flat.reshape(-1))  # LOX inhibition: less deposition and cross-linking
        if theta is not None:
            drive = drive * (1.0 - theta.reshape(flat.shape))
        gain = probability(params.caf.ecm_deposition_per_min * drive, world.dt_min, xp)
        old = ecm.take(flat)
        ecm[flat] = old + ((1.0 - old) * gain).astype(ecm.dtype)
    # MMP degradation only where tumour cells (one per voxel) and macrophages sit.
    if "tumour" in world.tables:
        keep = ecm.dtype.type(np.exp(-params.tumour_mmp_per_min * world.dt_min))
        tumour = (world.tissue == world.code("tumour")).reshape(-1)
        ecm *= tumour * (keep - ecm.dtype.type(1)) + ecm.dtype.type(1)  # exactly keep or 1
    m = world.tables.get("macrophage")
    if m is not None and len(m):
        vox = m["voxel"]
        n_mac = world.multiplicity(vox).astype(np.float64)  # macrophages sharing the voxel; same value per entry
        ecm[vox] = ecm.take(vox) * xp.exp(-params.macrophage_mmp_per_min * world.dt_min * n_mac).astype(ecm.dtype)


RULES = {r.name: r for r in (caf_secretion, caf_activation, ecm_remodelling)}


class StromaModule(BaseModule):
    """CAFs, ECM and the stromal signals."""

    name = "stroma"
    seed_order = 2

    @classmethod
    def from_config(cls, config, namespaced: bool = True) -> StromaModule:
        """The module with the sections of ``config`` it reads."""
        im = config.immune
        params = Params(
            caf=im.caf, ecm=im.ecm, fields=config.fields, initial=config.initial.tumour,
            stromal_exclusion=config.resistance.stromal_exclusion,
            tumour_mmp_per_min=config.tumour.ecm_degradation_per_min,
            macrophage_mmp_per_min=im.macrophage.ecm_degradation_per_min, namespaced=namespaced,
        )
        return cls(params, im.caf.rules)

    def __init__(self, params, rules):
        super().__init__(params, rules)
        self.ecm_factors = None  # the ECM the hindered diffusivities were last built from

    def declare(self) -> Declaration:
        """The CAF table, the ECM layer, TGF-β, VEGF and CXCL12, the CAF rules and readouts."""
        f = self.params.fields
        fields = [solute_spec(name, sec) for name, sec in (("tgfb", f.tgfb), ("vegf", f.vegf), ("cxcl12", f.cxcl12))]
        return Declaration(
            fields=fields,
            layers=[LayerSpec("ecm", "-", "float", 0.0, as_field=True)],
            tables=[TableSpec("caf", COLUMNS, layer="tissue")],
            rules=self.rules(RULES),
            readouts=[Readout("caf_cells", "cells", "count", "cancer-associated fibroblasts"),
                      Readout("caf_activation_mean", "-", "level", "mean CAF activation (0..1)")],
        )

    def seed(self, world, rng) -> None:
        """ECM inside and outside the seeded nodule; CAFs on free voxels of the stroma ring around it."""
        xp, p = world.xp, self.params
        inside, r_um = initial_region(world, p.initial)
        inner = p.initial.radius_um + p.caf.stroma_inner_um
        ring = (r_um > inner) & (r_um <= inner + p.caf.stroma_width_um) & ~inside
        ring &= world.tissue.reshape(-1) == 0
        u_caf = rng.random(world.size)
        caf_vox = xp.nonzero(ring & (u_caf < p.caf.stroma_density))[0].astype(np.int64)
        world.tables["caf"].append(voxel=caf_vox, activation=xp.full(caf_vox.shape[0], p.caf.initial_activation))
        if world.step_index == 0:
            ecm = xp.where(inside, p.ecm.initial_tumour, p.ecm.initial_stroma)
        else:  # switched on at a branch: the lesion as it is now
            lesion = (world.tissue == world.code("tumour")) | world.layers["necrotic"]
            ecm = xp.where(lesion.reshape(-1), p.ecm.initial_tumour, p.ecm.initial_stroma)
        world.layers["ecm"] = ecm.reshape(world.shape).astype(world.dtype)

    def attach(self, world) -> None:
        """Apply the ECM hindrance to every hindered field (rebuilt from the current ECM if never built)."""
        if self.ecm_factors is None:
            self._refresh(world, force=True)
        else:
            self._apply(world)

    def _hindered(self, world) -> list[str]:
        return [n for n, spec in world.field_specs.items() if spec.ecm_hindered]

    def _refresh(self, world, force: bool = False) -> None:
        """Rebuild the hindered diffusivities when the ECM moved by 0.01 or more anywhere (about one LOD step)."""
        if not self._hindered(world):
            return
        ecm = world.layers["ecm"]
        if not force and self.ecm_factors is not None:
            if float(world.xp.abs(ecm - self.ecm_factors).max()) < 0.01:
                return
        self.ecm_factors = ecm.copy()
        self._apply(world)

    def _apply(self, world) -> None:
        for name in self._hindered(world):
            spec = world.field_specs[name]
            d0 = spec.diffusivity_um2_per_min
            if self.params.stromal_exclusion:
                h = self.params.ecm.diffusion_hindrance if spec.ecm_hindrance is None else spec.ecm_hindrance
                d = d0 * (1.0 - h * self.ecm_factors.astype(np.float64))
                world.fields[name].set_diffusivity(d)
            else:
                world.fields[name].set_diffusivity(d0)

    def commit(self, world, record, intents, events: dict) -> None:
        """Every ``update_every_steps`` steps, refresh the hindered diffusivities."""
        if (world.step_index + 1) % self.params.ecm.update_every_steps == 0:
            self._refresh(world)

    def measure(self, world) -> dict:
        """CAF count and mean activation."""
        xp = world.xp
        c = world.tables["caf"]
        return {"caf_cells": xp.asarray(len(c), dtype=np.float64),
                "caf_activation_mean": c["activation"].astype(np.float64).sum() / max(len(c), 1)}

    def state(self, world) -> dict:
        """The ECM the hindered diffusivities were built from (when any field is hindered)."""
        if self.ecm_factors is None or not self._hindered(world):
            return {}
        return {"ecm_factors": world.backend.to_host(self.ecm_factors)}

    def load_state(self, world, state: dict | None) -> None:
        """Restore the ECM of the hindered diffusivities (rebuilt from the ECM when absent)."""
        if state and "ecm_factors" in state:
            self.ecm_factors = world.xp.asarray(np.asarray(state["ecm_factors"]), dtype=world.dtype)
