"""Cancer-associated fibroblasts (tissue layer) and the ECM they build.

Rules (each switchable through ``immune.caf.rules``):

``caf_secretion``
    A CAF secretes TGF-β and CXCL12 in proportion to its activation ``a``.
``caf_activation``
    ``da/dt = r TGF-β/(TGF-β + K) (1 - a)``.
``ecm_remodelling``
    ECM density ``E`` (0..1) in a CAF's voxel and its Moore neighbours grows as ``dE/dt = d a (1 - E)``;
    tumour cells and macrophages degrade it (MMPs) as ``dE/dt = -m E`` in their voxels.
"""

from __future__ import annotations

import numpy as np

from abm.agents import Column
from abm.cells.immune import probability
from abm.rules import rule

__all__ = ["COLUMNS", "RULES"]

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel the CAF occupies (tissue layer)"),
    "activation": Column("float32", "-", "activation level 0..1 (myofibroblast-like when near 1)"),
}


_FIXED_ONE = float(2**32)  # fixed-point scale of CAF activation sums (resolution 2.3e-10, far below float32's)


@rule("caf_secretion", "exchange")
def caf_secretion(sim, rng) -> None:
    """Record TGF-β and CXCL12 secretion by CAFs, proportional to activation."""
    c = sim.agents["caf"]
    if len(c) == 0:
        return
    p = sim.config.immune.caf
    act = c["activation"]  # one CAF per voxel (tissue layer)
    sim.fields["tgfb"].secrete(c["voxel"], act * np.float32(p.tgfb_secretion))
    sim.fields["cxcl12"].secrete(c["voxel"], act * np.float32(p.cxcl12_secretion))


@rule("caf_activation", "behaviour")
def caf_activation(sim, rng) -> None:
    """Relax activation toward 1 at a TGF-β-dependent rate."""
    xp = sim.xp
    c = sim.agents["caf"]
    if len(c) == 0:
        return
    p = sim.config.immune.caf
    tgfb = sim.fields["tgfb"].data.reshape(-1)[c["voxel"]].astype(np.float64)
    gain = probability(p.activation_rate_per_min * tgfb / (tgfb + p.activation_tgfb_half_max), sim.dt_min, xp)
    act = c["activation"].astype(np.float64)
    c["activation"] = act + (1.0 - act) * gain


@rule("ecm_remodelling", "behaviour")
def ecm_remodelling(sim, rng) -> None:
    """Deposit ECM around CAFs (logistic to 1) and degrade it where tumour cells and macrophages sit (MMPs)."""
    xp, cfg = sim.xp, sim.config
    ecm = sim.ecm.reshape(-1)
    c = sim.agents["caf"]
    if len(c):
        # Drive of a voxel: the summed activation of the CAFs in its Moore neighbourhood (itself included).
        # Summed in 32.32 fixed point, so the sum is exact and the same on every run, also on a GPU, whose
        # scatter-add applies the terms in any order (a float scatter-add could differ in the last bits).
        flat, inside = sim.moore_and_self.neighbours(c["voxel"])
        fixed = xp.rint(c["activation"].astype(np.float64) * _FIXED_ONE).astype(np.int64)
        entries = flat.reshape(-1)
        drive = sim.scratch_sum(entries, (inside * fixed[None, :]).reshape(-1), entries, dtype=np.int64)
        drive = drive.reshape(flat.shape) * (1.0 / _FIXED_ONE)
        # Every entry naming a voxel (duplicates, and outside entries pointing home) carries the voxel's whole
        # drive, so they all write the same value: the fancy assignment is exact despite the duplicates.
        gain = probability(cfg.immune.caf.ecm_deposition_per_min * drive, sim.dt_min, xp)
        old = ecm.take(flat)
        ecm[flat] = old + ((1.0 - old) * gain).astype(ecm.dtype)
    # MMP degradation only where tumour cells (one per voxel) and macrophages sit.
    keep = ecm.dtype.type(np.exp(-cfg.tumour.ecm_degradation_per_min * sim.dt_min))
    ecm *= sim.tumour_grid.reshape(-1) * (keep - ecm.dtype.type(1)) + ecm.dtype.type(1)  # exactly keep or 1
    m = sim.agents["macrophage"]
    if len(m):
        vox = m["voxel"]
        n_mac = sim.multiplicity(vox).astype(np.float64)  # macrophages sharing the voxel; same value per entry
        ecm[vox] = ecm.take(vox) * xp.exp(-cfg.immune.macrophage.ecm_degradation_per_min * sim.dt_min * n_mac
                                          ).astype(ecm.dtype)


RULES = {r.name: r for r in (caf_secretion, caf_activation, ecm_remodelling)}
