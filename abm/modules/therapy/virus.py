"""An oncolytic virus (``[virus.<name>]``): dosing, spread in tissue, infection and lysis of tumour cells.

The virus is a field ``<name>`` (PFU/mL) that diffuses with its own ``D`` (lowered by ECM), decays at
``ln 2 / t½`` and is taken up by tumour cells. A voxel holds ``dx³`` (in 2-D too: one voxel thick).

``virus_exchange`` (exchange)
    Doses: an intratumoral dose adds ``titre`` in its region (a one-step source ``titre/dt``); an intravenous dose
    raises the blood titre ``D/V_blood``, which falls at the plasma half-life, and virus enters tissue at vessel
    voxels, ``dc/dt = P (S/V) perfusion (C_blood - c)`` (the drugs' :func:`supply`). Adsorption: every tumour cell
    removes virus from its voxel at ``k_ads`` (first order, implicit).
``virus_infection`` (behaviour; the one writer of the tumour column ``infection_min``)
    An uninfected cell is infected with ``1 - exp(-k_ads m dt)``, ``m = c dx³`` the PFU in its voxel. An infected
    cell's clock advances by ``dt``; from the eclipse on it lyses at ``1/τ_lysis`` (cause ``lysis_<name>``, whose
    ``immunogenicity`` is the ICD strength); at any age it is killed by antiviral immunity at
    ``k_innate + k_T n_CD8`` (``n_CD8`` the effectors in its Moore neighbourhood, itself included; cause
    ``antiviral``, no virus released). The two risks compete within the step.
Burst (commit hook of the therapy module)
    Each lysed cell adds ``b / dx³`` PFU/mL to its voxel at the end of the step.
"""

from __future__ import annotations

import math

import numpy as np

from abm.engine.module import rule
from abm.modules.common import probability
from abm.modules.vasculature.module import supply

__all__ = ["ANTIVIRAL", "Virus", "virus_exchange", "virus_infection"]

#: Cause of death of an infected cell killed by antiviral immunity before it lyses.
ANTIVIRAL = "antiviral"


class Virus:
    """Host-side state of one oncolytic virus: its dose times, how many were given, its injected region."""

    def __init__(self, name: str, cfg):
        self.name, self.cfg = name, cfg
        self.times_min = cfg.dose_times_min()
        self.doses_given = 0
        self.doses_this_step = 0
        self.mask = None  # injected voxels (bool, flat); set when the module attaches to a world
        self.voxel_mL = None  # voxel volume, mL; set when the module attaches

    @property
    def lysis_cause(self) -> str:
        """Name of the cause of death of the cells it lyses."""
        return f"lysis_{self.name}"

    def advance(self, t0: float, t1: float) -> int:
        """Count the doses due in ``[t0, t1)`` (min) as given; return how many."""
        n = sum(1 for t in self.times_min if t0 <= t < t1)
        self.doses_given += n
        self.doses_this_step = n
        return n

    def blood_pfu_per_mL(self, t0: float, dt: float) -> float:
        """Mean blood titre over ``[t0, t0 + dt)``, PFU/mL: each dose ``D/V`` decays at the plasma half-life.

        A dose due within the step counts from ``t0``.
        """
        cfg = self.cfg
        k = math.log(2.0) / cfg.plasma_half_life_min
        mean_factor = -math.expm1(-k * dt) / (k * dt)
        level = sum(math.exp(-k * max(0.0, t0 - t)) for t in self.times_min if t < t0 + dt)
        return cfg.dose_pfu / cfg.blood_volume_mL * level * mean_factor


@rule("virus_exchange", "exchange", needs=("table:tumour",))
def virus_exchange(world, params, rng, intents) -> None:
    """Record doses (intratumoral source or blood supply at vessels) and adsorption by tumour cells."""
    t0, dt = world.time_min, world.dt_min
    tumour = world.tissue == world.code("tumour")
    for name, v in params.viruses.items():
        cfg, field = v.cfg, world.fields[name]
        n = v.advance(t0, t0 + dt)
        if cfg.route == "intratumoral":
            if n:
                field.source += (v.mask * world.dtype.type(n * cfg.titre_pfu_per_mL / dt)).reshape(world.shape)
        else:
            supply(world, name, cfg.vascular_permeability_um_per_min * cfg.vessel_surface_per_volume_per_um,
                   v.blood_pfu_per_mL(t0, dt))
        field.sink += tumour * world.dtype.type(cfg.adsorption_per_min)


def _effectors_near(world, voxels):
    """CD8 effectors in the Moore neighbourhood of each of ``voxels``, itself included (float64; 0 without T cells)."""
    xp = world.xp
    t = world.tables.get("tcell")
    if t is None or len(t) == 0:
        return xp.zeros(voxels.shape[0], dtype=np.float64)
    grid = xp.zeros(world.size, dtype=np.float64)  # a scatter-add: a mask and bincount are host syncs on a GPU
    xp.add.at(grid, t["voxel"], (~t["is_treg"]).astype(np.float64))
    flat, inside = world.moore_and_self.neighbours(voxels)
    return (grid.take(flat) * inside).sum(axis=0)


@rule("virus_infection", "behaviour", writes=("tumour.infection_min",), needs=("table:tumour",))
def virus_infection(world, params, rng, intents) -> None:
    """Infect tumour cells from the local titre; lyse or clear infected ones; advance the infection clock."""
    xp, dt = world.xp, world.dt_min
    cells = world.tables["tumour"]
    n = len(cells)
    if n == 0:
        return
    for name, v in params.viruses.items():
        cfg = v.cfg
        clock = cells["infection_min"].astype(np.float64)
        infected = clock >= 0.0
        pfu = xp.maximum(world.fields[name].data.reshape(-1).take(cells["voxel"]).astype(np.float64), 0.0) * v.voxel_mL
        newly = ~infected & (rng.random(n) < probability(cfg.adsorption_per_min * pfu, dt, xp))
        rows = xp.nonzero(infected)[0]
        if rows.shape[0]:
            age = clock[rows] + dt
            lysis = (age >= cfg.eclipse_min) / cfg.lysis_time_min
            immunity = (cfg.antiviral_kill_per_day + cfg.tcell_antiviral_kill_per_day
                        * _effectors_near(world, cells["voxel"][rows])) / 1440.0
            total = lysis + immunity
            u = rng.random(rows.shape[0])
            dies = u < probability(total, dt, xp)
            lyses = dies & (u < probability(total, dt, xp) * lysis / xp.maximum(total, 1e-300))
            intents.kill("tumour", rows, v.lysis_cause, where=lyses)
            intents.kill("tumour", rows, ANTIVIRAL, where=dies & ~lyses)
        cells["infection_min"] = xp.where(infected, clock + dt, xp.where(newly, 0.0, -1.0)).astype(np.float32)
