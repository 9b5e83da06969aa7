"""Cellular and immunising therapies: adoptive T-cell transfer, vaccines, epigenetic antigen restoration.

**Adoptive transfer** (``[cell_therapy.<name>]``, rule ``adoptive_transfer``, behaviour phase). At each infusion
time the product's ``cells`` T cells enter the immune layer at distinct random voxels of the entry site (vessel
voxels inside the region, or any voxel of the region), each voxel taken at most ``immune_capacity`` times; the
commit admits them against the free places like recruitment (cells finding no place are not given; the readout
``<name>_infused`` counts the admitted ones). They carry ``product`` = k (the k-th product of the config), by
which the T-cell rules apply the product's recognition, kill rate, kill limit, persistence and PD-1 sensitivity
(:mod:`abm.modules.immune.tcell`).

**Vaccine** (``[vaccine.<name>]``, rule ``vaccination``, systemic phase). A dose of antigen ``A`` at time ``s``
released from a depot with time constant ``τ`` delivers ``A (e^{-(t0-s)/τ} - e^{-(t1-s)/τ})`` over the step
``[t0, t1)`` (``A`` in the step of the dose when ``τ = 0``); the sum over doses is
``world.systemic["vaccine_antigen"]``, which the immune module adds to the antigen that drives priming.

**Epigenetic therapy** (rule ``antigen_restoration``, update phase, the one writer of ``tumour.antigenicity``).
A DNA-demethylating drug binds the target DNMT1; a tumour cell's antigenicity relaxes toward ``q_max``:

    q <- q + (q_max - q) (1 - exp(-k θ w dt))   where q < q_max

with ``θ`` the DNMT1 occupancy at the cell (Emax in the local drug level, EC50 = Kd) and ``w`` its cycling weight
(azanucleosides act by incorporation into replicating DNA, so demethylation needs S phase).
"""

from __future__ import annotations

import math

import numpy as np

from abm.engine.module import rule
from abm.modules.immune.tcell import new_cell
from abm.modules.therapy.cytotoxic import cycling_weight

__all__ = ["Infusions", "adoptive_transfer", "antigen_restoration", "vaccination", "vaccine_antigen"]


class Infusions:
    """Host-side state of one adoptive-transfer product: its code, infusion times and how many were given."""

    def __init__(self, name: str, code: int, cfg):
        self.name, self.code, self.cfg = name, code, cfg
        self.times_min = cfg.infusion_times_min()
        self.given = 0
        self.mask = None  # entry region (bool, flat), set when the module attaches to a world

    def advance(self, t0: float, t1: float) -> int:
        """Count the infusions due in ``[t0, t1)`` (min) as given; return how many."""
        n = sum(1 for t in self.times_min if t0 <= t < t1)
        self.given += n
        return n


def _entry_voxels(world, inf: Infusions, count: int, rng, capacity: int):
    """``count`` entry voxels: a random order of the site's voxels, repeated up to ``capacity`` times."""
    xp = world.xp
    if inf.cfg.site == "vessels":
        vessels = world.indices["vessel_voxels"]
        site = vessels[inf.mask.take(vessels)]
    else:
        site = xp.nonzero(inf.mask)[0]
    if site.shape[0] == 0:
        return site.astype(np.int64)
    order = site[xp.argsort(rng.random(site.shape[0]))]
    repeats = min(capacity, -(-count // site.shape[0]))
    return xp.tile(order, repeats)[:count].astype(np.int64)


@rule("adoptive_transfer", "behaviour", needs=("table:tcell",))
def adoptive_transfer(world, params, rng, intents) -> None:
    """Record the infusions due this step as recruitment of the product's cells at their entry voxels."""
    t0 = world.time_min
    capacity = world.capacity["immune"]
    for name, inf in params.infusions.items():
        n = inf.advance(t0, t0 + world.dt_min)
        params.infusions_this_step[name] = n
        if n == 0:
            continue
        voxels = _entry_voxels(world, inf, n * inf.cfg.cells, rng, capacity)
        columns = {"is_treg": False, **new_cell(True, inf.code)}
        intents.recruit("tcell", voxels, columns, f"{name}_infused")


def vaccine_antigen(cfg, times_min, t0: float, t1: float) -> float:
    """Antigen a vaccine's doses at ``times_min`` deliver over ``[t0, t1)`` (min), depot release included."""
    tau = cfg.release_day * 1440.0
    total = 0.0
    for s in times_min:
        if tau == 0.0:
            total += cfg.antigen_dose if t0 <= s < t1 else 0.0
        elif s < t1:
            total += cfg.antigen_dose * (math.exp(-max(t0 - s, 0.0) / tau) - math.exp(-(t1 - s) / tau))
    return total


@rule("vaccination", "systemic")
def vaccination(world, params, rng, intents) -> None:
    """Antigen of every vaccine's doses over the step, for priming (``world.systemic["vaccine_antigen"]``)."""
    t0, t1 = world.time_min, world.time_min + world.dt_min
    total = 0.0
    for name, (cfg, times) in params.vaccines.items():
        params.vaccine_doses_this_step[name] = sum(1 for s in times if t0 <= s < t1)
        total += vaccine_antigen(cfg, times, t0, t1)
    world.systemic["vaccine_antigen"] = total


@rule("antigen_restoration", "update", writes=("tumour.antigenicity",),
      needs=("table:tumour", "layer:occupancy_dnmt1", "field:oxygen"))
def antigen_restoration(world, params, rng, intents) -> None:
    """Raise tumour antigenicity toward ``q_max`` at ``k θ_DNMT1 w`` (DNA-demethylating drugs, cycling cells)."""
    xp = world.xp
    cells = world.tables["tumour"]
    if len(cells) == 0:
        return
    law = params.effects.epigenetic
    theta = world.layers["occupancy_dnmt1"].reshape(-1).take(cells["voxel"]).astype(np.float64)
    rate = law.restoration_per_day / 1440.0 * theta * cycling_weight(world, params.tumour, cells)
    q = cells["antigenicity"].astype(np.float64)
    gap = xp.maximum(law.antigenicity_restored - q, 0.0)
    cells["antigenicity"] = (q + gap * -xp.expm1(-rate * world.dt_min)).astype(np.float32)
