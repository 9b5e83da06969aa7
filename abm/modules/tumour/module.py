"""The tumour module: tumour cells on the exclusive tissue layer and the necrotic mask.

Owns the ``tumour`` table (columns below), the ``necrotic`` layer, the deaths by apoptosis and necrosis, the
tumour rules (:mod:`abm.modules.tumour.rules`) and the burden, hypoxia and oxygen readouts.
"""

from __future__ import annotations

import numpy as np

from abm.engine.agents import Column
from abm.engine.module import DeathCause, Declaration, LayerSpec, Readout, TableSpec
from abm.modules.base import BaseModule, Params
from abm.modules.common import initial_region
from abm.modules.tumour.rules import RULES, on_divide

__all__ = ["COLUMNS", "INFECTION_COLUMN", "TumourModule"]

COLUMNS = {
    "voxel": Column("int64", "-", "flat (C-order) index of the voxel the cell occupies"),
    "generation": Column("int32", "divisions", "divisions since the seeded ancestor"),
    "quiescent": Column("bool", "flag", "no free neighbour voxel at the last step (contact-inhibited)"),
    "antigenicity": Column("float32", "-", "antigen presentation q (0..1), heritable; factor on T-cell killing"),
    "pdl1": Column("float32", "-", "PD-L1 expression (fraction of maximal, 0..1)"),
}

#: The column an oncolytic virus needs (declared only in runs with a ``[virus.<name>]``; the therapy module's
#: ``virus_infection`` rule is its one writer). Infected cells do not divide.
INFECTION_COLUMN = {
    "infection_min": Column("float32", "min", "time since infection by the oncolytic virus; -1: not infected",
                            fill=-1.0),
}

READOUTS = [
    Readout("tumour_cells", "cells", "count", "live tumour cells"),
    Readout("tumour_quiescent", "cells", "count", "tumour cells without a free neighbour voxel"),
    Readout("tumour_hypoxic", "cells", "count", "tumour cells below tumour.hypoxic_threshold_mmHg"),
    Readout("necrotic_voxels", "voxels", "count", "necrotic voxels"),
    Readout("hypoxic_fraction", "-", "ratio", "hypoxic fraction of live tumour cells"),
    Readout("tumour_diameter_um", "um", "level", "equivalent diameter of live plus necrotic voxels"),
    Readout("oxygen_tumour_mean_mmHg", "mmHg", "level", "mean pO2 over tumour cells"),
    Readout("oxygen_min_mmHg", "mmHg", "level", "minimum pO2 over the lattice"),
    Readout("tumour_births", "cells", "event", "divisions in the step"),
    Readout("tumour_deaths_apoptosis", "cells", "event", "apoptotic deaths in the step"),
    Readout("tumour_deaths_necrosis", "cells", "event", "necrotic deaths in the step"),
    Readout("necrotic_cleared", "voxels", "event", "necrotic voxels cleared in the step"),
]


class TumourModule(BaseModule):
    """Tumour cells: growth, death, antigenicity, PD-L1 and secretion."""

    name = "tumour"
    seed_order = 1

    @classmethod
    def from_config(cls, config, namespaced: bool = True) -> TumourModule:
        """The module with the sections of ``config`` it reads."""
        params = Params(tumour=config.tumour, initial=config.initial.tumour, resistance=config.resistance,
                        chemokine_loss_fraction=config.immune.chemokine_loss_fraction, infectable=bool(config.virus),
                        effects=config.effects, namespaced=namespaced)
        return cls(params, config.tumour.rules)

    def declare(self) -> Declaration:
        """The tumour table (with a virus, its infection clock), necrotic layer, causes of death, rules, readouts."""
        columns = {**COLUMNS, **INFECTION_COLUMN} if self.params.infectable else COLUMNS
        return Declaration(
            layers=[LayerSpec("necrotic", "flag", "bool", False, tissue_mark=True)],
            tables=[TableSpec("tumour", columns, layer="tissue", births_readout="tumour_births",
                              on_divide=on_divide)],
            death_causes=[DeathCause("tumour", "apoptosis", 1, "tumour_deaths_apoptosis"),
                          DeathCause("tumour", "necrosis", 2, "tumour_deaths_necrosis")],
            rules=self.rules(RULES),
            readouts=READOUTS,
        )

    def seed(self, world, rng) -> None:
        """A nodule (disc or ball) of ``initial.tumour.radius_um``, filled at ``fill_fraction`` on free voxels.

        Antigenicity is drawn from ``N(antigenicity_initial, antigenicity_spread)`` clipped to 0..1.
        """
        xp, p, init = world.xp, self.params.tumour, self.params.initial
        inside, _ = initial_region(world, init)
        u_fill = rng.random(world.size)
        free = world.tissue.reshape(-1) == 0
        voxels = xp.nonzero(inside & (u_fill < init.fill_fraction) & free)[0].astype(np.int64)
        n = voxels.shape[0]
        antigenicity = xp.clip(p.antigenicity_initial + p.antigenicity_spread * rng.normal(n), 0, 1)
        world.tables["tumour"].append(
            voxel=voxels, generation=xp.zeros(n, dtype=np.int32), quiescent=xp.zeros(n, dtype=bool),
            antigenicity=antigenicity, pdl1=xp.full(n, p.pdl1_baseline),
        )

    def commit(self, world, record, intents, events: dict) -> None:
        """Mark the voxels of cells that died of necrosis; count the necrotic voxels cleared."""
        xp = world.xp
        dead = record.dead.get("tumour")
        if dead is not None:
            codes, columns = dead
            # The dead occupied distinct voxels: OR in the necrotic ones without a mask (a host sync on CuPy).
            necrotic, voxels = world.layers["necrotic"].reshape(-1), columns["voxel"]
            necrotic[voxels] = necrotic.take(voxels) | (codes == world.death_codes["tumour"]["necrosis"])
        cleared = intents.notes.get("necrotic_cleared", [])
        events["necrotic_cleared"] = xp.asarray(sum(cleared, xp.zeros((), dtype=np.int64)), dtype=np.int64)

    def measure(self, world) -> dict:
        """Counts, hypoxic cells and oxygen over tumour cells (backend scalars)."""
        xp = world.xp
        cells = world.tables["tumour"]
        voxels = cells["voxel"]
        n = voxels.shape[0]
        o2 = world.fields["oxygen"].data
        o2_cells = o2.reshape(-1)[voxels].astype(np.float64)
        return {
            "tumour_cells": xp.asarray(n, dtype=np.float64),
            "tumour_quiescent": xp.count_nonzero(cells["quiescent"]),
            "tumour_hypoxic": xp.count_nonzero(o2_cells < self.params.tumour.hypoxic_threshold_mmHg),
            "necrotic_voxels": xp.count_nonzero(world.layers["necrotic"]),
            "oxygen_tumour_mean_mmHg": o2_cells.sum() / max(n, 1),
            "oxygen_min_mmHg": o2.min(),
        }

    def derive(self, out: dict) -> None:
        """Hypoxic fraction and the lesion's equivalent diameter (disc in 2-D, sphere in 3-D)."""
        out["hypoxic_fraction"] = out["tumour_hypoxic"] / out["tumour_cells"] if out["tumour_cells"] else 0.0
        ndim, dx = self.ndim, self.spacing_um
        volume = (out["tumour_cells"] + out["necrotic_voxels"]) * dx**ndim
        if ndim == 2:
            out["tumour_diameter_um"] = 2.0 * float(np.sqrt(volume / np.pi))
        else:
            out["tumour_diameter_um"] = 2.0 * float(np.cbrt(3.0 * volume / (4.0 * np.pi)))

    def attach(self, world) -> None:
        """Remember the geometry the derived readouts need."""
        self.ndim, self.spacing_um = world.ndim, world.spacing_um
