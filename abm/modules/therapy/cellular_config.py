"""Config of the cellular and immunising therapies: adoptive T-cell transfer, vaccines, epigenetic antigen restoration.

An adoptive transfer is a named table ``[cell_therapy.<name>]`` (:class:`CellTherapyConfig`): CAR-T or TIL
products infused at their times into vessel voxels or a region. A vaccine is ``[vaccine.<name>]``
(:class:`VaccineConfig`): antigen doses added to the lymph-node priming drive. Epigenetic drugs are ordinary
``[therapy.<name>]`` drugs binding the target ``DNMT1``; the law of antigen restoration is global,
``[effects.epigenetic]`` (:class:`EpigeneticEffects`). Laws, defaults and sources: docs/THERAPIES.md section 6.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from abm.modules.therapy.cytotoxic_config import RegionConfig
from abm.schema import Fraction, NonNegative, Positive, Section

__all__ = ["CellTherapyConfig", "EpigeneticEffects", "VaccineConfig", "event_times_min"]


def event_times_min(times_day, start_day: float, every_day, count: int) -> list[float]:
    """Times of a schedule (min), sorted: ``times_day`` if given, else ``count`` events from ``start_day``."""
    days = times_day if times_day is not None else [start_day + k * (every_day or 0.0) for k in range(count)]
    return sorted(float(d) * 1440.0 for d in days)


class _Schedule(Section):
    """Shared timing: a regular course (start, interval, number) or explicit times."""

    start_day: NonNegative = Field(default=0.0, description="Day of the first event (days from t = 0).")
    every_day: Positive | None = Field(default=None, description="Days between events; needed when there are more.")
    times_day: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None, description="Explicit times (days); replaces start_day, every_day and the count."
    )

    def _check_schedule(self, count: int, what: str) -> None:
        if self.times_day is None and count > 1 and self.every_day is None:
            raise ValueError(f"{count} {what} need every_day (days between them)")
        if self.times_day is not None and not self.times_day:
            raise ValueError(f"times_day is empty: at least one {what[:-1]} is needed")


class CellTherapyConfig(_Schedule):
    """An adoptive T-cell product: CAR-T or tumour-infiltrating lymphocytes, infused on a schedule."""

    description: str = Field(default="", description="What the product is.")
    kind: Literal["car_t", "til"] = Field(
        description="'car_t': recognition through the CAR, independent of MHC-I and antigenicity; 'til': "
        "TCR recognition through MHC-I, the endogenous law (the target's antigenicity)."
    )
    cells: int = Field(description="T cells given per infusion (cells, at least 1), on the simulated lattice.")
    infusions: int = Field(default=1, description="Number of infusions (infusions, at least 1).")
    site: Literal["vessels", "region"] = Field(
        default="vessels", description="Where the cells enter: 'vessels' (vessel voxels inside the region, as "
        "after intravenous infusion) or 'region' (any voxel of the region, as after intratumoral injection)."
    )
    region: RegionConfig = Field(default_factory=RegionConfig, description="Region of entry (default the lattice).")
    car_recognition: Fraction = Field(
        default=1.0, description="CAR-T only: recognition q used in the kill law in place of the target's "
        "antigenicity (dimensionless, 0..1). 1: the CAR antigen is on every tumour cell at full density. Model "
        "choice (the CAR target is assumed uniformly expressed; antigen-negative escape is not modelled)."
    )
    kill_rate_per_day: Positive | None = Field(
        default=None, description="Kill rate k of the product's cells in the T-cell kill law, 1/day; default the "
        "endogenous immune.tcell.kill_rate_per_day."
    )
    max_kills: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Kills after which a cell dies (kills); default immune.tcell.max_kills."
    )
    death_per_day: NonNegative = Field(
        default=0.05, description="Death (contraction) rate of the transferred cells in tissue, 1/day; replaces "
        "the endogenous 1/lifespan. Model choice: mean persistence 20 days, between the ~10-day endogenous "
        "lifespan and the months-to-years persistence of CD19 CAR-T in blood (Maude 2014 N Engl J Med 371:1507, "
        "UNVERIFIED: recalled)."
    )
    pd1_sensitivity: Fraction = Field(
        default=1.0, description="Factor on the PD-1/PD-L1 suppression and PD-1 exhaustion signalling of the "
        "product's cells (dimensionless): 1 as endogenous cells, 0 a PD-1 knockout (Stadtmauer 2020 Science "
        "367:eaba7365, UNVERIFIED: recalled). Checkpoint blockade acts on them through the same read point."
    )

    @field_validator("cells", "infusions", mode="before")
    @classmethod
    def _at_least_one(cls, v, info):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"{info.field_name} must be at least 1, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CellTherapyConfig:
        self._check_schedule(self.infusions, "infusions")
        if self.kind != "car_t" and "car_recognition" in self.model_fields_set:
            raise ValueError(f"car_recognition is for kind = 'car_t', not '{self.kind}'")
        return self

    def infusion_times_min(self) -> list[float]:
        """Time of every infusion (min), sorted."""
        return event_times_min(self.times_day, self.start_day, self.every_day, self.infusions)


class VaccineConfig(_Schedule):
    """A therapeutic cancer vaccine: antigen doses that add to the lymph-node priming drive."""

    description: str = Field(default="", description="What the vaccine is.")
    antigen_dose: Positive = Field(
        description="Antigen of one dose, in the unit of the priming drive: the antigen released by one dying "
        "tumour cell of antigenicity 1 (dimensionless). Model choice (strength of the vaccine)."
    )
    doses: int = Field(default=1, description="Number of doses (doses, at least 1).")
    release_day: NonNegative = Field(
        default=2.0, description="Depot release time constant τ, days: a dose releases its antigen at "
        "A e^(-t/τ)/τ; 0 gives a bolus in the step of the dose. Model choice: adjuvanted peptide antigen persists "
        "at the injection site for days to weeks (Hailemichael 2013 Nat Med 19:465, UNVERIFIED: recalled)."
    )

    @field_validator("doses", mode="before")
    @classmethod
    def _at_least_one(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"doses must be at least 1, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> VaccineConfig:
        self._check_schedule(self.doses, "doses")
        return self

    def dose_times_min(self) -> list[float]:
        """Time of every dose (min), sorted."""
        return event_times_min(self.times_day, self.start_day, self.every_day, self.doses)


class EpigeneticEffects(Section):
    """Antigen restoration by DNA-demethylating drugs (target DNMT1)."""

    restoration_per_day: NonNegative = Field(
        default=4.0, description="Rate k of antigen restoration of a fully cycling tumour cell at full DNMT1 "
        "occupancy, 1/day: dq/dt = k θ w (q_max - q). Model choice: the label's 5-day decitabine course (tumour "
        "occupancy peaking near 0.6 for an hour or two a day) restores up to about 40 % of the lost antigenicity of "
        "well-oxygenated cycling cells (configs/therapies/decitabine_anti_pd1_antigen_low.toml: 90th percentile "
        "0.10 -> 0.45 by day 8), the order of the MHC-I and cancer-testis antigen re-expression seen within days of "
        "low-dose decitabine (Siebenkäs 2017 PLoS One 12:e0179501, UNVERIFIED: recalled)."
    )
    antigenicity_restored: Fraction = Field(
        default=1.0, description="Antigenicity q_max a fully demethylated cell approaches (dimensionless). Model "
        "choice: full presentation."
    )
