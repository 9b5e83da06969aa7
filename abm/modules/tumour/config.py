"""Config section of the tumour module: ``[tumour]`` and ``[initial.tumour]``."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from abm.schema import Fraction, NonNegative, Positive, Section, check_names

__all__ = ["InitialTumourConfig", "TUMOUR_RULES", "TumourConfig"]

TUMOUR_RULES = ("oxygen_uptake", "proliferation", "apoptosis", "necrosis", "necrotic_clearance",
                "pdl1_expression", "secretion")


class TumourConfig(Section):
    """Tumour-cell parameters and rules."""

    rules: list[str] = Field(
        default=list(TUMOUR_RULES),
        description=f"Tumour rules switched on, any of {', '.join(TUMOUR_RULES)}.",
    )
    proliferation_rate_per_min: NonNegative = Field(
        default=7.2e-4,
        description="Maximal division rate, 1/min: 0.0432 /h, a ~16 h doubling (PhysiCell standard cycle models).",
    )
    proliferation_o2_threshold_mmHg: NonNegative = Field(
        default=5.0, description="pO2 below which cells do not divide, mmHg (PhysiCell o2_proliferation_threshold)."
    )
    proliferation_o2_saturation_mmHg: Positive = Field(
        default=38.0,
        description="pO2 at and above which division runs at its maximal rate, mmHg (PhysiCell cancer_immune "
        "o2_proliferation_saturation).",
    )
    apoptosis_rate_per_min: NonNegative = Field(
        default=5.31667e-5, description="Background apoptosis rate, 1/min (PhysiCell standard cancer-cell default)."
    )
    necrosis_onset_mmHg: NonNegative = Field(
        default=5.0, description="pO2 below which necrosis starts, mmHg (PhysiCell core o2_necrosis_threshold)."
    )
    necrosis_max_mmHg: NonNegative = Field(
        default=2.5, description="pO2 at and below which necrosis runs at its maximal rate, mmHg (PhysiCell core)."
    )
    necrosis_rate_per_min: NonNegative = Field(
        default=1.0 / 360.0,
        description="Maximal necrosis rate under sustained hypoxia, 1/min: 1/(6 h) (PhysiCell core).",
    )
    necrotic_clearance_per_min: NonNegative = Field(
        default=1.0 / 7200.0,
        description="Rate at which a necrotic voxel is cleared and freed, 1/min: 1/(5 days). Model assumption: "
        "necrotic debris persists for days (PhysiCell necrotic lysis is of this order); no sourced consensus.",
    )
    oxygen_uptake_per_min: NonNegative = Field(
        default=10.0,
        description="O2 uptake rate of a voxel holding a live tumour cell, 1/min (PhysiCell cancer_immune); gives a "
        "~100 µm O2 penetration length sqrt(D/U).",
    )
    hypoxic_threshold_mmHg: NonNegative = Field(
        default=10.0,
        description="pO2 below which a tumour cell counts as hypoxic in the readouts, mmHg (HP10, the usual "
        "electrode cut-off; McKeown 2014 Br J Radiol).",
    )

    antigenicity_initial: Fraction = Field(
        default=0.8,
        description="Mean antigenicity q of the seeded cells (dimensionless, 0..1): the factor on the T-cell kill "
        "rate (spQSP kill law). Model choice; low values model low mutational burden or MHC-I loss.",
    )
    antigenicity_spread: NonNegative = Field(
        default=0.1, description="Standard deviation of the seeded cells' antigenicity (dimensionless); model choice."
    )
    antigen_mutation_prob: Fraction = Field(
        default=0.1,
        description="Probability that a daughter's antigenicity mutates at division (per division). Model choice "
        "for immune editing; active only with resistance.antigen_loss.",
    )
    antigen_mutation_step: NonNegative = Field(
        default=0.1,
        description="Standard deviation of a mutation's change in antigenicity (dimensionless; result clipped to "
        "0..1). Model choice.",
    )
    pdl1_baseline: Fraction = Field(
        default=0.1, description="Constitutive PD-L1 expression (fraction of maximal, 0..1). Model choice."
    )
    pdl1_ifng_induced: Fraction = Field(
        default=0.9,
        description="Extra PD-L1 expression at saturating IFN-γ (fraction of maximal); active only with "
        "resistance.adaptive_pdl1. Model choice (PD-L1 is strongly IFN-γ-inducible).",
    )
    pdl1_ifng_half_max: Positive = Field(
        default=0.11, description="IFN-γ giving half-maximal PD-L1 induction, ng/mL (spQSP)."
    )
    pdl1_ifng_hill: Positive = Field(default=1.26, description="Hill coefficient of PD-L1 induction by IFN-γ (spQSP).")
    pdl1_half_life_min: Positive = Field(
        default=144.0, description="Half-life with which PD-L1 relaxes to its target, min: 0.1 day (spQSP)."
    )
    chemokine_secretion: NonNegative = Field(
        default=0.1,
        description="CXCL9/10-like chemokine secretion per tumour-cell voxel, a.u./min. Model choice: with the "
        "PhysiCell decay of 0.016 /min a solid nest reaches ~a few a.u.",
    )
    chemokine_ifng_boost: NonNegative = Field(
        default=4.0,
        description="Fold increase of chemokine secretion at saturating IFN-γ (dimensionless; CXCL9/10 are "
        "IFN-γ-induced genes). Model choice.",
    )
    vegf_secretion_hypoxic: NonNegative = Field(
        default=0.01,
        description="VEGF secretion of a fully hypoxic tumour cell, ng/mL/min, scaled by the HIF ramp below "
        "tumour.hypoxic_threshold_mmHg. Model choice.",
    )
    tgfb_secretion: NonNegative = Field(
        default=0.0005, description="Baseline TGF-β secretion per tumour cell, ng/mL/min. Model choice."
    )
    ecm_degradation_per_min: NonNegative = Field(
        default=1.0e-4,
        description="MMP degradation of ECM in a voxel holding a tumour cell, 1/min (first order). Model choice.",
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        return check_names(v, TUMOUR_RULES, "tumour rule")

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> TumourConfig:
        if self.necrosis_max_mmHg >= self.necrosis_onset_mmHg:
            raise ValueError(
                f"necrosis_max_mmHg ({self.necrosis_max_mmHg}) must be below necrosis_onset_mmHg "
                f"({self.necrosis_onset_mmHg})"
            )
        if self.proliferation_o2_saturation_mmHg <= self.proliferation_o2_threshold_mmHg:
            raise ValueError(
                f"proliferation_o2_saturation_mmHg ({self.proliferation_o2_saturation_mmHg}) must exceed "
                f"proliferation_o2_threshold_mmHg ({self.proliferation_o2_threshold_mmHg})"
            )
        return self




class InitialTumourConfig(Section):
    """The seeded tumour: a nodule (2-D disc) or spheroid (3-D ball)."""

    radius_um: NonNegative = Field(default=100.0, description="Radius of the seeded nodule or spheroid, µm.")
    center_um: list[float] | None = Field(
        default=None, description="Centre in µm from the lattice origin; default the lattice centre."
    )
    fill_fraction: Fraction = Field(
        default=1.0, description="Fraction of voxels inside the radius seeded with a cell (dimensionless)."
    )


