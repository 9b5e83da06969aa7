"""The therapy module: drugs, PK, delivery, target occupancy; chemo- and radiotherapy; cell therapies, vaccines.

Per drug ``<name>`` (a table ``[therapy.<name>]``):

- **PK** (systemic phase): a one- or two-compartment model (optionally with an absorption depot) advanced with its
  exact propagator (:mod:`kernels.pk`), the step split at every dose and infusion boundary; doses in mg/kg
  times ``patient.body_weight_kg``, in mg/m² times ``patient.body_surface_area_m2``, or flat mg. Plasma level
  ``C_p = central amount / V1`` (mg/L), in nM ``C_p 1e3 / MW[kDa]``.
- **Delivery** (exchange phase): the drug field ``<name>`` (nM) exchanges with plasma at every vessel voxel,
  ``dc/dt = P (S/V) perfusion (f_u C_p - c)``, through the vasculature's implicit ``supply`` (the mechanism
  oxygen uses); it diffuses with the drug's own ``D`` (lowered by ECM for large molecules) and is cleared
  locally at ``ln 2 / t½``. Lattice faces are no-flux: drug enters through vessels, and an intratumoral drug
  (``route = "intratumoral"``) also in its injected region, from a depot that empties at ``ka`` into the region
  (spread over the injectate volume) and the plasma alike.
- **Occupancy** (signal phase): one lattice per target bound by any drug, competitive,
  ``θ = Σ(Cᵢ/Kdᵢ) / (1 + Σ Cᵢ/Kdᵢ)`` (a bispecific enters two sums), written as the layer
  ``occupancy_<slug>``; CTLA-4 also gets the plasma occupancy (lymph node), ``world.systemic``; VEGF also its
  running mean ``occupancy_vegf_sustained`` (``dm/dt = (θ - m)/τ``), which vessel pruning reads.
- **Nanoparticle carriers** (``kind = "nanoparticle"``, :mod:`abm.modules.therapy.carrier`): the carrier's PK with
  its encapsulated and released payloads in one exact system; in tissue a carrier field and one encapsulated field
  per payload (size-dependent extravasation, diffusion and ECM hindrance, uptake by cells) release into each
  payload's own drug field, which binds its targets like any drug (docs/THERAPIES.md §5).
- **Cell effects** (behaviour phase): anti-CTLA-4 depletes Tregs (Fc-mediated) at a rate rising with occupancy;
  FAP-targeting kills CAFs. Every other target acts where its mechanism lives, through
  :func:`abm.modules.common.blocked` (docs/THERAPIES.md lists the read points).
- **Cytotoxic** (behaviour phase, :mod:`abm.modules.therapy.cytotoxic`): a chemotherapy kills cycling tumour cells
  and, with lymphotoxicity, T cells; an antibody-drug conjugate kills cycling tumour cells by the share of their
  target it binds; radiotherapy fractions kill every cell type by the linear-quadratic law at the
  oxygen-modified dose. Their tumour deaths are immunogenic (extra antigen toward priming).
- **Cellular and immunising** (:mod:`abm.modules.therapy.cellular`): adoptive T-cell transfers infuse CAR-T or TIL
  products (behaviour phase), vaccines add antigen to priming (systemic phase), and drugs binding DNMT1 restore
  tumour antigenicity (update phase).
- **Oncolytic virus** (``[virus.<name>]``, :mod:`abm.modules.therapy.virus`): a virus field that infects tumour
  cells, which lyse after an eclipse and release a burst of virus (at this module's commit); lysis is immunogenic.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np

from abm.config import ConfigError
from abm.engine.module import DeathCause, Declaration, FieldSpec, LayerSpec, Readout, rule
from abm.modules.base import BaseModule, Params
from abm.modules.common import immunogenic_antigen, lesion_regions, probability, region_sizes
from abm.modules.therapy.carrier import (
    Account,
    Carrier,
    carrier_commit,
    carrier_exchange,
    ecm_hindrance,
    pct_injected_dose,
)
from abm.modules.therapy.carrier_config import CarrierConfig
from abm.modules.therapy.cellular import Infusions, adoptive_transfer, antigen_restoration, vaccination
from abm.modules.therapy.config import target_slug
from abm.modules.therapy.cytotoxic import RADIATED_TABLES, Course, adc_payload, chemotherapy, radiation, region_mask
from abm.modules.therapy.virus import ANTIVIRAL, Virus, virus_exchange, virus_infection
from abm.modules.vasculature.module import supply
from kernels.lattice import compact
from kernels.pk import advance_with_doses, compartment_model

__all__ = ["SUSTAINED_VEGF", "TherapyModule", "dose_events"]

#: Running mean of the VEGF occupancy over ``effects.vegf.sustained_day`` (vessel pruning reads it).
SUSTAINED_VEGF = "occupancy_vegf_sustained"

_NOFLUX = SimpleNamespace(default="noflux", value=0.0, faces={})

#: Drug level (nM) below which a drug field's exact solve counts as converged: 7 decades under the smallest Kd or
#: EC50 of the library (0.027 nM), so it never matters, yet a drug washing out over many decades (a short-lived
#: chemotherapy between cycles) no longer stalls the float32 solve on its relative criterion.
DRUG_ABSOLUTE_TOLERANCE_NM = 1e-9



def dose_events(drug, patient) -> list[tuple[float, float, float]]:
    """``(start_min, mg, duration_min)`` of every dose of ``drug`` (a resolved ``DrugConfig``), sorted.

    The dose is ``dose_mg``, ``dose_mg_per_kg`` x ``patient.body_weight_kg`` or ``dose_mg_per_m2`` x
    ``patient.body_surface_area_m2``.
    """
    sch = drug.schedule
    if sch.dose_mg is not None:
        mg = sch.dose_mg
    elif sch.dose_mg_per_kg is not None:
        mg = sch.dose_mg_per_kg * patient.body_weight_kg
    else:
        mg = sch.dose_mg_per_m2 * patient.body_surface_area_m2
    return [(t, mg, sch.infusion_min) for t in sch.dose_times_min()]


def carrier_fields(params) -> list[FieldSpec]:
    """Per carrier: the carrier (mg/L), per payload the encapsulated (``_loaded``) and the released payload (nM).

    The carrier and its encapsulated payloads diffuse alike (Stokes-Einstein D, size-dependent ECM hindrance, local
    clearance); a released payload is a drug field with the payload's own transport.
    """
    out = []
    for name, c in params.carriers.items():
        tc = c.cfg.transport
        spec = dict(diffusivity_um2_per_min=c.diffusivity,
                    decay_per_min=math.log(2.0) / tc.tissue_clearance_half_life_min, initial=0.0, boundary=_NOFLUX,
                    ecm_hindered=True, solver="exact", absolute_tolerance=DRUG_ABSOLUTE_TOLERANCE_NM,
                    ecm_hindrance=ecm_hindrance(c.radius_nm, params.ecm_hindrance, tc.ecm_fibre_radius_nm))
        out.append(FieldSpec(name=name, unit="mg/L", **spec))
        for p in c.payloads:
            out.append(FieldSpec(name=p.loaded, unit="nM", **spec))
            t = p.cfg.tissue
            out.append(FieldSpec(p.name, "nM", t.free_diffusivity_um2_per_min,
                                 math.log(2.0) / t.tissue_clearance_half_life_min, 0.0, _NOFLUX,
                                 ecm_hindered=t.ecm_hindered, solver=t.solver,
                                 absolute_tolerance=DRUG_ABSOLUTE_TOLERANCE_NM))
    return out


def carrier_readouts(params) -> list[Readout]:
    """Readouts of every carrier and of its released payloads."""
    out = []
    for name, c in params.carriers.items():
        out += [Readout(f"plasma_{name}_mg_per_L", "mg/L", "level", f"plasma concentration of carrier {name}"),
                Readout(f"doses_{name}", "doses", "event", f"doses of {name} started in the step"),
                Readout(f"tumour_{name}_pct_id", "%", "level",
                        f"{name} in the reference tumour (free and internalised), % of the injected dose"),
                Readout(f"released_triggered_{name}", "-", "ratio",
                        f"share of the payload released in tissue by {name} where its trigger is >= 1/2")]
        for p in c.payloads:
            out += [Readout(f"plasma_{p.name}_mg_per_L", "mg/L", "level",
                            f"plasma {p.cfg.preset} released from {name}"),
                    Readout(f"tumour_{p.name}_nM", "nM", "level", f"mean {p.name} over tumour cells"),
                    Readout(f"exposure_ratio_{p.name}", "-", "ratio",
                            f"AUC of {p.name} over tumour cells / AUC of unbound {p.name} in plasma, so far")]
    return out


class _Drug:
    """Host-side PK state of one drug."""

    def __init__(self, name, cfg, patient):
        self.name, self.cfg = name, cfg
        pk = cfg.pk
        self.model = compartment_model(pk.model, pk.clearance_L_per_day, pk.central_volume_L, pk.peripheral_volume_L,
                                       pk.intercompartmental_clearance_L_per_day, pk.absorption_per_day)
        self.doses = dose_events(cfg, patient)
        self.bioavailability = pk.bioavailability if self.model.dosing != self.model.central else 1.0
        self.amounts = np.zeros(self.model.size)
        self.doses_given = 0
        self.nM_per_mg_per_L = 1e3 / cfg.molecular_weight_kda
        self.released_mg = 0.0  # left the injection depot in the last step (intratumoral), mg
        self.mask = None  # injected voxels (bool, flat; intratumoral); set when the module attaches to a world

    @property
    def plasma_mg_per_L(self) -> float:
        return float(self.amounts[self.model.central] / self.model.central_volume_L)

    @property
    def plasma_nM(self) -> float:
        return self.plasma_mg_per_L * self.nM_per_mg_per_L

    def advance(self, t0: float, t1: float) -> int:
        """Advance the compartments from ``t0`` to ``t1`` (min) exactly; return the doses started in between.

        An intratumoral drug also records what left its depot over the step (its doses are boluses):
        depot before + doses given x F - depot after.
        """
        depot = self.amounts[self.model.dosing]
        self.amounts, started = advance_with_doses(self.model, self.amounts, self.doses, t0, t1, self.bioavailability)
        self.doses_given += started
        if self.cfg.route == "intratumoral":
            given = sum(mg for s, mg, _ in self.doses if t0 <= s < t1) * self.bioavailability
            self.released_mg = max(float(depot + given - self.amounts[self.model.dosing]), 0.0)
        return started


@rule("pharmacokinetics", "systemic")
def pharmacokinetics(world, params, rng, intents) -> None:
    """Advance every drug's compartments over the step (doses and infusions on their exact times)."""
    t0 = world.time_min
    for d in [*params.drugs.values(), *params.carriers.values()]:
        params.doses_this_step[d.name] = d.advance(t0, t0 + world.dt_min)
    for slug, binders in params.plasma_binders.items():
        s = sum(d.plasma_nM * d.cfg.fraction_unbound / kd for d, kd in binders)
        world.systemic[f"occupancy_{slug}_plasma"] = s / (1.0 + s)


@rule("delivery", "exchange")
def delivery(world, params, rng, intents) -> None:
    """Drug exchange between plasma and tissue at vessel voxels (permeability x surface x perfusion).

    An intratumoral drug also enters its injected region: what left the depot in the step, spread over the
    injectate volume, ``released / V_inj`` (mg/mL -> nM), as a source over the step.
    """
    for d in params.drugs.values():
        t = d.cfg.tissue
        supply(world, d.name, t.vascular_permeability_um_per_min * t.vessel_surface_per_volume_per_um,
               d.plasma_nM * d.cfg.fraction_unbound)
        if d.cfg.route == "intratumoral" and d.released_mg > 0:
            nM = d.released_mg / d.cfg.injection_site.volume_mL * 1e3 * d.nM_per_mg_per_L  # mg/mL = 1e3 mg/L
            world.fields[d.name].source += (d.mask * world.dtype.type(nM / world.dt_min)).reshape(world.shape)


@rule("carrier_delivery", "exchange")
def carrier_delivery(world, params, rng, intents) -> None:
    """Nanoparticle carriers: extravasation, uptake by cells, payload release and released-payload exchange."""
    carrier_exchange(world, params)


@rule("occupancy", "signal")
def occupancy(world, params, rng, intents) -> None:
    """Competitive occupancy of every bound target: θ = Σ(C/Kd) / (1 + Σ C/Kd), one lattice per target."""
    xp = world.xp
    for slug, binders in params.tissue_binders.items():
        s = xp.zeros(world.shape, dtype=world.dtype)
        for name, kd in binders:
            s += world.fields[name].data * world.dtype.type(1.0 / kd)
        layer = world.layers[f"occupancy_{slug}"]
        xp.divide(s, s + world.dtype.type(1.0), out=layer)
    if "vegf" in params.tissue_binders:  # the sustained blockade that vessel pruning reads
        weight = world.dtype.type(-math.expm1(-world.dt_min / (params.effects.vegf.sustained_day * 1440.0)))
        memory = world.layers[SUSTAINED_VEGF]
        memory += (world.layers["occupancy_vegf"] - memory) * weight


@rule("treg_depletion", "behaviour", needs=("table:tcell", "layer:occupancy_ctla4"))
def treg_depletion(world, params, rng, intents) -> None:
    """Anti-CTLA-4 depletes intratumoral Tregs (Fc-mediated) at ``r θ`` (θ: CTLA-4 occupancy at the Treg)."""
    t = world.tables["tcell"]
    rows = world.xp.nonzero(t["is_treg"])[0]
    if rows.shape[0] == 0:
        return
    theta = world.layers["occupancy_ctla4"].reshape(-1).take(t["voxel"][rows]).astype(np.float64)
    rate = params.effects.ctla4.treg_depletion_per_day / 1440.0 * theta
    die = rng.random(rows.shape[0]) < probability(rate, world.dt_min, world.xp)
    intents.kill("tcell", rows[die], "depleted")


@rule("caf_depletion", "behaviour", needs=("table:caf", "layer:occupancy_fap"))
def caf_depletion(world, params, rng, intents) -> None:
    """FAP-targeting kills CAFs at ``r θ`` (θ: FAP occupancy at the CAF)."""
    c = world.tables["caf"]
    if len(c) == 0:
        return
    theta = world.layers["occupancy_fap"].reshape(-1).take(c["voxel"]).astype(np.float64)
    rate = params.effects.fap.caf_depletion_per_day / 1440.0 * theta
    die = rng.random(len(c)) < probability(rate, world.dt_min, world.xp)
    intents.kill("caf", die, "depleted")


RULES = {r.name: r for r in (vaccination, pharmacokinetics, delivery, carrier_delivery, occupancy, antigen_restoration,
                             treg_depletion, caf_depletion, chemotherapy, adc_payload, radiation, adoptive_transfer,
                             virus_exchange, virus_infection)}

#: Priorities of the therapy's causes of death per table (unique within a table across all modules); the
#: chemotherapy causes of tumour cells take ``TUMOUR_CHEMO_PRIORITY + i`` for the i-th chemotherapy, the ADC causes
#: the priorities after them.
RADIATION_PRIORITY = {"tumour": 5, "caf": 2, "tcell": 5, "macrophage": 2}
TUMOUR_CHEMO_PRIORITY = 6
#: Priorities of the oncolytic virus's tumour causes: lysis, and killing of infected cells by antiviral immunity.
TUMOUR_VIRUS_PRIORITY = {"lysis": 110, ANTIVIRAL: 111}
TCELL_CHEMO_PRIORITY = 4


class TherapyModule(BaseModule):
    """Every ``[therapy.<name>]``, ``[radiotherapy.<name>]`` and ``[virus.<name>]`` of the config."""

    name = "therapy"
    seed_order = 4

    @classmethod
    def from_config(cls, config, namespaced: bool = True) -> TherapyModule:
        """The module with the sections of ``config`` it reads."""
        patient = config.patient
        drugs = {name: _Drug(name, d, patient) for name, d in config.therapy.items()
                 if not isinstance(d, CarrierConfig)}
        carriers = {name: Carrier(name, d, dose_events(d, patient)) for name, d in config.therapy.items()
                    if isinstance(d, CarrierConfig)}
        payloads = {p.name: p for c in carriers.values() for p in c.payloads}
        cytotoxic = {name: d for name, d in drugs.items() if d.cfg.kind == "chemotherapy"}
        adcs = {name: d for name, d in drugs.items() if d.cfg.kind == "antibody_drug_conjugate"}
        for d in adcs.values():
            d.slug = target_slug(d.cfg.targets[0].target)
        courses = {name: Course(name, c) for name, c in config.radiotherapy.items()}
        infusions = {name: Infusions(name, k, c) for k, (name, c) in enumerate(config.cell_therapy.items(), start=1)}
        vaccines = {name: (v, v.dose_times_min()) for name, v in config.vaccine.items()}
        tissue_binders: dict[str, list] = {}
        plasma_binders: dict[str, list] = {}
        for name, d in [*drugs.items(), *payloads.items()]:
            for tg in d.cfg.targets:
                slug = target_slug(tg.target)
                tissue_binders.setdefault(slug, []).append((name, tg.kd_nM))
                if slug == "ctla4":  # CTLA-4 acts in the lymph node: plasma occupancy too
                    plasma_binders.setdefault(slug, []).append((d, tg.kd_nM))
        params = Params(drugs=drugs, carriers=carriers, payloads=payloads, accounts={},
                        tissue_binders=tissue_binders, plasma_binders=plasma_binders,
                        effects=config.effects, margin_um=config.immune.phenotype.margin_um,
                        ecm_hindrance=config.immune.ecm.diffusion_hindrance, body_weight_kg=patient.body_weight_kg,
                        doses_this_step={n: 0 for n in [*drugs, *carriers]}, configs=config.therapy,
                        cytotoxic=cytotoxic, courses=courses, fractions_this_step={n: 0 for n in courses},
                        tumour=config.tumour, adcs=adcs, infusions=infusions,
                        infusions_this_step={n: 0 for n in infusions}, vaccines=vaccines,
                        vaccine_doses_this_step={n: 0 for n in vaccines},
                        viruses={name: Virus(name, v) for name, v in config.virus.items()}, namespaced=namespaced)
        rules = [r for r in RULES if r != "carrier_delivery" or carriers]
        return cls(params, rules)

    def declare(self) -> Declaration:
        """One field per drug, one occupancy layer per bound target, Treg and CAF depletion, readouts."""
        p = self.params
        fields = []
        for name, d in p.drugs.items():
            t = d.cfg.tissue
            fields.append(FieldSpec(name, "nM", t.free_diffusivity_um2_per_min,
                                    math.log(2.0) / t.tissue_clearance_half_life_min, 0.0, _NOFLUX,
                                    ecm_hindered=t.ecm_hindered, solver=t.solver,
                                    absolute_tolerance=DRUG_ABSOLUTE_TOLERANCE_NM))
        fields += carrier_fields(p)
        readouts = []
        for name in p.drugs:
            readouts += [Readout(f"plasma_{name}_mg_per_L", "mg/L", "level", f"plasma concentration of {name}"),
                         Readout(f"tumour_{name}_nM", "nM", "level", f"mean {name} over tumour cells"),
                         Readout(f"doses_{name}", "doses", "event", f"doses of {name} started in the step")]
        readouts += carrier_readouts(p)
        for slug in p.tissue_binders:
            readouts += [Readout(f"occupancy_{slug}_{region}", "-", "ratio", f"mean {slug} occupancy in the {region}")
                         for region in ("core", "margin", "stroma")]
        for slug in p.plasma_binders:
            readouts.append(Readout(f"occupancy_{slug}_plasma", "-", "ratio", f"{slug} occupancy in plasma"))
        causes, cytotoxic_readouts = self._cytotoxic_declarations()
        virus_causes, virus_readouts = self._virus_declarations()
        for name, v in p.viruses.items():
            fields.append(FieldSpec(name, "PFU/mL", v.cfg.diffusivity_um2_per_min,
                                    math.log(2.0) / v.cfg.clearance_half_life_min, 0.0, _NOFLUX, ecm_hindered=True))
        return Declaration(
            fields=fields,
            layers=[LayerSpec(f"occupancy_{slug}", "-", "float", 0.0, as_field=True) for slug in p.tissue_binders]
            + ([LayerSpec(SUSTAINED_VEGF, "-", "float", 0.0)] if "vegf" in p.tissue_binders else []),
            death_causes=[DeathCause("tcell", "depleted", 3, "treg_depleted"),
                          DeathCause("caf", "depleted", 1, "caf_depleted"), *causes, *virus_causes],
            rules=[*([vaccination] if p.vaccines else []), pharmacokinetics, delivery,
                   *([carrier_delivery] if p.carriers else []),
                   dataclasses.replace(occupancy, writes=tuple(f"layer:occupancy_{s}" for s in p.tissue_binders)
                                       + ((f"layer:{SUSTAINED_VEGF}",) if "vegf" in p.tissue_binders else ())),
                   *([antigen_restoration] if "dnmt1" in p.tissue_binders else []),
                   treg_depletion, caf_depletion, *([chemotherapy] if p.cytotoxic else []),
                   *([adc_payload] if p.adcs else []),
                   *([radiation] if p.courses else []), *([adoptive_transfer] if p.infusions else []),
                   *([virus_exchange, virus_infection] if p.viruses else [])],
            readouts=readouts + [Readout("treg_depleted", "cells", "event", "Tregs depleted by anti-CTLA-4"),
                                 Readout("caf_depleted", "cells", "event", "CAFs killed by FAP-targeting"),
                                 *cytotoxic_readouts, *self._cellular_readouts(), *virus_readouts],
        )

    def _virus_declarations(self) -> tuple[list, list]:
        """Causes of death (lysis is immunogenic) and readouts of the oncolytic virus."""
        causes, readouts = [], []
        for name, v in self.params.viruses.items():
            causes += [DeathCause("tumour", v.lysis_cause, TUMOUR_VIRUS_PRIORITY["lysis"], f"tumour_lysed_by_{name}",
                                  immunogenicity=v.cfg.icd_strength),
                       DeathCause("tumour", ANTIVIRAL, TUMOUR_VIRUS_PRIORITY[ANTIVIRAL], "infected_killed_by_immunity")]
            readouts += [Readout(f"doses_{name}", "doses", "event", f"doses of {name} given in the step"),
                         Readout(f"tumour_lysed_by_{name}", "cells", "event", f"tumour cells lysed by {name}"),
                         Readout("infected_killed_by_immunity", "cells", "event",
                                 "infected tumour cells killed by antiviral immunity before lysis"),
                         Readout("infected_cells", "cells", "count", "tumour cells infected by the virus"),
                         Readout(f"tumour_{name}_pfu_per_mL", "PFU/mL", "level",
                                 f"mean {name} titre over tumour cells"),
                         Readout(f"tissue_{name}_pfu", "PFU", "level", f"infectious {name} in the tissue")]
            if v.cfg.route == "iv":
                readouts.append(Readout(f"blood_{name}_pfu_per_mL", "PFU/mL", "level", f"{name} titre in blood"))
        return causes, readouts

    def _cytotoxic_declarations(self) -> tuple[list, list]:
        """Causes of death (with their immunogenicity) and readouts of the chemotherapies and radiotherapy courses."""
        p = self.params
        causes, readouts = [], []
        for i, (name, d) in enumerate(p.cytotoxic.items()):
            causes.append(DeathCause("tumour", f"chemo_{name}", TUMOUR_CHEMO_PRIORITY + i, f"tumour_killed_by_{name}",
                                     immunogenicity=d.cfg.cytotoxic.icd_strength))
            readouts.append(Readout(f"tumour_killed_by_{name}", "cells", "event", f"tumour cells killed by {name}"))
        for j, (name, d) in enumerate(p.adcs.items(), start=TUMOUR_CHEMO_PRIORITY + len(p.cytotoxic)):
            causes.append(DeathCause("tumour", f"adc_{name}", j, f"tumour_killed_by_{name}",
                                     immunogenicity=d.cfg.payload.icd_strength))
            readouts.append(Readout(f"tumour_killed_by_{name}", "cells", "event", f"tumour cells killed by {name}"))
        if p.cytotoxic:
            causes.append(DeathCause("tcell", "chemotherapy", TCELL_CHEMO_PRIORITY, "tcell_killed_by_chemo"))
            readouts += [Readout("tumour_killed_by_chemo", "cells", "event", "tumour cells killed by chemotherapy"),
                         Readout("tcell_killed_by_chemo", "cells", "event", "T cells killed by chemotherapy")]
        for name in p.courses:
            readouts += [Readout(f"doses_{name}", "fractions", "event", f"fractions of {name} given in the step"),
                         Readout(f"dose_{name}_Gy", "Gy", "event", f"physical dose of {name} given in the step")]
        if p.courses:
            icd = p.effects.radiation.icd_strength
            for table in RADIATED_TABLES:
                causes.append(DeathCause(table, "radiation", RADIATION_PRIORITY[table], f"{table}_killed_by_radiation",
                                         immunogenicity=icd if table == "tumour" else 0.0))
                readouts.append(Readout(f"{table}_killed_by_radiation", "cells", "event",
                                        f"{table} cells killed by radiation"))
        if p.cytotoxic or p.courses or p.adcs or p.viruses:
            readouts.append(Readout("antigen_icd_released", "-", "event",
                                    "extra antigen of immunogenic tumour-cell deaths in the step"))
        return causes, readouts

    def _cellular_readouts(self) -> list:
        """Readouts of the adoptive transfers and vaccines."""
        p = self.params
        out = [Readout(f"{name}_infused", "cells", "event", f"{name} T cells infused (admitted) in the step")
               for name in p.infusions]
        out += [Readout(f"doses_{name}", "infusions", "event", f"infusions of {name} given in the step")
                for name in p.infusions]
        out += [Readout(f"doses_{name}", "doses", "event", f"doses of vaccine {name} given in the step")
                for name in p.vaccines]
        if p.vaccines:
            out.append(Readout("vaccine_antigen", "-", "event", "antigen delivered by vaccines in the step"))
        return out

    def attach(self, world) -> None:
        """Regions: irradiated voxels, adoptive-transfer entry, injected virus and drug voxels; the voxel volume."""
        for course in self.params.courses.values():
            course.mask = region_mask(world, course.cfg.region)
        for inf in self.params.infusions.values():
            inf.mask = region_mask(world, inf.cfg.region)
        for v in self.params.viruses.values():
            v.mask = region_mask(world, v.cfg.region)
            v.voxel_mL = world.spacing_um**3 * 1e-12
        for d in self.params.drugs.values():
            if d.cfg.route == "intratumoral":
                d.mask = region_mask(world, d.cfg.injection_site.region)

    def seed(self, world, rng) -> None:
        """Nothing in tissue at the start; doses follow their schedules."""
        self.params.accounts = {name: Account(world, c) for name, c in self.params.carriers.items()}

    def commit(self, world, record, intents, events: dict) -> None:
        """Doses and fractions of the step, carrier accounts, virus bursts, the antigen of immunogenic deaths.

        Carriers update their internalised pool and exposure integrals. A lysed tumour cell adds ``burst_pfu / dx³``
        to the virus field in its voxel (one cell per voxel: the voxels are distinct).
        """
        xp, p = world.xp, self.params
        dead = record.dead.get("tumour")
        for name, v in p.viruses.items():
            events[f"doses_{name}"] = world.xp.asarray(float(v.doses_this_step))
            if dead is not None:
                codes, columns = dead
                # Every dead cell's voxel is written, the lysed ones raised: no mask picks them (a host sync).
                lysed = codes == world.death_codes["tumour"][v.lysis_cause]
                titre, voxels = world.fields[name].data.reshape(-1), columns["voxel"]
                old = titre.take(voxels)
                titre[voxels] = xp.where(lysed, old + world.dtype.type(v.cfg.burst_pfu / v.voxel_mL), old)
        for name, n in p.doses_this_step.items():
            events[f"doses_{name}"] = world.xp.asarray(float(n))
        if p.carriers:
            carrier_commit(world, p)
        for name, n in p.fractions_this_step.items():
            events[f"doses_{name}"] = world.xp.asarray(float(n))
            events[f"dose_{name}_Gy"] = world.xp.asarray(n * p.courses[name].cfg.dose_Gy)
        for name, n in p.infusions_this_step.items():
            events[f"doses_{name}"] = world.xp.asarray(float(n))
        for name, n in p.vaccine_doses_this_step.items():
            events[f"doses_{name}"] = world.xp.asarray(float(n))
        if p.vaccines:
            events["vaccine_antigen"] = world.xp.asarray(world.systemic["vaccine_antigen"])
        if p.cytotoxic or p.courses or p.adcs or p.viruses:
            extra = immunogenic_antigen(world, dead)
            events["antigen_icd_released"] = extra if extra is not None else world.xp.zeros(())

    def derive(self, values: dict) -> None:
        """Tumour cells killed by all chemotherapies together."""
        if self.params.cytotoxic:
            values["tumour_killed_by_chemo"] = sum(values[f"tumour_killed_by_{n}"] for n in self.params.cytotoxic)

    def measure(self, world) -> dict:
        """Tumour-mean drug levels and regional occupancy (backend scalars); plasma levels are host floats."""
        xp = world.xp
        out = {}
        vox = world.tables["tumour"]["voxel"]
        n = max(int(vox.shape[0]), 1)
        for name, d in [*self.params.drugs.items(), *self.params.payloads.items()]:
            out[f"plasma_{name}_mg_per_L"] = xp.asarray(d.plasma_mg_per_L)
            out[f"tumour_{name}_nM"] = world.fields[name].data.reshape(-1).take(vox).astype(np.float64).sum() / n
        for name, c in self.params.carriers.items():
            acc = self.params.accounts[name]
            out[f"plasma_{name}_mg_per_L"] = xp.asarray(c.plasma_mg_per_L)
            out[f"tumour_{name}_pct_id"] = pct_injected_dose(world, c, acc, self.params.body_weight_kg)
            out[f"released_triggered_{name}"] = acc.released_triggered / xp.maximum(acc.released, 1e-300)
            for pl in c.payloads:
                auc_p = acc.auc_plasma[pl.name]
                out[f"exposure_ratio_{pl.name}"] = acc.auc_tumour[pl.name] / auc_p if auc_p > 0 else xp.zeros(())
        if self.params.tissue_binders:
            regions = lesion_regions(world, self.params.margin_um)
            sizes = region_sizes(world, self.params.margin_um)
            for slug in self.params.tissue_binders:
                layer = world.layers[f"occupancy_{slug}"]
                for region, mask, count in zip(("core", "margin", "stroma"), regions, sizes):
                    out[f"occupancy_{slug}_{region}"] = (compact(layer, mask, count).astype(np.float64).sum()
                                                         / max(count, 1))
        for slug in self.params.plasma_binders:
            out[f"occupancy_{slug}_plasma"] = xp.asarray(world.systemic.get(f"occupancy_{slug}_plasma", 0.0))
        for name, v in self.params.viruses.items():
            titre = world.fields[name].data
            out[f"tumour_{name}_pfu_per_mL"] = titre.reshape(-1).take(vox).astype(np.float64).sum() / n
            out[f"tissue_{name}_pfu"] = titre.astype(np.float64).sum() * v.voxel_mL
            out["infected_cells"] = xp.count_nonzero(world.tables["tumour"]["infection_min"] >= 0)
            if v.cfg.route == "iv":
                out[f"blood_{name}_pfu_per_mL"] = xp.asarray(v.blood_pfu_per_mL(world.time_min, world.dt_min))
        return out

    def state(self, world) -> dict:
        """Per drug, radiotherapy course and virus, what a restart needs and a reader may want.

        A drug: compartment amounts (mg), doses given, the start times of the doses still to come. A course:
        fractions given and the times of the fractions still to come. A virus: doses given and the times of the doses
        still to come (its blood titre follows from the dose times; the virus in tissue is its field).
        """
        out = {}
        for name, d in self.params.drugs.items():
            pending = [s for s, _, _ in d.doses if s >= world.time_min]
            out[name] = {"amounts_mg": d.amounts.copy(), "compartments": ",".join(d.model.names),
                         "doses_given": d.doses_given, "pending_dose_times_min": np.asarray(pending, np.float64)}
        for name, c in self.params.courses.items():
            pending = [t for t in c.times_min if t >= world.time_min]
            out[name] = {"fractions_given": c.fractions_given,
                         "pending_fraction_times_min": np.asarray(pending, np.float64)}
        for name, inf in self.params.infusions.items():
            pending = [t for t in inf.times_min if t >= world.time_min]
            out[name] = {"infusions_given": inf.given, "pending_infusion_times_min": np.asarray(pending, np.float64)}
        for name, (_, times) in self.params.vaccines.items():
            out[name] = {"pending_dose_times_min": np.asarray([t for t in times if t >= world.time_min], np.float64)}
        for name, v in self.params.viruses.items():
            pending = [t for t in v.times_min if t >= world.time_min]
            out[name] = {"doses_given": v.doses_given, "pending_dose_times_min": np.asarray(pending, np.float64)}
        for name, c in self.params.carriers.items():
            pending = [s for s, _, _ in c.doses if s >= world.time_min]
            out[name] = {"amounts_mg": c.amounts.copy(), "compartments": ",".join(c.model.names),
                         "doses_given": c.doses_given, "pending_dose_times_min": np.asarray(pending, np.float64),
                         **self.params.accounts[name].state(world)}
        return out

    def load_state(self, world, state: dict | None) -> None:
        """Restore the compartments; a drug new at a branch starts empty and may not have doses before it."""
        if not self.params.accounts:
            self.params.accounts = {name: Account(world, c) for name, c in self.params.carriers.items()}
        for name, d in [*self.params.drugs.items(), *self.params.carriers.items()]:
            own = (state or {}).get(name)
            if own is not None:
                d.amounts = np.asarray(own["amounts_mg"], dtype=np.float64).copy()
                d.doses_given = int(own["doses_given"])
                if name in self.params.accounts:
                    self.params.accounts[name].load(world, own)
                continue
            past = [s for s, _, _ in d.doses if s < world.time_min]
            if past:
                raise ConfigError([f"therapy.{name}.schedule: a dose at day {past[0] / 1440:g} lies before the "
                                   f"branch at day {world.time_min / 1440:g}; a therapy added at a branch starts at "
                                   "or after it"])
        for name, c in self.params.courses.items():
            own = (state or {}).get(name)
            if own is not None:
                c.fractions_given = int(own["fractions_given"])
                continue
            past = [t for t in c.times_min if t < world.time_min]
            if past:
                raise ConfigError([f"radiotherapy.{name}: a fraction at day {past[0] / 1440:g} lies before the branch "
                                   f"at day {world.time_min / 1440:g}; a course added at a branch starts at or after "
                                   "it"])
        for name, inf in self.params.infusions.items():
            own = (state or {}).get(name)
            if own is not None:
                inf.given = int(own["infusions_given"])
            elif any(t < world.time_min for t in inf.times_min):
                raise ConfigError([f"cell_therapy.{name}: an infusion lies before the branch at day "
                                   f"{world.time_min / 1440:g}; a product added at a branch starts at or after it"])
        for name, (_, times) in self.params.vaccines.items():
            if (state or {}).get(name) is None and any(t < world.time_min for t in times):
                raise ConfigError([f"vaccine.{name}: a dose lies before the branch at day {world.time_min / 1440:g}; "
                                   "a vaccine added at a branch starts at or after it"])
        for name, v in self.params.viruses.items():
            own = (state or {}).get(name)
            if own is not None:
                v.doses_given = int(own["doses_given"])
                continue
            past = [t for t in v.times_min if t < world.time_min]
            if past:
                raise ConfigError([f"virus.{name}: a dose at day {past[0] / 1440:g} lies before the branch at day "
                                   f"{world.time_min / 1440:g}; a virus added at a branch starts at or after it"])
