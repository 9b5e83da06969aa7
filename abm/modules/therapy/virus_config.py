"""Config of an oncolytic virus: a named table ``[virus.<name>]`` (laws and sources: docs/THERAPIES.md section 7).

A virus is not a drug with a plasma PK and a target occupancy, so, like a radiotherapy course, it has its own
named table. The defaults describe a herpes simplex type 1 vector such as talimogene laherparepvec (T-VEC).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from abm.modules.therapy.cytotoxic_config import RegionConfig
from abm.schema import NonNegative, Positive, Section

__all__ = ["VirusConfig"]


def _injection_site() -> RegionConfig:
    return RegionConfig(shape="sphere", radius_um=100.0)


class VirusConfig(Section):
    """An oncolytic virus: dosing (intratumoral or intravenous, in PFU), spread in tissue, infection, lysis."""

    description: str = Field(default="", description="What the virus is.")
    route: Literal["intratumoral", "iv"] = Field(
        default="intratumoral", description="intratumoral: injected into region; iv: into the blood, entering "
        "tissue at vessel voxels."
    )
    start_day: NonNegative = Field(default=0.0, description="Day of the first dose (days from t = 0).")
    every_day: Positive | None = Field(default=None, description="Days between doses; needed when doses > 1.")
    doses: int = Field(default=1, description="Number of doses (doses), at least 1.")
    times_day: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None, description="Explicit dose times (days); replaces start_day, every_day and doses."
    )
    titre_pfu_per_mL: Positive | None = Field(
        default=None, description="Intratumoral dose: titre added in the injected region, PFU/mL. The T-VEC label "
        "injects 1e6 PFU/mL first, then 1e8 PFU/mL, in a volume matched to the lesion (up to 4 mL for > 5 cm down to "
        "0.1 mL for < 0.5 cm; IMLYGIC USPI section 2), so the injected tissue sees about the injectate's titre."
    )
    region: RegionConfig = Field(
        default_factory=_injection_site, description="Injected region (intratumoral; not read for iv): default a "
        "sphere (a disc in 2-D) of 100 µm at the lattice centre. Model choice: one injection track."
    )
    dose_pfu: Positive | None = Field(
        default=None, description="Intravenous dose, PFU, into blood_volume_mL (route = 'iv')."
    )
    blood_volume_mL: Positive = Field(
        default=5000.0, description="Blood volume the iv dose mixes into, mL (ICRP reference adult, ~5 L)."
    )
    plasma_half_life_min: Positive = Field(
        default=30.0, description="Half-life of infectious virus in blood (iv), min. Model choice: neutralisation "
        "and uptake by the liver and spleen clear systemic oncolytic viruses within minutes to hours."
    )
    vascular_permeability_um_per_min: NonNegative = Field(
        default=0.01, description="Permeability of the vessel wall to virions (iv), µm/min. Model choice: about "
        "a twentieth of IgG's 0.18 µm/min for a ~200 nm particle that crosses only leaky tumour vessels."
    )
    vessel_surface_per_volume_per_um: Positive = Field(
        default=0.0785, description="Capillary surface per vessel-voxel volume, 1/µm (the drugs' value: 5 µm "
        "capillary in a 20 µm voxel). Model choice (geometry)."
    )
    diffusivity_um2_per_min: Positive = Field(
        default=20.0, description="Diffusion coefficient of virions in tissue, µm²/min, further lowered by ECM. "
        "Model choice: a tenth of the Stokes-Einstein value in water for a ~200 nm HSV-1 particle at 37 °C, "
        "kT/(6πηr) ≈ 3.3 µm²/s = 200 µm²/min, since particles of this size barely move through tumour interstitium "
        "(Pluen 2001 PNAS 98:4628); with adsorption the virus spreads over ~sqrt(D/k_ads) ≈ 30 µm, a few cells, as "
        "plaques do."
    )
    clearance_half_life_min: Positive = Field(
        default=360.0, description="Half-life of infectious virus in tissue (thermal decay, neutralisation, "
        "uptake by non-tumour cells), min. Model choice: hours, the order of HSV-1 loss of infectivity at 37 °C."
    )
    adsorption_per_min: Positive = Field(
        default=0.02, description="Adsorption rate of one virion by the tumour cell of its voxel, 1/min: the "
        "infection hazard of a cell is this times the PFU in its voxel, and each cell removes virus at this rate. "
        "Model choice: attachment is mostly complete within the 1 h adsorption of plaque assays."
    )
    eclipse_min: NonNegative = Field(
        default=480.0, description="Time from infection before an infected cell can lyse, min. Model choice: "
        "HSV-1 progeny appear from ~6-8 h after infection (single-step growth)."
    )
    lysis_time_min: Positive = Field(
        default=720.0, description="Mean time from the end of the eclipse to lysis, min (lysis rate 1/this). Model "
        "choice: HSV-1 yields peak ~18-24 h after infection."
    )
    burst_pfu: NonNegative = Field(
        default=50.0, description="Infectious virus released into the voxel by a lysing cell, PFU. Model choice: "
        "tens to hundreds of PFU per cell are typical of HSV-1 in tumour cells; modelling studies use 50-1000 "
        "(Wodarz 2001 Cancer Res 61:3501; Friedman 2006 Cancer Res 66:2314; both UNVERIFIED values)."
    )
    antiviral_kill_per_day: NonNegative = Field(
        default=0.5, description="Innate antiviral killing of an infected cell (NK cells, type I IFN), 1/day; the "
        "cell dies without releasing virus. Model choice."
    )
    tcell_antiviral_kill_per_day: NonNegative = Field(
        default=2.0, description="Extra killing of an infected cell per CD8 effector in its Moore neighbourhood "
        "(itself included), 1/day: antiviral T cells end infections before the burst. Model choice."
    )
    icd_strength: NonNegative = Field(
        default=1.0, description="Immunogenic cell death: extra antigen a lysed cell releases toward priming, in "
        "units of its antigenicity (dimensionless). Model choice: oncolysis releases DAMPs and viral PAMPs, and "
        "T-VEC's GM-CSF recruits dendritic cells (Andtbacka 2015 J Clin Oncol 33:2780; Ribas 2017 Cell 170:1109); "
        "set at the anthracycline value."
    )

    @field_validator("doses", mode="before")
    @classmethod
    def _at_least_one(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a virus needs at least one dose, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> VirusConfig:
        if self.times_day is None and self.doses > 1 and self.every_day is None:
            raise ValueError(f"{self.doses} doses need every_day (days between doses)")
        if self.times_day is not None and not self.times_day:
            raise ValueError("times_day is empty: a virus needs at least one dose")
        if self.route == "intratumoral" and (self.titre_pfu_per_mL is None or self.dose_pfu is not None):
            raise ValueError("route 'intratumoral' takes titre_pfu_per_mL (and no dose_pfu)")
        if self.route == "iv" and (self.dose_pfu is None or self.titre_pfu_per_mL is not None):
            raise ValueError("route 'iv' takes dose_pfu (and no titre_pfu_per_mL)")
        return self

    def dose_times_min(self) -> list[float]:
        """Time of every dose (min), sorted."""
        days = self.times_day if self.times_day is not None else [
            self.start_day + k * (self.every_day or 0.0) for k in range(self.doses)]
        return sorted(float(d) * 1440.0 for d in days)
