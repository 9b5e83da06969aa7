"""Cytotoxic therapies: chemotherapy and ADC payloads kill cycling tumour cells; radiotherapy kills by the LQ law.

**Chemotherapy** (``[therapy.<name>] kind = "chemotherapy"``, rule ``chemotherapy``, behaviour phase). A tumour cell
dies in a step with

    p = 1 - exp(-k_max E(c) w dt),   E(c) = c^n / (c^n + EC50^n),   w = ramp(pO2) [free neighbour]

with c the drug field at the cell (nM, free drug), ``w`` its cycling weight: the division rate relative to the
maximal one (0 below the proliferation threshold, 1 from the saturation pO2, the tumour module's ramp) times 0
for a contact-inhibited (``quiescent``) cell. Quiescent and hypoxic cells are spared. Lymphotoxicity: a T cell
dies with ``1 - exp(-k_T E(c) dt)``. Each drug kills with its own cause ``chemo_<name>`` whose
``immunogenicity`` is the drug's ICD strength (extra antigen toward priming).

**Radiotherapy** (``[radiotherapy.<name>]``, rule ``radiation``, behaviour phase). At each fraction every tumour
cell, CAF, T cell and macrophage inside the course's region survives with the linear-quadratic probability

    S = exp(-(α D_eff + β D_eff²)),   D_eff = D OMF(pO2),   OMF = (OER_max pO2 + K) / (OER_max (pO2 + K))

(the Alper-Howard-Flanders oxygen modification, 1 when well oxygenated, 1/OER_max under anoxia); the doomed die
at once (cause ``radiation``), not at their next mitosis.

**Antibody-drug conjugate** (``kind = "antibody_drug_conjugate"``, rule ``adc_payload``, behaviour phase). The ADC
binds its tumour-surface target (TROP2) like any antibody; a tumour cell dies in a step with

    p = 1 - exp(-k_max θ_ADC w dt),   θ_ADC = (c/Kd) / (1 + Σⱼ cⱼ/Kdⱼ)

θ_ADC the target's occupancy held by this ADC (its share when several drugs bind the target), ``w`` the cycling
weight (the payloads, topoisomerase-I inhibitors, kill in S phase). Every tumour cell carries the target; other
cells do not. Cause ``adc_<name>`` with the payload's ``icd_strength`` as immunogenicity.
"""

from __future__ import annotations

import numpy as np

from abm.engine.module import rule
from abm.modules.common import hill, probability, ramp

__all__ = ["RADIATED_TABLES", "Course", "adc_payload", "bound_share", "chemotherapy", "cycling_weight", "lq_survival",
           "oxygen_modification", "radiation", "region_mask"]

#: The tables a fraction reaches, and the ``[effects.radiation]`` entry of their radiosensitivity.
RADIATED_TABLES = ("tumour", "caf", "tcell", "macrophage")


def lq_survival(dose_gy, alpha_per_gy: float, beta_per_gy2: float, xp):
    """Linear-quadratic survival ``exp(-(α D + β D²))`` of one acute fraction of ``dose_gy`` (Gy)."""
    return xp.exp(-(alpha_per_gy * dose_gy + beta_per_gy2 * dose_gy * dose_gy))


def oxygen_modification(po2_mmhg, oer_max: float, k_mmhg: float, xp):
    """Oxygen modification factor ``(OER_max pO2 + K) / (OER_max (pO2 + K))``: 1/OER_max at 0 mmHg, 1 at high pO2."""
    po2 = xp.maximum(po2_mmhg, 0.0)
    return (oer_max * po2 + k_mmhg) / (oer_max * (po2 + k_mmhg))


def region_mask(world, region):
    """Voxels a course irradiates (bool, flat): all, those whose centre lies in the sphere, or in the box."""
    xp = world.xp
    if region.shape == "whole":
        return xp.ones(world.size, dtype=bool)
    centres = world.voxel_centres_um()
    if region.shape == "sphere":
        centre = region.center_um or [n * world.spacing_um / 2 for n in world.shape]
        r2 = sum((c - c0) ** 2 for c, c0 in zip(centres, centre))
        return (r2 <= region.radius_um**2).reshape(-1)
    inside = xp.ones(world.shape, dtype=bool)
    for c, lo, hi in zip(centres, region.lower_um, region.upper_um):
        inside &= (c >= lo) & (c <= hi)
    return inside.reshape(-1)


class Course:
    """Host-side state of one radiotherapy course: its fraction times and how many were given."""

    def __init__(self, name: str, cfg):
        self.name, self.cfg = name, cfg
        self.times_min = cfg.fraction_times_min()
        self.fractions_given = 0
        self.mask = None  # set when the module attaches to a world

    def advance(self, t0: float, t1: float) -> int:
        """Count the fractions due in ``[t0, t1)`` (min) as given; return how many."""
        n = sum(1 for t in self.times_min if t0 <= t < t1)
        self.fractions_given += n
        return n


def cycling_weight(world, tumour, cells):
    """Relative division rate of each tumour cell: the pO2 ramp of proliferation, 0 when contact-inhibited."""
    o2 = world.fields["oxygen"].data.reshape(-1).take(cells["voxel"]).astype(np.float64)
    r = ramp(o2, tumour.proliferation_o2_threshold_mmHg, tumour.proliferation_o2_saturation_mmHg, world.xp)
    return r * ~cells["quiescent"]


@rule("chemotherapy", "behaviour", needs=("field:oxygen",))
def chemotherapy(world, params, rng, intents) -> None:
    """Record chemotherapy kills: cycling tumour cells (Emax on the local drug level) and T cells (lymphotoxicity)."""
    xp, dt = world.xp, world.dt_min
    for name, drug in params.cytotoxic.items():
        if drug.doses_given == 0:  # no drug yet: no draw either
            continue
        law = drug.cfg.cytotoxic
        level = world.fields[name].data.reshape(-1)
        cells = world.tables["tumour"]
        if len(cells):
            effect = hill(level.take(cells["voxel"]).astype(np.float64), law.ec50_nM, law.hill, xp)
            rate = law.kill_max_per_day / 1440.0 * effect * cycling_weight(world, params.tumour, cells)
            intents.kill("tumour", rng.random(len(cells)) < probability(rate, dt, xp), f"chemo_{name}")
        tcells = world.tables.get("tcell")
        if law.tcell_kill_max_per_day > 0 and tcells is not None and len(tcells):
            effect = hill(level.take(tcells["voxel"]).astype(np.float64), law.ec50_nM, law.hill, xp)
            rate = law.tcell_kill_max_per_day / 1440.0 * effect
            intents.kill("tcell", rng.random(len(tcells)) < probability(rate, dt, xp), "chemotherapy")


def bound_share(world, binders, name: str, voxels):
    """Occupancy of its target held by drug ``name`` at ``voxels``: (c/Kd) / (1 + Σⱼ cⱼ/Kdⱼ) over the binders."""
    total = 0.0
    own = None
    for drug, kd in binders:
        s = world.fields[drug].data.reshape(-1).take(voxels).astype(np.float64) / kd
        total = total + s
        if drug == name:
            own = s
    return own / (1.0 + total)


@rule("adc_payload", "behaviour", needs=("field:oxygen",))
def adc_payload(world, params, rng, intents) -> None:
    """Record kills by ADC payloads: ``k_max θ_ADC w`` on cycling tumour cells, θ_ADC the ADC's bound share."""
    xp, dt = world.xp, world.dt_min
    cells = world.tables["tumour"]
    for name, drug in params.adcs.items():
        if drug.doses_given == 0 or len(cells) == 0:  # no drug yet: no draw either
            continue
        binders = params.tissue_binders[drug.slug]
        theta = bound_share(world, binders, name, cells["voxel"])
        rate = drug.cfg.payload.kill_max_per_day / 1440.0 * theta * cycling_weight(world, params.tumour, cells)
        intents.kill("tumour", rng.random(len(cells)) < probability(rate, dt, xp), f"adc_{name}")


@rule("radiation", "behaviour", needs=("field:oxygen",))
def radiation(world, params, rng, intents) -> None:
    """Deliver the fractions due this step: LQ survival at the oxygen-modified dose, in each course's region."""
    xp, t0 = world.xp, world.time_min
    rad = params.effects.radiation
    o2 = world.fields["oxygen"].data.reshape(-1)
    for name, course in params.courses.items():
        n = course.advance(t0, t0 + world.dt_min)
        params.fractions_this_step[name] = n
        if n == 0:
            continue
        for table in RADIATED_TABLES:
            agents = world.tables.get(table)
            if agents is None or len(agents) == 0:
                continue
            vox = agents["voxel"]
            lq = getattr(rad, table)
            dose = course.cfg.dose_Gy * oxygen_modification(o2.take(vox).astype(np.float64), rad.oer_max,
                                                            rad.oer_k_mmHg, xp)
            survival = lq_survival(dose, lq.alpha_per_Gy, lq.beta_per_Gy2, xp) ** n
            die = course.mask.take(vox) & (rng.random(len(agents)) >= survival)
            intents.kill(table, die, "radiation")
