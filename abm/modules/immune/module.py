"""The immune module: CD8 T cells, Tregs, macrophages and MDSCs in the immune layer, priming, phenotype.

Owns the ``tcell`` and ``macrophage`` tables on the ``immune`` capacity layer (``immune.immune_capacity``
places per voxel), with ``immune.mdsc.enabled`` also the ``mdsc`` table and the ``ccl2`` field; the
``chemokine`` and ``ifng`` fields, the deaths of tumour cells killed by T cells and
macrophages, the T-cell and macrophage rules, priming (state ``state/immune/priming``) and the infiltration
and phenotype readouts.

Priming: antigen released by dying tumour cells (the sum of their antigenicity, plus the extra antigen of
immunogenic deaths, :func:`abm.modules.common.immunogenic_antigen`) raises it logistically to 1,
``p += a antigen (1 - p)``; it relaxes without antigen, ``p -= d dt p``. Vaccine doses (``[vaccine.<name>]``)
add their antigen of the step (``world.systemic["vaccine_antigen"]``, written by the therapy module); innate
agonists (STING, TLR7/8) add ``Σ k θ̄ dt (1 - p)``, θ̄ their mean occupancy over tumour cells.

Adoptive transfer (``[cell_therapy.<name>]``) adds the ``product`` column to the ``tcell`` table and the
transferred-cell readouts; the therapy module infuses the cells, the T-cell rules apply the product's laws.
"""

from __future__ import annotations

import numpy as np

from abm.config import ConfigError
from abm.engine.module import DeathCause, Declaration, Readout, TableSpec
from abm.modules.base import BaseModule, Params
from abm.modules.common import (
    immunogenic_antigen,
    initial_region,
    innate_agonism,
    lesion_regions,
    region_sizes,
    solute_spec,
)
from abm.modules.immune import macrophage, mdsc, tcell
from abm.modules.immune.common import M0, M1, M2
from kernels.lattice import Stencil, compact, cube_offsets

__all__ = ["PHENOTYPE_CODES", "ImmuneModule"]

#: Immune-phenotype codes stored in the ``immune_phenotype_code`` time series.
PHENOTYPE_CODES = {"no_tumour": 0, "inflamed": 1, "excluded": 2, "desert": 3}

#: Canonical order: macrophage rules, then T-cell rules, then MDSC rules.
RULES = {**macrophage.RULES, **tcell.RULES, **mdsc.RULES}

#: Readouts of the MDSCs (declared only with ``immune.mdsc.enabled``).
MDSC_READOUTS = [
    Readout("mdsc_cells", "cells", "count", "myeloid-derived suppressor cells"),
    Readout("mdsc_recruited", "cells", "event", "MDSCs recruited"),
    Readout("mdsc_deaths", "cells", "event", "MDSC deaths"),
    Readout("ccl2_max", "a.u.", "level", "maximal CCL2"),
]


def _voxel_counts(xp, voxels, size: int, where=None):
    """Cells per voxel (float64, flat lattice), only those ``where`` is true when given.

    A scatter-add of ones (zeros where ``where`` is false): ``bincount`` and a mask would each be a host sync on
    a GPU.
    """
    out = xp.zeros(size, dtype=np.float64)
    xp.add.at(out, voxels, 1.0 if where is None else where.astype(np.float64))
    return out


def _readouts(ndim: int) -> list[Readout]:
    density = "cells/mm^2" if ndim == 2 else "cells/mm^3"
    counts = {
        "tcell_effector": "CD8 effector T cells", "tcell_treg": "regulatory T cells",
        "tcell_exhausted": "exhausted effectors", "tcell_engaged": "effectors engaged with a tumour cell",
        "macrophage_m0": "M0 macrophages", "macrophage_m1": "M1 macrophages", "macrophage_m2": "M2 macrophages",
        "cd8_core": "effectors in the tumour core", "cd8_margin": "effectors in the invasive margin",
        "cd8_stroma": "effectors in the stroma",
    }
    events = {
        "tumour_killed_by_tcell": "tumour cells killed by T cells", "tumour_killed_by_macrophage":
        "tumour cells killed by M1 macrophages", "kills": "tumour cells killed by immune cells",
        "tcell_deaths": "T-cell deaths", "macrophage_deaths": "macrophage deaths",
        "tcell_recruited": "effectors recruited", "treg_recruited": "Tregs recruited",
        "macrophage_recruited": "macrophages recruited",
    }
    out = [Readout(k, "cells", "count", v) for k, v in counts.items()]
    out += [Readout(k, "cells", "event", v) for k, v in events.items()]
    out += [
        Readout("antigen_released", "-", "event", "summed antigenicity of the tumour cells that died in the step"),
        Readout("ecm_mean_tumour", "-", "level", "mean ECM density over the lesion (core and margin)"),
        Readout("ecm_mean_stroma", "-", "level", "mean ECM density over the stroma"),
        Readout("ifng_max", "ng/mL", "level", "maximal IFN-γ"),
        Readout("chemokine_max", "a.u.", "level", "maximal chemokine"),
        Readout("exhausted_fraction", "-", "ratio", "exhausted fraction of effectors"),
        Readout("effector_treg_ratio", "-", "ratio", "effectors per Treg (per 1 when none)"),
        Readout("m1_m2_ratio", "-", "ratio", "M1 per M2 macrophage (per 1 when none)"),
        Readout("antigenicity_mean", "-", "level", "mean antigenicity of tumour cells"),
        Readout("pdl1_mean", "-", "level", "mean PD-L1 of tumour cells"),
        Readout("priming", "-", "level", "lymph-node priming (0..1)"),
        Readout("immune_phenotype_code", "-", "code", "0 no tumour, 1 inflamed, 2 excluded, 3 desert"),
    ]
    out += [Readout(f"cd8_density_{r}", density, "level", f"CD8 effector density in the {r}")
            for r in ("core", "margin", "stroma")]
    return out


def _transfer_readouts(products) -> list[Readout]:
    """Readouts of adoptively transferred T cells (none without ``[cell_therapy.<name>]``)."""
    if not products:
        return []
    out = [Readout("transferred_alive", "cells", "count", "adoptively transferred T cells alive"),
           Readout("tumour_killed_by_transferred", "cells", "event", "tumour cells killed by transferred T cells")]
    for name, _ in products:
        out += [Readout(f"transferred_{name}_alive", "cells", "count", f"{name} T cells alive"),
                Readout(f"tumour_killed_by_{name}", "cells", "event", f"tumour cells killed by {name} T cells")]
    return out


def _mdsc_readouts(ndim: int) -> list[Readout]:
    density = "cells/mm^2" if ndim == 2 else "cells/mm^3"
    return MDSC_READOUTS + [Readout(f"mdsc_density_{r}", density, "level", f"MDSC density in the {r}")
                            for r in ("core", "margin", "stroma")]


class ImmuneModule(BaseModule):
    """T cells, Tregs, macrophages and (when enabled) MDSCs; priming; infiltration readouts."""

    name = "immune"
    seed_order = 3

    @classmethod
    def from_config(cls, config, namespaced: bool = True) -> ImmuneModule:
        """The module with the sections of ``config`` it reads."""
        im = config.immune
        params = Params(
            immune=im, tcell=im.tcell, macrophage=im.macrophage, ecm=im.ecm, phenotype=im.phenotype,
            resistance=config.resistance, capacity=im.immune_capacity, fields=config.fields,
            initial=config.initial.tumour, ring_inner_um=im.caf.stroma_inner_um, ring_width_um=im.caf.stroma_width_um,
            priming=float(im.priming_initial), ndim=config.ndim, effects=config.effects, namespaced=namespaced,
            products=list(config.cell_therapy.items()),
            mdsc=im.mdsc,
        )
        return cls(params, [*im.tcell.rules, *im.macrophage.rules, *(im.mdsc.rules if im.mdsc.enabled else [])])

    def declare(self) -> Declaration:
        """Tables, the immune layer, chemokine, IFN-γ (and CCL2), the causes of death, rules and readouts."""
        f = self.params.fields
        with_mdsc = self.params.mdsc.enabled
        solutes = [("chemokine", f.chemokine), ("ifng", f.ifng)] + ([("ccl2", f.ccl2)] if with_mdsc else [])
        tables = [TableSpec("tcell", tcell.columns(self.params.products), layer="immune", age_column="age_min",
                            deaths_readout="tcell_deaths"),
                  TableSpec("macrophage", macrophage.COLUMNS, layer="immune", age_column="age_min",
                            deaths_readout="macrophage_deaths")]
        if with_mdsc:
            tables.append(TableSpec("mdsc", mdsc.COLUMNS, layer="immune", age_column="age_min",
                                    deaths_readout="mdsc_deaths"))
        return Declaration(
            occupancy={"immune": self.params.capacity},
            fields=[solute_spec(name, sec) for name, sec in solutes],
            tables=tables,
            death_causes=[
                DeathCause("tumour", "killed_tcell", 3, "tumour_killed_by_tcell"),
                DeathCause("tumour", "killed_macrophage", 4, "tumour_killed_by_macrophage"),
                DeathCause("tcell", "lifespan", 1), DeathCause("tcell", "kill_limit", 2),
                DeathCause("macrophage", "lifespan", 1), DeathCause("mdsc", "lifespan", 1),
            ],
            rules=self.rules(RULES),
            readouts=_readouts(self.params.ndim) + _transfer_readouts(self.params.products)
            + (_mdsc_readouts(self.params.ndim) if with_mdsc else []),
        )

    def seed(self, world, rng) -> None:
        """M0 macrophages in the stroma ring around the seeded nodule, at ``immune.initial_macrophages``."""
        xp, p = world.xp, self.params
        inside, r_um = initial_region(world, p.initial)
        inner = p.initial.radius_um + p.ring_inner_um
        ring = (r_um > inner) & (r_um <= inner + p.ring_width_um) & ~inside & ~world.layers["vessels"].reshape(-1)
        u_mac = rng.random(world.size)
        mac_vox = xp.nonzero(ring & (u_mac < p.immune.initial_macrophages))[0].astype(np.int64)
        k = mac_vox.shape[0]
        world.tables["macrophage"].append(voxel=mac_vox, state=xp.zeros(k, dtype=np.int8), age_min=xp.zeros(k))
        n = p.immune.initial_tcells
        if n:
            inner = p.initial.radius_um + p.immune.initial_tcell_gap_um
            shell = xp.nonzero((r_um > inner) & (r_um <= inner + p.immune.initial_tcell_shell_um))[0]
            if shell.shape[0] < n:
                raise ConfigError([f"immune.initial_tcells = {n}: the seeding shell ({inner:g} to "
                                   f"{inner + p.immune.initial_tcell_shell_um:g} µm from the centre) has only "
                                   f"{shell.shape[0]} voxels on this grid; lower the count or widen "
                                   "immune.initial_tcell_shell_um"])
            order = xp.argsort(rng.random(shell.shape[0]))  # a uniform random subset of distinct voxels
            voxels = xp.sort(shell[order[:n]]).astype(np.int64)
            cols = {c: xp.full(n, v) for c, v in tcell.new_cell(p.products).items()}
            world.tables["tcell"].append(voxel=voxels, is_treg=xp.zeros(n, dtype=bool), **cols)

    def attach(self, world) -> None:
        """Build the suppression window and remember the geometry of the density readouts."""
        radius = int(round(self.params.tcell.suppression_radius_um / world.spacing_um))
        self.params.suppression_window = Stencil(world.shape, cube_offsets(world.ndim, radius), world.xp)
        self._ndim, self._spacing = world.ndim, world.spacing_um
        self.params.product_laws = tcell.product_laws(world.xp, self.params.products, self.params.tcell)

    def commit(self, world, record, intents, events: dict) -> None:
        """Antigen released by the tumour cells that died (immunogenic deaths release more); priming follows it."""
        xp = world.xp
        dead = record.dead.get("tumour")
        antigen = dead[1]["antigenicity"].astype(np.float64).sum() if dead is not None else xp.zeros(())
        events["antigen_released"] = antigen
        extra = immunogenic_antigen(world, dead)
        if extra is not None:
            antigen = antigen + extra
        if "vaccine_antigen" in world.systemic:  # vaccine doses of the step (therapy module)
            antigen = antigen + world.systemic["vaccine_antigen"]
        if self.params.products:
            self._count_transferred_kills(world, intents, events)
        im = self.params.immune
        # Priming stays on the backend, a 0-d float64 array (the same double arithmetic as on the host): reading
        # the antigen on the host would make every step wait for the device.
        p = xp.asarray(self.params.priming, dtype=np.float64)
        gain = im.priming_per_antigen * (1.0 + self.params.effects.ctla4.priming_boost
                                         * world.systemic.get("occupancy_ctla4_plasma", 0.0))  # anti-CTLA-4
        p = p + (gain * xp.asarray(antigen, dtype=np.float64) + self._innate_priming(world)) * (1.0 - p)
        p = p - im.priming_decay_per_min * world.dt_min * p
        self.params.priming = xp.clip(p, 0.0, 1.0)

    def _innate_priming(self, world):
        """Priming drive of innate agonists over the step, ``Σ k θ̄ dt`` (θ̄: mean occupancy over tumour cells).

        Type-I interferon and TLR signalling activate the tumour's dendritic cells, which cross-prime in the lymph
        node; ``k`` is each agonist target's ``priming_per_day``. 0 without agonists or tumour cells, else a 0-d
        float64 array.
        """
        vox = world.tables["tumour"]["voxel"]
        terms = innate_agonism(world, self.params.effects.innate, vox)
        if not terms or vox.shape[0] == 0:
            return 0.0
        drive = sum(s.priming_per_day / 1440.0 * theta.mean() for s, theta in terms)
        return world.xp.asarray(drive, dtype=np.float64) * world.dt_min

    def _count_transferred_kills(self, world, intents, events: dict) -> None:
        """Kills by transferred cells in the step, per product and in all (successful kill draws)."""
        xp = world.xp
        counts = xp.zeros(len(self.params.products) + 1, dtype=np.int64)
        for product, kill in intents.notes.get("transferred_kills", []):  # a scatter-add: bincount syncs on a GPU
            xp.add.at(counts, product, kill.astype(np.int64))
        for k, (name, _) in enumerate(self.params.products, start=1):
            events[f"tumour_killed_by_{name}"] = counts[k]
        events["tumour_killed_by_transferred"] = counts[1:].sum()

    def state(self, world) -> dict:
        """Priming."""
        return {"priming": float(self.params.priming)}

    def load_state(self, world, state: dict | None) -> None:
        """Restore priming (a module new at a branch starts at ``immune.priming_initial``)."""
        self.params.priming = float(state["priming"]) if state else float(self.params.immune.priming_initial)

    # ------------------------------------------------------------------------------------------------------
    def regions(self, world):
        """Core, margin and stroma masks (see :func:`abm.modules.common.lesion_regions`)."""
        return lesion_regions(world, self.params.phenotype.margin_um)

    def measure(self, world) -> dict:
        """Immune counts, infiltration per region, ECM per region, field maxima (backend scalars)."""
        xp = world.xp
        t, m, tum = world.tables["tcell"], world.tables["macrophage"], world.tables["tumour"]
        eff = ~t["is_treg"]
        core, margin, stroma = self.regions(world)
        n_core, n_margin, n_stroma = region_sizes(world, self.params.phenotype.margin_um)
        cd8 = _voxel_counts(xp, t["voxel"], world.size, eff).reshape(world.shape)
        lesion = core | margin
        ecm = world.layers["ecm"]
        out = {f"transferred_{name}_alive": xp.count_nonzero(t["product"] == k)
               for k, (name, _) in enumerate(self.params.products, start=1)}
        if self.params.products:
            out["transferred_alive"] = xp.count_nonzero(t["product"] > 0)
        return out | {
            "tcell_effector": xp.count_nonzero(eff),
            "tcell_treg": xp.count_nonzero(t["is_treg"]),
            "tcell_exhausted": xp.count_nonzero(eff & (t["exhaustion"] >= 1.0)),
            "tcell_engaged": xp.count_nonzero(t["engaged"]),
            "macrophage_m0": xp.count_nonzero(m["state"] == M0),
            "macrophage_m1": xp.count_nonzero(m["state"] == M1),
            "macrophage_m2": xp.count_nonzero(m["state"] == M2),
            "antigenicity_sum": tum["antigenicity"].astype(np.float64).sum(),
            "pdl1_sum": tum["pdl1"].astype(np.float64).sum(),
            # Whole-number counts: summed exactly in any order, so over the lattice with 0 outside the region.
            "cd8_core": xp.where(core, cd8, 0.0).sum(),
            "cd8_margin": xp.where(margin, cd8, 0.0).sum(),
            "cd8_stroma": xp.where(stroma, cd8, 0.0).sum(),
            "core_voxels": n_core,
            "margin_voxels": n_margin,
            "stroma_voxels": n_stroma,
            "ecm_mean_tumour": compact(ecm, lesion, n_core + n_margin).astype(np.float64).sum()
            / max(1, n_core + n_margin),
            "ecm_mean_stroma": compact(ecm, stroma, n_stroma).astype(np.float64).sum() / max(1, n_stroma),
            "ifng_max": world.fields["ifng"].data.max(),
            "chemokine_max": world.fields["chemokine"].data.max(),
            "priming": self.params.priming,
            **(self._measure_mdsc(world, core, margin, stroma) if "mdsc" in world.tables else {}),
        }

    @staticmethod
    def _measure_mdsc(world, core, margin, stroma) -> dict:
        """MDSC count, count per region (turned into densities by :meth:`derive`) and maximal CCL2."""
        xp = world.xp
        n = _voxel_counts(xp, world.tables["mdsc"]["voxel"], world.size).reshape(world.shape)
        return {"mdsc_cells": n.sum(), "mdsc_core": xp.where(core, n, 0.0).sum(),
                "mdsc_margin": xp.where(margin, n, 0.0).sum(), "mdsc_stroma": xp.where(stroma, n, 0.0).sum(),
                "ccl2_max": world.fields["ccl2"].data.max()}

    def derive(self, out: dict) -> None:
        """Ratios, fractions, densities (per mm² in 2-D, per mm³ in 3-D) and the phenotype code."""
        n_tumour = out["tumour_cells"]
        out["kills"] = out["tumour_killed_by_tcell"] + out["tumour_killed_by_macrophage"]
        out["exhausted_fraction"] = out["tcell_exhausted"] / out["tcell_effector"] if out["tcell_effector"] else 0.0
        out["effector_treg_ratio"] = out["tcell_effector"] / max(out["tcell_treg"], 1.0)
        out["m1_m2_ratio"] = out["macrophage_m1"] / max(out["macrophage_m2"], 1.0)
        antigenicity, pdl1 = out.pop("antigenicity_sum"), out.pop("pdl1_sum")
        out["antigenicity_mean"] = antigenicity / n_tumour if n_tumour else 0.0
        out["pdl1_mean"] = pdl1 / n_tumour if n_tumour else 0.0
        voxel_mm = (self._spacing / 1000.0) ** self._ndim
        for region in ("core", "margin", "stroma"):
            n_vox = out.pop(f"{region}_voxels")
            out[f"cd8_density_{region}"] = out[f"cd8_{region}"] / (n_vox * voxel_mm) if n_vox else 0.0
            if f"mdsc_{region}" in out:
                n_mdsc = out.pop(f"mdsc_{region}")
                out[f"mdsc_density_{region}"] = n_mdsc / (n_vox * voxel_mm) if n_vox else 0.0
        ph = self.params.phenotype
        if n_tumour == 0:
            code = PHENOTYPE_CODES["no_tumour"]
        elif out["cd8_density_core"] >= ph.inflamed_core_per_mm2:
            code = PHENOTYPE_CODES["inflamed"]
        elif max(out["cd8_density_margin"], out["cd8_density_stroma"]) >= ph.excluded_margin_per_mm2:
            code = PHENOTYPE_CODES["excluded"]
        else:
            code = PHENOTYPE_CODES["desert"]
        out["immune_phenotype_code"] = float(code)
