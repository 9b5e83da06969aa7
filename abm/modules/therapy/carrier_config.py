"""Config of nanoparticle carriers: ``[therapy.<name>]`` with ``kind = "nanoparticle"`` (docs/THERAPIES.md, 8).

A carrier has a size, its own systemic PK and transport in tissue, one or two payloads (library drugs, each with
a loading in mg payload per mg carrier) and a release law (a base rate plus an optional trigger: hypoxia, low pH
or MMP activity). A dose is the **carrier mass** in mg (``dose_mg`` or ``dose_mg_per_kg``); payload ``j`` enters
with ``loading_mg_per_mg x dose``. Every default has a unit and a source or is called a model choice.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from abm.modules.therapy.config import DrugConfig, PKConfig, ScheduleConfig, TargetConfig, TissueConfig
from abm.modules.therapy.library import class_defaults, library_entry, library_names
from abm.schema import Fraction, NonNegative, Positive, Section

__all__ = ["CarrierConfig", "CarrierTransportConfig", "PayloadConfig", "ReleaseConfig", "TherapyConfig",
           "payload_field"]


def payload_field(carrier: str, preset: str) -> str:
    """Name of the field (and readouts) of a carrier's released payload: ``<carrier>_<preset>``."""
    return f"{carrier}_{preset}"


class PayloadConfig(Section):
    """A payload: a library drug (by preset) and its loading; the drug's values are merged in when validated."""

    preset: str = Field(description="Library drug carried (docs/THERAPIES.md §3).")
    loading_mg_per_mg: Positive = Field(
        description="Payload per carrier, mg payload per mg carrier material (Doxil: 2 mg/mL doxorubicin in ~16 "
        "mg/mL lipid, 0.125 mg/mg; DOXIL USPI section 11 composition)."
    )
    kind: Literal["antibody", "fusion_protein", "small_molecule"] = Field(description="Drug class (from the preset).")
    molecular_weight_kda: Positive = Field(description="Molecular weight, kDa (from the preset).")
    fraction_unbound: Fraction = Field(default=1.0, description="Unbound fraction in plasma (from the preset).")
    targets: list[TargetConfig] = Field(min_length=1, description="Targets with Kd (from the preset).")
    pk: PKConfig = Field(description="Systemic PK of the released (free) payload (from the preset; no depot).")
    tissue: TissueConfig = Field(description="Tissue transport of the released payload (class defaults, preset).")

    @model_validator(mode="before")
    @classmethod
    def _merge_preset(cls, data):
        if not isinstance(data, dict) or "preset" not in data:
            return data
        preset = data["preset"]
        names = library_names()
        if preset not in names:
            near = difflib.get_close_matches(str(preset), names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"unknown payload preset '{preset}'{hint} (library: {', '.join(names)})")
        base = library_entry(preset)
        kind = data.get("kind", base["kind"])
        tissue = class_defaults("antibody" if kind == "fusion_protein" else kind)
        pk = {k: v for k, v in base.get("pk", {}).items() if k not in ("sources", "absorption_per_day",
                                                                       "bioavailability")}
        merged = {"kind": kind, "molecular_weight_kda": base["molecular_weight_kda"],
                  "fraction_unbound": base.get("fraction_unbound", 1.0), "targets": base["targets"],
                  "pk": pk, "tissue": {**tissue, **base.get("tissue", {})}}
        for key, value in data.items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key),
                                                                                               dict) else value
        return merged


class CarrierTransportConfig(Section):
    """Extravasation, penetration, uptake and clearance of the carrier in tissue (docs/THERAPIES.md, 8.3-8.4)."""

    active_permeability_um_per_min: NonNegative = Field(
        default=0.022,
        description="Trans-endothelial (active, transcytosis) permeability, µm/min, size-independent. Sindhwani S "
        "et al. 2020 Nat Mater 19:566: most nanoparticles (15-100 nm gold) enter tumours by active transport "
        "through endothelial cells, not through gaps. Value: calibrated so the default carrier reaches ~0.7 %ID "
        "(Wilhelm 2016 median) 24 h after a dose on the 80 x 80 scenario grid (configs/therapies); 3.7e-8 cm/s, "
        "the 1e-8 cm/s order of the effective permeability of ~100 nm PEG-liposomes in human tumour xenografts "
        "(Yuan F et al. 1995 Cancer Res 55:3752, UNVERIFIED).",
    )
    pore_permeability_um_per_min: NonNegative = Field(
        default=0.03,
        description="Permeability of the inter-endothelial pore pathway for a vanishingly small particle, µm/min; "
        "multiplied by the Renkin hindrance of the carrier in the pore. Model choice (2.5x the active pathway, so "
        "small carriers gain from open pores).",
    )
    pore_radius_abnormal_nm: Positive = Field(
        default=200.0,
        description="Pore radius of a fully abnormal tumour vessel, nm. Hobbs SK et al. 1998 PNAS 95:4607: pore "
        "cutoff 380-780 nm in most tumours (radius ~200-400 nm), UNVERIFIED (recalled).",
    )
    pore_radius_normalised_nm: Positive = Field(
        default=30.0,
        description="Pore radius of a normal (normalised) vessel, nm. Model choice between the 12-nm and the "
        "125-nm particles of Chauhan VP et al. 2012 Nat Nanotechnol 7:383, for which normalisation (smaller "
        "pores) helped the small and hindered the large.",
    )
    vessel_surface_per_volume_per_um: Positive = Field(
        default=0.0785, description="Capillary surface per vessel-voxel volume, 1/µm (as for drugs; model choice)."
    )
    medium_viscosity_mPa_s: Positive = Field(
        default=0.69,
        description="Viscosity of the interstitial medium for the Stokes-Einstein diffusivity, mPa·s: water at "
        "37 °C (0.692 mPa·s, CRC Handbook). A 100-nm particle gets 6.6 µm²/s.",
    )
    ecm_fibre_radius_nm: Positive = Field(
        default=10.0,
        description="Effective fibre radius of the Ogston size dependence of the ECM hindrance, nm (hindrance "
        "exponent (r + r_f)/(r_IgG + r_f), calibrated on the IgG hindrance immune.ecm.diffusion_hindrance). Model "
        "choice between glycosaminoglycan chains (~0.5 nm) and collagen fibrils (~20-100 nm).",
    )
    tissue_clearance_half_life_min: Positive = Field(
        default=2880.0,
        description="Local clearance of carriers from the interstitium (lymphatic drainage), min: 48 h. Model "
        "choice: tumour lymphatics are impaired, so carriers are retained (the 'retention' of EPR).",
    )
    tumour_uptake_per_day: NonNegative = Field(
        default=0.2,
        description="First-order uptake of carriers by a tumour cell's voxel, 1/day. Model choice: PEGylated "
        "carriers are taken up slowly by tumour cells.",
    )
    macrophage_uptake_per_day: NonNegative = Field(
        default=2.0,
        description="First-order uptake per macrophage in the voxel, 1/day. Model choice: tumour-associated "
        "macrophages take up most of the nanoparticles that reach a tumour (10x the tumour-cell rate).",
    )
    internal_degradation_half_life_min: Positive = Field(
        default=2880.0,
        description="Half-life of internalised carriers (lysosomal degradation), min: 48 h. Model choice; counts "
        "toward %ID while they last and releases nothing.",
    )


class ReleaseConfig(Section):
    """Release of the payloads: ``k = base + triggered x T(x)``, T the trigger (0..1) of the carrier's voxel."""

    base_per_day: NonNegative = Field(
        default=0.05,
        description="Release rate everywhere (plasma and tissue), 1/day. Model choice: stable PEGylated "
        "liposomes keep > 90 % of their drug for days in circulation (Gabizon A 2003 Clin Pharmacokinet 42:419, "
        "UNVERIFIED).",
    )
    trigger: Literal["none", "hypoxia", "ph", "mmp"] = Field(default="none", description="Release trigger.")
    triggered_per_day: NonNegative = Field(
        default=2.0, description="Extra release rate at full trigger, 1/day. Model choice (half-life ~8 h)."
    )
    hypoxia_half_max_mmHg: Positive = Field(
        default=5.0,
        description="pO2 of half-maximal hypoxic trigger (and of the hypoxic pH drop), mmHg: the hypoxia half-max "
        "of the immune module (PhysiCell).",
    )
    hypoxia_hill: Positive = Field(default=4.0, description="Hill coefficient of the hypoxic trigger. Model choice.")
    ph_normal: Positive = Field(default=7.4, description="Extracellular pH of normal tissue (Gerweck 1996).")
    ph_drop_tumour: NonNegative = Field(
        default=0.5,
        description="pH drop where the Moore neighbourhood is full of tumour cells. Gerweck LE, Seetharaman K 1996 "
        "Cancer Res 56:1194: tumour extracellular pH ~6.5-6.9 vs 7.4 (UNVERIFIED, recalled); 7.4 - 0.5 = 6.9.",
    )
    ph_drop_hypoxia: NonNegative = Field(
        default=0.4,
        description="Further pH drop in fully hypoxic voxels (glycolysis); a dense hypoxic core reaches 6.5. Model "
        "choice within Gerweck 1996.",
    )
    ph_half: Positive = Field(
        default=6.8,
        description="pH of half-maximal release (the carrier's transition pH). Model choice: the 6.5-6.9 transitions "
        "of ultra-pH-sensitive polymers (Wang Y et al. 2014 Nat Mater 13:204, UNVERIFIED).",
    )
    ph_steepness: Positive = Field(
        default=4.0,
        description="Steepness n of T = 1/(1 + 10^(n (pH - pH_half))); n = 1 for a single protonatable group, "
        "larger for cooperative (ultra-pH-sensitive) polymers. Model choice.",
    )
    mmp_macrophage_weight: NonNegative = Field(
        default=1.0,
        description="MMP activity of a macrophage relative to a tumour cell (dimensionless). Model choice (both "
        "degrade ECM in the stroma module).",
    )
    mmp_half_max: Positive = Field(
        default=0.3,
        description="MMP activity (tumour cells + weighted macrophages per Moore-neighbourhood voxel) of "
        "half-maximal release. Model choice.",
    )


def _doxil_pk() -> PKConfig:
    return PKConfig(model="one_compartment", reference_weight_kg=70.0, clearance_L_per_day=1.51,
                    central_volume_L=5.0, terminal_half_life_day=2.29)


class CarrierConfig(Section):
    """A nanoparticle carrier and its payloads."""

    kind: Literal["nanoparticle"] = Field(description="Therapy class: a nanoparticle carrier.")
    description: str = Field(default="", description="What the carrier is.")
    diameter_nm: Positive = Field(
        default=100.0,
        description="Hydrodynamic diameter, nm; sets D (Stokes-Einstein), the ECM hindrance and the pore passage. "
        "Default: PEGylated liposomal doxorubicin (Doxil) is 80-90 nm (Barenholz Y 2012 J Control Release "
        "160:117, UNVERIFIED); 100 nm rounds it.",
    )
    payloads: list[PayloadConfig] = Field(min_length=1, max_length=2, description="One or two payloads.")
    schedule: ScheduleConfig = Field(description="The regimen; doses are carrier mass (mg).")
    pk: PKConfig = Field(
        default_factory=_doxil_pk,
        description="Systemic PK of the carrier (mononuclear-phagocyte clearance). Default: one compartment, "
        "V1 5.0 L (Vss ~2.8 L/m² x 1.8 m²), CL 1.51 L/day derived so t½ = 55 h, Doxil (DOXIL USPI 12.3 and "
        "Gabizon 2003, UNVERIFIED).",
    )
    transport: CarrierTransportConfig = Field(default_factory=CarrierTransportConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    reference_tumour_mass_fraction: Positive = Field(
        default=0.01,
        description="Mass of the reference tumour the %ID readout refers to, as a fraction of body mass: %ID = "
        "100 x mean lesion carrier (mg/L ~ mg/kg) x fraction x body weight / dose. Model choice: a ~0.2-0.3 g "
        "subcutaneous xenograft in a 20-25 g mouse, the typical setting of the mouse data behind the 0.7 %ID "
        "median (Wilhelm S et al. 2016 Nat Rev Mater 1:16014).",
    )

    @model_validator(mode="after")
    def _payloads_distinct(self) -> CarrierConfig:
        presets = [p.preset for p in self.payloads]
        if len(set(presets)) != len(presets):
            raise ValueError(f"payloads name the same preset twice ({', '.join(presets)})")
        return self


def _therapy_kind(data) -> str:
    if isinstance(data, dict):
        return "nanoparticle" if data.get("kind") == "nanoparticle" else "drug"
    return "nanoparticle" if isinstance(data, CarrierConfig) else "drug"


#: A ``[therapy.<name>]`` table: a drug, or a nanoparticle carrier (``kind = "nanoparticle"``).
TherapyConfig = Annotated[Annotated[DrugConfig, Tag("drug")] | Annotated[CarrierConfig, Tag("nanoparticle")],
                          Discriminator(_therapy_kind)]


def check_carrier_names(therapies: dict) -> None:
    """The fields a carrier adds (``<carrier>_<preset>`` and ``..._loaded``) must not clash with a therapy's name."""
    names = set(therapies)
    for name, t in therapies.items():
        if not isinstance(t, CarrierConfig):
            continue
        for p in t.payloads:
            for field in (payload_field(name, p.preset), payload_field(name, p.preset) + "_loaded"):
                if field in names:
                    raise ValueError(f"therapy '{field}' clashes with the payload field of carrier '{name}'")
