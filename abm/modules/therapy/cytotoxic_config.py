"""Config of the cytotoxic therapies: a chemotherapy drug's kill law, radiotherapy courses and radiosensitivity.

``[therapy.<name>] kind = "chemotherapy"`` carries a ``cytotoxic`` table (:class:`CytotoxicConfig`), an antibody-drug
conjugate a ``payload`` table (:class:`PayloadConfig`); a course of
radiation is a named table ``[radiotherapy.<name>]`` (:class:`RadiotherapyConfig`); the linear-quadratic
parameters of every cell type and the oxygen effect are global, ``[effects.radiation]``
(:class:`RadiationEffects`). Laws, defaults and sources: docs/THERAPIES.md section 5.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from abm.schema import NonNegative, Positive, Section

__all__ = ["CytotoxicConfig", "LQConfig", "PayloadConfig", "RadiationEffects", "RadiotherapyConfig", "RegionConfig"]


class CytotoxicConfig(Section):
    """Kill law of a chemotherapy drug (Emax on the local free concentration) and its immunogenic cell death."""

    kill_max_per_day: NonNegative = Field(
        description="Maximal kill rate k_max of a fully cycling tumour cell at saturating concentration, 1/day."
    )
    ec50_nM: Positive = Field(description="Concentration of half-maximal kill rate, nM (free drug in tissue).")
    hill: Positive = Field(default=1.0, description="Hill coefficient of the Emax law (dimensionless); 1: Emax.")
    tcell_kill_max_per_day: NonNegative = Field(
        default=0.0, description="Lymphotoxicity: maximal kill rate of a T cell at saturating concentration, 1/day "
        "(the same Emax law, no cycling weight); 0 switches it off."
    )
    icd_strength: NonNegative = Field(
        default=0.0, description="Immunogenic cell death: extra antigen a tumour cell killed by the drug releases "
        "toward priming, in units of its own antigenicity (dimensionless); 0: an ordinary death."
    )


class PayloadConfig(Section):
    """Cytotoxic payload of an antibody-drug conjugate: kill rising with the ADC's bound share of its target."""

    kill_max_per_day: NonNegative = Field(
        description="Kill rate k_max of a fully cycling tumour cell whose target is fully bound by the ADC, 1/day."
    )
    icd_strength: NonNegative = Field(
        default=0.0, description="Immunogenic cell death: extra antigen a tumour cell killed by the payload releases "
        "toward priming, in units of its own antigenicity (dimensionless); 0: an ordinary death."
    )


class LQConfig(Section):
    """Linear-quadratic radiosensitivity of one cell type (well-oxygenated, acute dose)."""

    alpha_per_Gy: NonNegative = Field(description="Linear coefficient α, 1/Gy.")
    beta_per_Gy2: NonNegative = Field(description="Quadratic coefficient β, 1/Gy².")


class RadiationEffects(Section):
    """Radiosensitivity of every cell type, the oxygen effect and radiation-induced immunogenic cell death."""

    tumour: LQConfig = Field(
        default_factory=lambda: LQConfig(alpha_per_Gy=0.3, beta_per_Gy2=0.03),
        description="Tumour cells: α 0.3 /Gy, α/β 10 Gy (SF2 0.49). α/β ~10 Gy for tumours and early-responding "
        "tissue: Fowler 1989 Br J Radiol 62:679; α 0.3 /Gy: model choice inside the in vitro range of human tumour "
        "lines (SF2 0.2-0.8).",
    )
    caf: LQConfig = Field(
        default_factory=lambda: LQConfig(alpha_per_Gy=0.1, beta_per_Gy2=0.033),
        description="CAFs: α 0.1 /Gy, α/β 3 Gy (late-responding fibroblast-like tissue, Fowler 1989). Model choice: "
        "CAFs survive clinical doses and turn senescent (Hellevik 2012 Radiat Oncol 7:59, UNVERIFIED).",
    )
    tcell: LQConfig = Field(
        default_factory=lambda: LQConfig(alpha_per_Gy=0.4, beta_per_Gy2=0.0),
        description="T cells: purely exponential survival, α = 1/D37 = 1/2.5 Gy for the T-type lymphocyte fraction "
        "of human blood (Int J Radiat Biol 1982 41:15, abstract read: D37 2.50 Gy; 0.72 Gy for the most sensitive "
        "fraction); β 0.",
    )
    macrophage: LQConfig = Field(
        default_factory=lambda: LQConfig(alpha_per_Gy=0.1, beta_per_Gy2=0.01),
        description="Macrophages: α 0.1 /Gy, α/β 10 Gy. Model choice: differentiated macrophages are among the "
        "most radioresistant immune cells (no LQ fit found).",
    )
    oer_max: Annotated[float, Field(ge=1.0)] = Field(
        default=3.0, description="Oxygen enhancement ratio at full oxygenation relative to anoxia (dimensionless): "
        "~3 for X-rays (Alper & Howard-Flanders 1956 Nature 178:978; Wouters & Brown 1997 Radiat Res 147:541)."
    )
    oer_k_mmHg: Positive = Field(
        default=3.0, description="pO2 of half-maximal oxygen enhancement, mmHg (~3 mmHg: Wouters & Brown 1997)."
    )
    icd_strength: NonNegative = Field(
        default=0.5, description="Immunogenic cell death by radiation: extra antigen a tumour cell killed by a "
        "fraction releases toward priming, in units of its antigenicity (dimensionless). Model choice: radiation "
        "induces calreticulin exposure, HMGB1 and ATP release (Golden 2014 Oncoimmunology 3:e28518, UNVERIFIED), "
        "set below the anthracycline/oxaliplatin value of 1.",
    )


class RegionConfig(Section):
    """Where a course deposits its dose: the whole lattice, a sphere (a disc in 2-D) or a box, in µm."""

    shape: Literal["whole", "sphere", "box"] = Field(default="whole", description="whole, sphere or box.")
    center_um: list[float] | None = Field(
        default=None, description="Sphere centre in µm from the lattice origin; default the lattice centre."
    )
    radius_um: Positive | None = Field(default=None, description="Sphere radius, µm.")
    lower_um: list[float] | None = Field(default=None, description="Box lower corner, µm from the origin.")
    upper_um: list[float] | None = Field(default=None, description="Box upper corner, µm from the origin.")

    @model_validator(mode="after")
    def _complete(self) -> RegionConfig:
        given = {k for k in ("center_um", "radius_um", "lower_um", "upper_um") if getattr(self, k) is not None}
        allowed = {"whole": set(), "sphere": {"center_um", "radius_um"}, "box": {"lower_um", "upper_um"}}[self.shape]
        if given - allowed:
            raise ValueError(f"shape '{self.shape}' takes no {', '.join(sorted(given - allowed))}")
        if self.shape == "sphere" and self.radius_um is None:
            raise ValueError("a sphere needs radius_um")
        if self.shape == "box":
            if self.lower_um is None or self.upper_um is None:
                raise ValueError("a box needs lower_um and upper_um")
            if len(self.lower_um) != len(self.upper_um) or any(a >= b for a, b in zip(self.lower_um, self.upper_um)):
                raise ValueError(f"box lower_um {self.lower_um} must lie below upper_um {self.upper_um} on every axis")
        return self

    def coordinates(self) -> list[tuple[str, list[float]]]:
        """The coordinate lists given (``(key, values)``), for the check against the grid's axes."""
        return [(k, v) for k in ("center_um", "lower_um", "upper_um") if (v := getattr(self, k)) is not None]


class RadiotherapyConfig(Section):
    """A course of external-beam radiotherapy: fractions of ``dose_Gy`` at their times, over a region."""

    description: str = Field(default="", description="What the course is.")
    dose_Gy: Positive = Field(description="Dose per fraction, Gy (physical dose at full oxygenation).")
    start_day: NonNegative = Field(default=0.0, description="Day of the first fraction (days from t = 0).")
    every_day: Positive | None = Field(default=None, description="Days between fractions; needed when fractions > 1.")
    fractions: int = Field(default=1, description="Number of fractions (fractions), at least 1.")
    times_day: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None, description="Explicit fraction times (days); replaces start_day, every_day and fractions."
    )
    region: RegionConfig = Field(default_factory=RegionConfig, description="The irradiated region.")

    @field_validator("fractions", mode="before")
    @classmethod
    def _at_least_one(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a course needs at least one fraction, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RadiotherapyConfig:
        if self.times_day is None and self.fractions > 1 and self.every_day is None:
            raise ValueError(f"{self.fractions} fractions need every_day (days between fractions)")
        if self.times_day is not None and not self.times_day:
            raise ValueError("times_day is empty: a course needs at least one fraction")
        return self

    def fraction_times_min(self) -> list[float]:
        """Time of every fraction (min), sorted."""
        days = self.times_day if self.times_day is not None else [
            self.start_day + k * (self.every_day or 0.0) for k in range(self.fractions)]
        return sorted(float(d) * 1440.0 for d in days)
