"""Small immune-layer arenas shared by the immune tests (fixed seeds, small grids)."""

from __future__ import annotations

import numpy as np

from abm.config import parse_config
from abm.model import Simulation


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


ARENA = {
    "backend": "numpy",
    "seed": 3,
    "grid": {"shape": [40, 40]},
    "vessels": {"pattern": "none"},
    "initial": {"tumour": {"radius_um": 240.0}},
    "tumour": {"rules": ["oxygen_uptake", "pdl1_expression", "secretion"], "antigenicity_spread": 0.0},
    "immune": {
        "enabled": True,
        "tcell": {"rules": ["tcell_secretion", "tcell_kill", "tcell_move"], "max_kills": 1000},
        "macrophage": {"rules": []},
        "caf": {"rules": []},
    },
}


def arena(extra: dict | None = None, seed: int = 3) -> Simulation:
    """A nodule without vessels or growth: tumour cells only die by immune killing."""
    cfg = parse_config(merge(merge(ARENA, extra or {}), {"seed": seed}))
    return Simulation(cfg)


def add_tcells(sim: Simulation, voxels, is_treg: bool = False) -> None:
    xp = sim.xp
    voxels = xp.asarray(voxels, dtype=np.int64)
    n = voxels.shape[0]
    sim.agents["tcell"].append(
        voxel=voxels, is_treg=xp.full(n, is_treg), kills=xp.zeros(n), exhaustion=xp.zeros(n),
        lag3_tim3=xp.zeros(n), engaged=xp.zeros(n, dtype=bool), age_min=xp.zeros(n),
    )
    sim.world.refresh_occupancy()  # agents placed by hand: the occupancy indices follow


def add_macrophages(sim: Simulation, voxels, state: int) -> None:
    xp = sim.xp
    voxels = xp.asarray(voxels, dtype=np.int64)
    n = voxels.shape[0]
    sim.agents["macrophage"].append(voxel=voxels, state=xp.full(n, state, dtype=np.int8), age_min=xp.zeros(n))
    sim.world.refresh_occupancy()


def tumour_voxels(sim: Simulation, n: int, seed: int = 0):
    """``n`` distinct tumour-cell voxels chosen at random."""
    vox = np.asarray(sim.tumour["voxel"])
    return np.random.default_rng(seed).choice(vox, size=min(n, vox.size), replace=False)


def run_kills(sim: Simulation, steps: int) -> int:
    total = 0
    for _ in range(steps):
        sim.step()
        total += int(sim.metrics()["tumour_killed_by_tcell"])
    return total
