"""Config of the therapy module: named drug tables ``[therapy.<name>]``, ``[patient]`` and ``[effects]``.

A therapy is a named table discriminated by ``kind``. It may name a ``preset`` from the drug library
(``abm/modules/therapy/library.toml``, a source for every value) and override any of it; the preset is merged
in when the config is validated, so the resolved config a run writes holds every value it used. Names label the
drug's field, its readouts and its state (``fields/<name>``, ``plasma_<name>_mg_per_L``, ``state/therapy/<name>``).
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from abm.modules.therapy.cellular_config import EpigeneticEffects
from abm.modules.therapy.cytotoxic_config import CytotoxicConfig, PayloadConfig, RadiationEffects, RegionConfig
from abm.modules.therapy.library import class_defaults, library_entry, library_names
from abm.schema import Fraction, NonNegative, Positive, Section

__all__ = [
    "TARGETS",
    "DrugConfig",
    "EffectsConfig",
    "InnateEffects",
    "PatientConfig",
    "ScheduleConfig",
    "target_slug",
]

#: The targets a drug can bind, and the slug that names their occupancy lattice (``occupancy_<slug>``).
TARGETS = {"PD-1": "pd1", "PD-L1": "pdl1", "CTLA-4": "ctla4", "LAG-3": "lag3", "TIGIT": "tigit", "VEGF": "vegf",
           "TGF-β": "tgfb", "CSF-1R": "csf1r", "CXCR4": "cxcr4", "FAP": "fap", "LOX": "lox", "DNMT1": "dnmt1",
           "TROP2": "trop2", "CCR2": "ccr2", "CXCR2": "cxcr2", "TLR7/8": "tlr78",
           "STING": "sting"}
TargetName = Literal["PD-1", "PD-L1", "CTLA-4", "LAG-3", "TIGIT", "VEGF", "TGF-β", "CSF-1R", "CXCR4", "FAP", "LOX",
                     "DNMT1", "TROP2", "CCR2", "CXCR2", "TLR7/8", "STING"]


def target_slug(target: str) -> str:
    """The lattice-name slug of ``target`` (``"PD-1"`` -> ``"pd1"``)."""
    return TARGETS[target]


class ScheduleConfig(Section):
    """When and how much: a regular course (start, interval, number) or explicit times."""

    start_day: NonNegative = Field(default=0.0, description="Day of the first dose (days from t = 0).")
    every_day: Positive | None = Field(default=None, description="Days between doses; needed when doses > 1.")
    doses: Annotated[int, Field(ge=1)] = Field(default=1, description="Number of doses (doses).")
    times_day: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None, description="Explicit dose times (days); replaces start_day, every_day and doses."
    )
    dose_mg_per_kg: Positive | None = Field(default=None, description="Dose per body weight, mg/kg.")
    dose_mg: Positive | None = Field(default=None, description="Flat dose, mg (instead of dose_mg_per_kg).")
    dose_mg_per_m2: Positive | None = Field(
        default=None, description="Dose per body-surface area, mg/m² (chemotherapy; x patient.body_surface_area_m2)."
    )
    infusion_min: NonNegative = Field(
        default=0.0, description="Infusion duration, min (0: bolus). Intravenous labels: typically 30-60 min."
    )

    @field_validator("doses", mode="before")
    @classmethod
    def _at_least_one(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a schedule needs at least one dose, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ScheduleConfig:
        if sum(d is not None for d in (self.dose_mg_per_kg, self.dose_mg, self.dose_mg_per_m2)) != 1:
            raise ValueError("give exactly one of dose_mg_per_kg, dose_mg_per_m2 and dose_mg")
        if self.times_day is None and self.doses > 1 and self.every_day is None:
            raise ValueError(f"{self.doses} doses need every_day (days between doses)")
        if self.times_day is not None and not self.times_day:
            raise ValueError("times_day is empty: a schedule needs at least one dose")
        return self

    def dose_times_min(self) -> list[float]:
        """Start time of every dose (min), sorted."""
        days = self.times_day if self.times_day is not None else [
            self.start_day + k * (self.every_day or 0.0) for k in range(self.doses)]
        return sorted(float(d) * 1440.0 for d in days)


class PKConfig(Section):
    """Systemic pharmacokinetics (population values for ``reference_weight_kg``)."""

    model: Literal["one_compartment", "two_compartment"] = Field(
        default="two_compartment", description="Compartment model; both are advanced with their exact propagator."
    )
    reference_weight_kg: Positive = Field(default=70.0, description="Body weight the PK values refer to, kg.")
    clearance_L_per_day: Positive = Field(description="Elimination clearance CL, L/day.")
    central_volume_L: Positive = Field(description="Central volume V1, L.")
    peripheral_volume_L: Positive | None = Field(default=None, description="Peripheral volume V2, L.")
    intercompartmental_clearance_L_per_day: Positive | None = Field(
        default=None, description="Distribution clearance Q, L/day."
    )
    absorption_per_day: NonNegative = Field(
        default=0.0, description="First-order absorption rate ka from a depot, 1/day (oral, subcutaneous); 0: iv."
    )
    bioavailability: Fraction = Field(default=1.0, description="Fraction of an oral dose absorbed (dimensionless).")
    terminal_half_life_day: Positive | None = Field(
        default=None, description="Reported terminal half-life, days (a record; the model's follows from CL, V, Q)."
    )

    @model_validator(mode="after")
    def _two_compartment_complete(self) -> PKConfig:
        if self.model == "two_compartment" and (self.peripheral_volume_L is None
                                                or self.intercompartmental_clearance_L_per_day is None):
            raise ValueError("two_compartment needs peripheral_volume_L and intercompartmental_clearance_L_per_day")
        return self


class TargetConfig(Section):
    """A target the drug binds."""

    target: TargetName = Field(description=f"Target, one of {', '.join(TARGETS)}.")
    kd_nM: Positive = Field(description="Equilibrium dissociation constant, nM.")


class TissueConfig(Section):
    """Transport in tissue (class defaults from the library's ``defaults`` tables)."""

    free_diffusivity_um2_per_min: Positive = Field(description="Free diffusion coefficient in tissue, µm²/min.")
    vascular_permeability_um_per_min: Positive = Field(description="Capillary wall permeability, µm/min.")
    tissue_clearance_half_life_min: Positive = Field(
        description="Local clearance half-life in tissue (lymphatic drainage, uptake and catabolism), min."
    )
    ecm_hindered: bool = Field(description="ECM lowers the diffusivity (large molecules).")
    solver: Literal["lod", "exact"] = Field(
        default="exact",
        description="Field solver of the drug: 'exact' (unsplit implicit step; with the slowly varying drug levels it "
        "needs 0-2 iterations a step) or 'lod' (operator split, whose symmetrised sink path costs more here).",
    )
    vessel_surface_per_volume_per_um: Positive = Field(
        default=0.0785,
        description="Capillary surface per vessel-voxel volume, 1/µm: 2π r dx / dx³ for a 5 µm capillary in a 20 µm "
        "voxel. Model choice (geometry).",
    )


def _injection_site() -> RegionConfig:
    return RegionConfig(shape="sphere", radius_um=100.0)


class InjectionConfig(Section):
    """Where and in what volume an intratumoral dose is injected (route = 'intratumoral'; not read otherwise)."""

    volume_mL: Positive = Field(
        default=1.0, description="Injectate volume, mL: what leaves the injection depot in a step appears in the "
        "region at (released mg)/(volume). Model choice: 1 mL, within the 0.1-4 mL that intratumoral labels match to "
        "lesion size (IMLYGIC USPI section 2)."
    )
    region: RegionConfig = Field(
        default_factory=_injection_site, description="Injected region: default a sphere (a disc in 2-D) of 100 µm "
        "at the lattice centre. Model choice: one injection track, as for the oncolytic virus."
    )


class DrugConfig(Section):
    """A drug: antibody, fusion protein, small molecule or chemotherapy, from a library preset and overrides."""

    kind: Literal["antibody", "fusion_protein", "small_molecule", "chemotherapy", "antibody_drug_conjugate"] = Field(
        description="Drug class.")
    preset: str | None = Field(default=None, description="Library entry whose values this drug starts from.")
    description: str = Field(default="", description="What the drug is.")
    route: Literal["iv", "oral", "sc", "intratumoral"] = Field(
        default="iv", description="Route of administration. 'intratumoral': the dose enters a depot (pk."
        "absorption_per_day) that releases into the injected region of the lattice and into the plasma alike."
    )
    injection: InjectionConfig | None = Field(
        default=None, description="Injectate volume and region of an intratumoral dose (route = 'intratumoral' "
        "only; its defaults where not given)."
    )
    molecular_weight_kda: Positive = Field(description="Molecular weight, kDa (converts mg/L to nM).")
    fraction_unbound: Fraction = Field(
        default=1.0, description="Unbound fraction in plasma (small molecules; dimensionless)."
    )
    targets: list[TargetConfig] = Field(
        default_factory=list, description="Targets with Kd; two entries: a bispecific. A chemotherapy may have none."
    )
    cytotoxic: CytotoxicConfig | None = Field(
        default=None, description="Kill law and immunogenic cell death of a chemotherapy (kind = 'chemotherapy' only)."
    )
    payload: PayloadConfig | None = Field(
        default=None, description="Cytotoxic payload of an antibody-drug conjugate (kind = 'antibody_drug_conjugate' "
        "only): kill law and immunogenic cell death."
    )
    schedule: ScheduleConfig = Field(description="The regimen.")
    pk: PKConfig = Field(description="Systemic PK.")
    tissue: TissueConfig = Field(description="Tissue transport.")

    @model_validator(mode="before")
    @classmethod
    def _merge_preset(cls, data):
        if not isinstance(data, dict):
            return data
        preset = data.get("preset")
        kind = data.get("kind")
        base: dict = {}
        if preset is not None:
            names = library_names()
            if preset not in names:
                near = difflib.get_close_matches(str(preset), names, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise ValueError(f"unknown preset '{preset}'{hint} (library: {', '.join(names)})")
            base = library_entry(preset)
            kind = kind or base.get("kind")
            typical = base.pop("typical_dose", {})
            schedule = dict(data.get("schedule") or {})
            doses = ("dose_mg_per_kg", "dose_mg", "dose_mg_per_m2")
            if not any(k in schedule for k in doses):
                schedule.update({k: v for k, v in typical.items() if k in doses})
            if "every_day" not in schedule and "times_day" not in schedule and "every_day" in typical:
                schedule["every_day"] = typical["every_day"]
            if "infusion_min" not in schedule and "infusion_min" in base:
                schedule["infusion_min"] = base["infusion_min"]
            data = {**data, "schedule": schedule}
            base.pop("infusion_min", None)
            base.pop("sources", None)
            base.get("pk", {}).pop("sources", None)
        if kind in ("antibody", "fusion_protein", "small_molecule", "chemotherapy", "antibody_drug_conjugate"):
            tissue = class_defaults({"fusion_protein": "antibody", "chemotherapy": "small_molecule",
                                     "antibody_drug_conjugate": "antibody"}.get(kind, kind))
            base = {**base, "tissue": {**tissue, **base.get("tissue", {})}}
        merged = dict(base)
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        if kind is not None:
            merged["kind"] = kind
        return merged

    @property
    def injection_site(self) -> InjectionConfig:
        """The injection of an intratumoral dose: ``injection`` as given, or its defaults."""
        return self.injection if self.injection is not None else InjectionConfig()

    @model_validator(mode="after")
    def _kind_consistent(self) -> DrugConfig:
        if self.kind == "chemotherapy" and self.cytotoxic is None:
            raise ValueError("a chemotherapy needs a cytotoxic table (kill_max_per_day, ec50_nM, ...)")
        if self.kind != "chemotherapy" and self.cytotoxic is not None:
            raise ValueError(f"cytotoxic is for kind = 'chemotherapy', not '{self.kind}'")
        if self.kind != "chemotherapy" and not self.targets:
            raise ValueError(f"a drug of kind '{self.kind}' needs at least one target")
        if self.kind == "antibody_drug_conjugate" and (self.payload is None or len(self.targets) != 1):
            raise ValueError("an antibody-drug conjugate needs one target and a payload table (kill_max_per_day, ...)")
        if self.kind != "antibody_drug_conjugate" and self.payload is not None:
            raise ValueError(f"payload is for kind = 'antibody_drug_conjugate', not '{self.kind}'")
        if self.route == "intratumoral" and self.pk.absorption_per_day <= 0:
            raise ValueError("route 'intratumoral' needs pk.absorption_per_day > 0 (the rate the injection depot "
                             f"empties), got {self.pk.absorption_per_day}")
        if self.route != "intratumoral" and self.injection is not None:
            raise ValueError(f"injection is for route = 'intratumoral', not '{self.route}'")
        if self.route == "intratumoral" and self.schedule.infusion_min > 0:
            raise ValueError("route 'intratumoral' is a bolus injection: schedule.infusion_min must be 0, got "
                             f"{self.schedule.infusion_min}")
        return self


class PatientConfig(Section):
    """The virtual patient."""

    body_weight_kg: Positive = Field(
        default=70.0, description="Body weight, kg: scales mg/kg doses. Model choice: the conventional reference "
        "adult (ICRP reference man 70 kg)."
    )
    body_surface_area_m2: Positive = Field(
        default=1.82, description="Body-surface area, m²: scales mg/m² doses. Derived: Mosteller's formula "
        "sqrt(height cm x weight kg / 3600) for the ICRP reference man (170 cm, 70 kg)."
    )


class CTLA4Effects(Section):
    """Anti-CTLA-4 in the lymph node (plasma occupancy) and on intratumoral Tregs (tissue occupancy)."""

    priming_boost: NonNegative = Field(
        default=1.0, description="Priming gain is multiplied by 1 + boost x plasma occupancy (dimensionless). Model "
        "choice: blockade of CTLA-4 on naive T cells roughly doubles priming at saturation."
    )
    treg_depletion_per_day: NonNegative = Field(
        default=0.5, description="Fc-mediated Treg depletion rate at full occupancy, 1/day (Simpson 2013 J Exp Med: "
        "intratumoral Tregs fall within days). Model choice for the rate."
    )


class AltCheckpointEffects(Section):
    """LAG-3 and TIGIT blockade."""

    exhaustion_relief: Fraction = Field(
        default=0.5, description="Exhaustion gain is multiplied by 1 - relief x occupancy (dimensionless). Model "
        "choice."
    )


class VEGFEffects(Section):
    """VEGF-pathway blockade: normalisation at moderate, pruning at sustained high occupancy."""

    prune_threshold: Fraction = Field(
        default=0.9, description="Occupancy above which vessels are pruned (dimensionless). Model choice: Jain 2005 "
        "Science normalisation window (moderate blockade normalises, high sustained blockade prunes)."
    )
    prune_per_day: NonNegative = Field(
        default=0.2, description="Pruning rate of a vessel voxel at full occupancy, 1/day. Model choice: Tong 2004 "
        "Cancer Res and Winkler 2004 Cancer Cell saw vessel density fall over about a week of high-dose anti-VEGFR2."
    )
    sustained_day: Positive = Field(
        default=3.0, description="Time constant of the sustained VEGF blockade that pruning reads, days: the "
        "running mean m of the occupancy, dm/dt = (θ - m)/τ. Model choice: under saturating blockade m passes the "
        "0.9 threshold after τ ln 10 ≈ 7 days, where Winkler 2004 Cancer Cell 6:553 saw the DC101 normalisation "
        "window (days ~2-5) close by day 8."
    )


class FAPEffects(Section):
    """FAP-targeted CAF depletion."""

    caf_depletion_per_day: NonNegative = Field(
        default=0.5, description="CAF death rate at full FAP occupancy, 1/day. Model choice."
    )


class StingEffects(Section):
    """Strengths of STING agonism at the three innate read points (docs/THERAPIES.md, 2.4-2.5)."""

    repolarisation: Fraction = Field(
        default=1.0, description="w: the M1 drive of M0 -> M1 and M2 -> M1 is max(IFN-γ/(IFN-γ + K), w θ) "
        "(dimensionless). Model choice: saturating STING signalling polarises like saturating IFN-γ."
    )
    chemokine_boost: NonNegative = Field(
        default=4.0, description="b: tumour-cell and M1 chemokine secretion x (1 + Σ b θ) at the secreting cell "
        "(dimensionless). Model choice: CXCL9/10 are interferon-stimulated genes; set at the fold of the IFN-γ boost "
        "(tumour.chemokine_ifng_boost = 4)."
    )
    priming_per_day: NonNegative = Field(
        default=1.0, description="k: priming gains k θ̄ dt (1 - P), θ̄ the mean occupancy over tumour cells, 1/day. "
        "Model choice: type-I interferon from STING in tumour dendritic cells drives cross-priming (Corrales L et al. "
        "2016 J Clin Invest 126:2404, abstract read); one day of full activation from P = 0 primes to 1 - 1/e."
    )


class TLR78Effects(Section):
    """Strengths of TLR7/8 agonism at the three innate read points (docs/THERAPIES.md, 2.4-2.5)."""

    repolarisation: Fraction = Field(
        default=1.0, description="w, as for STING (dimensionless). Rodell CB et al. 2018 Nat Biomed Eng 2:578: R848 "
        "nanoparticles repolarise tumour-associated macrophages to M1; w = 1 keeps the earlier law max(I/(I+K), θ)."
    )
    chemokine_boost: NonNegative = Field(
        default=2.0, description="b, as for STING (dimensionless). Model choice: half the STING value, TLR7/8 "
        "inducing type-I interferon mainly in plasmacytoid dendritic cells."
    )
    priming_per_day: NonNegative = Field(
        default=0.25, description="k, as for STING, 1/day. Model choice: a quarter of the STING value (weaker "
        "type-I interferon and cross-priming drive)."
    )


class InnateEffects(Section):
    """Innate-immune agonists, one table per agonist target (named by its occupancy slug).

    Each read point loops over these fields (:func:`abm.modules.common.innate_agonism`): a new agonist target is a
    new field with the three strengths ``repolarisation``, ``chemokine_boost`` and ``priming_per_day``.
    """

    sting: StingEffects = Field(default_factory=StingEffects, description="STING agonists (target 'STING').")
    tlr78: TLR78Effects = Field(default_factory=TLR78Effects, description="TLR7/8 agonists (target 'TLR7/8').")


class EffectsConfig(Section):
    """Parameters of the target laws (docs/THERAPIES.md); every target's read point is fixed in the code."""

    ctla4: CTLA4Effects = Field(default_factory=CTLA4Effects)
    alt_checkpoint: AltCheckpointEffects = Field(default_factory=AltCheckpointEffects)
    vegf: VEGFEffects = Field(default_factory=VEGFEffects)
    fap: FAPEffects = Field(default_factory=FAPEffects)
    radiation: RadiationEffects = Field(default_factory=RadiationEffects)
    epigenetic: EpigeneticEffects = Field(default_factory=EpigeneticEffects)
    innate: InnateEffects = Field(default_factory=InnateEffects)


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def check_therapy_names(names) -> None:
    """Therapy names label fields and metrics: lowercase letters, digits and underscores, starting with a letter."""
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"therapy name '{name}' must be lowercase letters, digits and '_', starting with a letter")
