"""The run configuration: one pydantic schema, loaded from TOML, with every parameter's unit and source.

Every field's ``description`` states its unit and where its default comes from (``REFERENCES`` means the
project's parameter table, reproduced in ``docs/MODEL.md``). Unknown keys are rejected with the nearest valid
name suggested; every problem in a file is reported at once, each with its dotted key path and bad value.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

__all__ = [
    "Config",
    "ConfigError",
    "apply_overrides",
    "config_to_toml",
    "load_config",
    "parse_config",
]

FaceBoundary = Literal["dirichlet", "noflux"]
FACE_NAMES = ("x_low", "x_high", "y_low", "y_high", "z_low", "z_high")


class ConfigError(ValueError):
    """A configuration problem a user must fix; the message lists every problem found."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{lines}")


def _check_names(names, known: tuple, what: str):
    """Raise a ValueError naming the first of ``names`` not in ``known``, the valid names and the nearest one."""
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"unknown {what} '{name}', expected any of {', '.join(known)}{hint}")
    return names


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class GridConfig(_Section):
    """The lattice."""

    shape: list[Annotated[int, Field(ge=3, le=4096)]] = Field(
        default=[100, 100],
        description="Voxels per axis, [nx, ny] (2-D) or [nx, ny, nz] (3-D). Unit: voxels.",
    )
    spacing_um: Positive = Field(
        default=20.0,
        description="Voxel edge dx in µm; 20 µm holds one tissue cell (DESIGN; Kather 2017 lattice).",
    )

    @field_validator("shape")
    @classmethod
    def _two_or_three_axes(cls, v: list[int]) -> list[int]:
        if len(v) not in (2, 3):
            raise ValueError(f"expected 2 or 3 axes, got {len(v)}")
        return v


class TimeConfig(_Section):
    """Time stepping."""

    dt_min: Positive = Field(
        default=6.0,
        le=60.0,
        description="Agent and field time step in minutes (PhysiCell's phenotype step is 6 min).",
    )
    duration_min: Positive = Field(default=14400.0, description="Simulated time in minutes (14400 min = 10 days).")


class BoundaryConfig(_Section):
    """Boundary conditions of a diffusing field on the lattice faces."""

    default: FaceBoundary = Field(
        default="dirichlet",
        description="Condition on every face not listed in 'faces': 'dirichlet' (held at 'value') or 'noflux'.",
    )
    value: NonNegative = Field(default=38.0, description="Value held on Dirichlet faces, in the field's unit.")
    faces: dict[str, FaceBoundary] = Field(
        default_factory=dict,
        description="Per-face overrides, e.g. {x_low = 'noflux'}; faces are x_low, x_high, y_low, y_high, z_low, "
        "z_high.",
    )

    @field_validator("faces")
    @classmethod
    def _known_faces(cls, v: dict[str, str]) -> dict[str, str]:
        _check_names(v, FACE_NAMES, "face")
        return v


class OxygenConfig(_Section):
    """Oxygen: diffusion, decay, vessel supply and the boundary far field."""

    diffusivity_um2_per_min: Positive = Field(
        default=1.0e5, description="O2 diffusion coefficient, µm²/min (PhysiCell cancer_immune config)."
    )
    decay_per_min: NonNegative = Field(
        default=0.1, description="O2 background decay, 1/min: 1 mm length without cells (PhysiCell cancer_immune)."
    )
    initial_mmHg: NonNegative = Field(default=38.0, description="Initial pO2 everywhere, mmHg (PhysiCell far field).")
    blood_mmHg: NonNegative = Field(
        default=38.0,
        description="pO2 that vessel voxels relax toward, mmHg: the 38 mmHg far field of PhysiCell's cancer_immune "
        "config, used there as the vascular Dirichlet value.",
    )
    vessel_supply_per_min: NonNegative = Field(
        default=100.0,
        description="Relaxation rate of vessel voxels toward blood pO2, 1/min. Model choice: 10x tumour uptake so a "
        "vessel voxel stays near blood pO2, as PhysiCell's Dirichlet vessel nodes do.",
    )
    boundary: BoundaryConfig = Field(
        default_factory=BoundaryConfig,
        description="Lattice-face conditions; default Dirichlet at 38 mmHg (PhysiCell cancer_immune far field).",
    )
    substeps: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=1,
        description="Solver sub-steps per agent step (dimensionless). The LOD splitting error is first order in "
        "the sub-step: at the defaults the pO2 just outside a 400 µm 2-D nodule is 17.3 mmHg against 10.2 exact "
        "with 1 sub-step, 16.0 with 2, 14.6 with 4 (docs/MODEL.md).",
    )


class SoluteConfig(_Section):
    """A diffusing signalling molecule (chemokine, cytokine or growth factor) of the immune/stromal layer.

    Simulated only when ``immune.enabled`` is true. Defaults differ per field; see each field's description.
    """

    unit: str = Field(default="a.u.", description="Concentration unit of the field (label only, e.g. 'ng/mL').")
    diffusivity_um2_per_min: Positive = Field(default=1000.0, description="Diffusion coefficient, µm²/min.")
    decay_per_min: NonNegative = Field(default=0.016, description="First-order decay, 1/min.")
    initial: NonNegative = Field(default=0.0, description="Initial concentration everywhere, in the field unit.")
    boundary: BoundaryConfig = Field(
        default_factory=lambda: BoundaryConfig(default="dirichlet", value=0.0),
        description="Lattice-face conditions; default Dirichlet at 0 (the far-field tissue clears the signal).",
    )
    large_molecule: bool = Field(
        default=False,
        description="If true, ECM lowers this field's diffusivity (D x (1 - ecm.diffusion_hindrance x ECM)); meant "
        "for antibodies and nanoparticles, which diffuse 5-10x slower in collagen-rich tumours (Pluen 2001 PNAS).",
    )
    substeps: Annotated[int, Field(ge=1, le=1000)] = Field(default=1, description="Solver sub-steps per step.")


def _solute(name, unit, d, decay, d_src, decay_src):
    """A :class:`SoluteConfig` subclass whose defaults are this field's sourced values."""
    return create_model(
        f"{name.capitalize()}FieldConfig",
        __base__=SoluteConfig,
        __doc__=f"The {name} field (unit {unit}); simulated when immune.enabled is true.",
        unit=(str, Field(default=unit, description=f"Concentration unit (label only); {unit}.")),
        diffusivity_um2_per_min=(Positive, Field(default=d, description=f"Diffusion coefficient, µm²/min ({d_src}).")),
        decay_per_min=(NonNegative, Field(default=decay, description=f"First-order decay, 1/min ({decay_src}).")),
    )


ChemokineFieldConfig = _solute(
    "chemokine", "a.u.", 1000.0, 0.016, "PhysiCell immunostimulatory factor", "PhysiCell; 250 µm length"
)
IfngFieldConfig = _solute("ifng", "ng/mL", 6000.0, 0.00385, "spQSP: 1e-6 cm²/s", "spQSP: half-life ~3 h, ln2/180 min")
TgfbFieldConfig = _solute(
    "tgfb", "ng/mL", 3000.0, 0.0116,
    "model choice: ~5e-7 cm²/s, a 25 kDa dimer scaled from IFN-γ by Stokes-Einstein",
    "model choice: 1 h tissue half-life; free TGF-β1 clears from plasma in 2-3 min (Wakefield 1990 J Clin "
    "Invest) but matrix-bound latent TGF-β persists",
)
VegfFieldConfig = _solute(
    "vegf", "ng/mL", 6000.0, 0.01, "~1e-6 cm²/s, VEGF165 in interstitium (Mac Gabhann & Popel transport models)",
    "model choice: ~70 min half-life, the order reported for tissue VEGF",
)
Cxcl12FieldConfig = _solute(
    "cxcl12", "a.u.", 1000.0, 0.016, "chemokine class value, PhysiCell immunostimulatory factor", "PhysiCell"
)


class FieldsConfig(_Section):
    """Diffusing fields."""

    oxygen: OxygenConfig = Field(default_factory=OxygenConfig)
    chemokine: ChemokineFieldConfig = Field(  # type: ignore[valid-type]
        default_factory=ChemokineFieldConfig, description="CXCL9/10-like T-cell attractant (a.u.)."
    )
    ifng: IfngFieldConfig = Field(default_factory=IfngFieldConfig, description="IFN-γ (ng/mL).")  # type: ignore
    tgfb: TgfbFieldConfig = Field(default_factory=TgfbFieldConfig, description="TGF-β (ng/mL).")  # type: ignore
    vegf: VegfFieldConfig = Field(default_factory=VegfFieldConfig, description="VEGF (ng/mL).")  # type: ignore
    cxcl12: Cxcl12FieldConfig = Field(  # type: ignore[valid-type]
        default_factory=Cxcl12FieldConfig, description="CXCL12-like T-cell retention signal of CAFs (a.u.)."
    )


TUMOUR_RULES = ("oxygen_uptake", "proliferation", "apoptosis", "necrosis", "necrotic_clearance",
                "pdl1_expression", "secretion")


class TumourConfig(_Section):
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
        return _check_names(v, TUMOUR_RULES, "tumour rule")

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


class ResistanceConfig(_Section):
    """The eight resistance mechanisms of BIOLOGY.md as switches; turning one off removes exactly that mechanism.

    See docs/MODEL_IMMUNE.md for what each switch gates.
    """

    adaptive_pdl1: bool = Field(default=True, description="1. IFN-γ induces PD-L1 on tumour cells.")
    antigen_loss: bool = Field(
        default=True, description="2. Antigenicity mutates at division, so immune pressure can select low-antigen "
        "clones (immune editing)."
    )
    exhaustion: bool = Field(
        default=True, description="3. Engagement and PD-1 signalling exhaust T cells (LAG-3/TIM-3 rise); exhausted "
        "cells stop killing."
    )
    suppressive_cells: bool = Field(
        default=True, description="4. M2 macrophages (also through their PD-L1) and Tregs suppress effector "
        "killing nearby."
    )
    hypoxia: bool = Field(
        default=True, description="5. Hypoxia suppresses T-cell killing and drives macrophages to M2."
    )
    stromal_exclusion: bool = Field(
        default=True, description="6. ECM slows immune cells and large molecules; CXCL12 holds T cells; "
        "TGF-β suppresses killing."
    )
    abnormal_vasculature: bool = Field(
        default=True, description="7. VEGF makes vessels leaky and poorly perfused: less O2 supply and T-cell entry."
    )
    chemokine_loss: bool = Field(
        default=True, description="8. Tumour cells lose a fraction (tumour chemokine_loss_fraction in [immune]) of "
        "CXCL9/10 secretion."
    )


TCELL_RULES = ("tcell_secretion", "tcell_recruitment", "tcell_kill", "tcell_move", "tcell_death")
MACROPHAGE_RULES = ("macrophage_secretion", "macrophage_recruitment", "macrophage_polarisation", "macrophage_kill",
                    "macrophage_move", "macrophage_death")
CAF_RULES = ("caf_secretion", "caf_activation", "ecm_remodelling")


class TCellConfig(_Section):
    """CD8 effector T cells and regulatory T cells (a T-cell state)."""

    rules: list[str] = Field(
        default=list(TCELL_RULES),
        description=f"T-cell rules switched on, any of {', '.join(TCELL_RULES)}.",
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        return _check_names(v, TCELL_RULES, "T-cell rule")

    recruitment_per_min: NonNegative = Field(
        default=2.0e-4,
        description="Maximal recruitment rate per vessel voxel, 1/min, scaled by priming and chemokine/(chemokine "
        "+ half-max). Model choice: gives tens of CD8 cells per mm² of a primed lesion within days.",
    )
    recruitment_chemokine_half_max: Positive = Field(
        default=0.5, description="Chemokine giving half-maximal recruitment, a.u. Model choice."
    )
    speed_um_per_min: NonNegative = Field(
        default=2.0, description="T-cell migration speed, µm/min (PhysiCell; Kather: 1-2 µm/min)."
    )
    chemotaxis_sensitivity: NonNegative = Field(
        default=5.0,
        description="Bias of the walk: a neighbour's weight is exp(s (c_nbr - c_here)/(c_here + half-max)) "
        "(dimensionless; 0 = unbiased). Model choice.",
    )
    kill_rate_per_day: NonNegative = Field(
        default=4.0, description="k in p = 1 - exp(-k dt q (1 - suppression)), 1/day (spQSP)."
    )
    max_kills: Annotated[int, Field(ge=1)] = Field(
        default=5, description="Kills after which a T cell dies (kills; PhysiCell, Kather: ~5)."
    )
    lifespan_min: Positive = Field(
        default=14400.0, description="Mean lifespan, min: ~10 days (PhysiCell; Kather); death rate 1/lifespan."
    )
    ifng_secretion: NonNegative = Field(
        default=1.0,
        description="IFN-γ secretion of an engaged T cell, ng/mL/min. Model choice, calibrated so that a few "
        "engaged cells raise local IFN-γ past the 0.11 ng/mL PD-L1 half-max (spQSP).",
    )
    pd1_suppression: Fraction = Field(
        default=0.9,
        description="Suppression of killing by a target with full PD-L1 (dimensionless, 0..1); PD-1 engagement "
        "term of the spQSP kill law. Model choice.",
    )
    exhaustion_per_engagement: NonNegative = Field(
        default=0.002,
        description="Exhaustion gained per engaged step, times (1 + pdl1 of the target) (dimensionless). Model "
        "choice: ~500 engaged steps (~2 days at 6 min) without PD-L1 exhaust a cell.",
    )
    lag3_tim3_suppression: Fraction = Field(
        default=0.5,
        description="Extra suppression from LAG-3/TIM-3 at full exhaustion (dimensionless), which PD-1 blockade "
        "does not relieve. Model choice.",
    )
    tgfb_suppression: Fraction = Field(default=0.5, description="Maximal TGF-β suppression of killing. Model choice.")
    tgfb_half_max: Positive = Field(default=0.05, description="TGF-β giving half of that, ng/mL. Model choice.")
    hypoxia_suppression: Fraction = Field(
        default=0.8, description="Suppression of killing at anoxia (dimensionless). Model choice."
    )
    hypoxia_half_max_mmHg: Positive = Field(
        default=5.0, description="pO2 of half-maximal hypoxic suppression, mmHg (PhysiCell hypoxia half-max)."
    )
    hypoxia_hill: Positive = Field(
        default=4.0, description="Hill coefficient of hypoxic suppression, 1 - Hill(pO2) (dimensionless). Model "
        "choice: suppression is negligible above ~10 mmHg."
    )
    m2_suppression: Fraction = Field(
        default=0.5, description="Suppression per M2 macrophage within suppression_radius_um, combined "
        "multiplicatively (dimensionless). Model choice."
    )
    treg_suppression: Fraction = Field(
        default=0.5, description="Suppression per Treg within suppression_radius_um (dimensionless). Model choice."
    )
    suppression_radius_um: NonNegative = Field(
        default=40.0, description="Radius (Chebyshev, µm) within which Tregs and M2 suppress effectors. Model choice."
    )
    cxcl12_retention: Fraction = Field(
        default=0.8, description="Maximal slowing of T cells by CXCL12 (dimensionless). Model choice."
    )
    cxcl12_half_max: Positive = Field(default=0.5, description="CXCL12 of half-maximal retention, a.u. Model choice.")
    treg_recruitment_per_min: NonNegative = Field(
        default=4.0e-5,
        description="Maximal Treg recruitment per vessel voxel, 1/min, scaled like effectors' (CCL22-like "
        "attraction is modelled by the same chemokine). Model choice: ~1 Treg per 5 effectors.",
    )


class MacrophageConfig(_Section):
    """Tumour-associated macrophages: M0, M1 and M2 states."""

    rules: list[str] = Field(
        default=list(MACROPHAGE_RULES),
        description=f"macrophage rules switched on, any of {', '.join(MACROPHAGE_RULES)}.",
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        return _check_names(v, MACROPHAGE_RULES, "macrophage rule")

    recruitment_per_min: NonNegative = Field(
        default=1.0e-4, description="Recruitment per vessel voxel, 1/min, times chemokine/(chemokine + 0.5). "
        "Model choice (CCL2-like attraction modelled by the chemokine field)."
    )
    speed_um_per_min: NonNegative = Field(
        default=1.0, description="Migration speed, µm/min (PhysiCell macrophage default order)."
    )
    lifespan_min: Positive = Field(default=14400.0, description="Mean lifespan, min. Model choice (~10 days).")
    m1_rate_per_min: NonNegative = Field(
        default=1.0e-3, description="Maximal M0 -> M1 rate under IFN-γ or debris, 1/min. Model choice."
    )
    m1_ifng_half_max: Positive = Field(default=0.1, description="IFN-γ of half-maximal M1 drive, ng/mL. Model choice.")
    m2_base_rate_per_min: NonNegative = Field(
        default=1.0e-4, description="M0/M1 -> M2 rate at normoxia, 1/min (PhysiCell rules_sample)."
    )
    m2_max_rate_per_min: NonNegative = Field(
        default=1.0e-3, description="M0/M1 -> M2 rate at anoxia, 1/min (PhysiCell rules_sample cap)."
    )
    m2_o2_half_max_mmHg: Positive = Field(
        default=5.0, description="pO2 of the half-way M2 rate, mmHg (PhysiCell rules_sample)."
    )
    m2_o2_hill: Positive = Field(
        default=8.0, description="Hill coefficient of the O2 dependence (PhysiCell rules_sample)."
    )
    m2_tgfb_rate_per_min: NonNegative = Field(
        default=5.0e-4, description="Extra M2 rate at saturating TGF-β, 1/min. Model choice."
    )
    m2_tgfb_half_max: Positive = Field(default=0.05, description="TGF-β of half that extra rate, ng/mL. Model choice.")
    m1_kill_rate_per_day: NonNegative = Field(
        default=0.5, description="M1 kill rate of a neighbouring tumour cell, 1/day (low; model choice)."
    )
    m1_chemokine_secretion: NonNegative = Field(
        default=0.2, description="Chemokine secretion of an M1 macrophage, a.u./min. Model choice."
    )
    m2_tgfb_secretion: NonNegative = Field(
        default=0.002, description="TGF-β secretion of an M2 macrophage, ng/mL/min. Model choice."
    )
    m2_vegf_secretion: NonNegative = Field(
        default=0.005, description="VEGF secretion of an M2 macrophage, ng/mL/min. Model choice."
    )
    m2_pdl1: Fraction = Field(
        default=0.5, description="PD-L1 of an M2 macrophage in a T cell's Moore neighbourhood adds this to its PD-1 "
        "engagement (0..1), part of resistance.suppressive_cells. Model choice."
    )
    ecm_degradation_per_min: NonNegative = Field(
        default=2.0e-4, description="MMP degradation of ECM in a macrophage's voxel, 1/min. Model choice."
    )


class CAFConfig(_Section):
    """Cancer-associated fibroblasts (tissue layer)."""

    rules: list[str] = Field(
        default=list(CAF_RULES),
        description=f"CAF rules switched on, any of {', '.join(CAF_RULES)}.",
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        return _check_names(v, CAF_RULES, "CAF rule")

    stroma_density: Fraction = Field(
        default=0.0, description="Fraction of stroma-ring voxels seeded with a fibroblast (dimensionless)."
    )
    stroma_inner_um: NonNegative = Field(
        default=0.0, description="Inner radius of the stroma ring beyond the nodule edge, µm."
    )
    stroma_width_um: NonNegative = Field(default=200.0, description="Width of the stroma ring, µm.")
    activation_rate_per_min: NonNegative = Field(
        default=2.0e-3, description="Activation rate at saturating TGF-β, 1/min. Model choice."
    )
    activation_tgfb_half_max: Positive = Field(default=0.05, description="TGF-β of half that rate, ng/mL.")
    initial_activation: Fraction = Field(default=0.2, description="Activation of seeded fibroblasts (0..1).")
    ecm_deposition_per_min: NonNegative = Field(
        default=1.0e-3,
        description="ECM deposited per min by a fully active CAF in its own and each Moore-neighbour voxel, "
        "logistic to 1 (1/min). Model choice (collagen and LOX cross-linking lumped).",
    )
    tgfb_secretion: NonNegative = Field(
        default=0.002, description="TGF-β secretion of a fully active CAF, ng/mL/min. Model choice."
    )
    cxcl12_secretion: NonNegative = Field(
        default=0.05, description="CXCL12 secretion of a fully active CAF, a.u./min. Model choice."
    )


class ECMConfig(_Section):
    """Extracellular matrix density (0..1), a non-diffusing lattice layer."""

    initial_stroma: Fraction = Field(
        default=0.1, description="Initial ECM density outside the nodule (dimensionless). Model choice."
    )
    initial_tumour: Fraction = Field(default=0.0, description="Initial ECM density inside the nodule.")
    motility_block: Fraction = Field(
        default=0.95,
        description="Immune motility is multiplied by 1 - motility_block x ECM (dimensionless). Model choice: "
        "fully dense ECM leaves 5 % of the motility, milder than Kather 2017's stroma permeability of "
        "0.0005-0.0025 per lattice move (motility_block 0.998-0.9995), so T cells still reach the margin in days.",
    )
    diffusion_hindrance: Fraction = Field(
        default=0.85,
        description="Large-molecule D is multiplied by 1 - diffusion_hindrance x ECM: dense ECM gives ~7x slower "
        "IgG diffusion (Pluen 2001 PNAS: 5-10x).",
    )
    update_every_steps: Annotated[int, Field(ge=1)] = Field(
        default=10, description="Steps between rebuilds of the large-molecule diffusion factors (steps)."
    )


class PhenotypeConfig(_Section):
    """Immune-phenotype readout from CD8 density in tumour core, invasive margin and stroma."""

    margin_um: Positive = Field(
        default=500.0, description="Width of the invasive margin centred on the tumour edge, µm (Kather 2018)."
    )
    inflamed_core_per_mm2: NonNegative = Field(
        default=50.0, description="CD8 density in the core at or above which the tumour is inflamed, cells/mm² (2-D) "
        "or cells/mm³ x 0.05 mm (3-D). No consensus cut-off (REFERENCES); model choice."
    )
    excluded_margin_per_mm2: NonNegative = Field(
        default=50.0, description="CD8 density in margin or stroma at or above which a non-inflamed tumour is "
        "excluded (otherwise desert), cells/mm². Model choice."
    )


class ImmuneConfig(_Section):
    """The immune and stromal layer: T cells, macrophages, CAFs, ECM and the signalling fields."""

    enabled: bool = Field(
        default=False,
        description="Simulate the immune/stromal layer (fields chemokine, ifng, tgfb, vegf, cxcl12; ECM; T cells, "
        "macrophages, CAFs). Off gives the tumour-only model.",
    )
    immune_capacity: Annotated[int, Field(ge=1, le=64)] = Field(
        default=1, description="Immune cells per voxel in the immune layer (cells; DESIGN)."
    )
    priming_initial: Fraction = Field(
        default=0.3, description="Priming level at the start (dimensionless, 0..1): pre-existing antigen-specific "
        "immunity. Model choice."
    )
    priming_per_antigen: NonNegative = Field(
        default=0.01,
        description="Priming gained per unit of antigen released (sum of dying cells' antigenicity), logistic to 1 "
        "(dimensionless). Model choice.",
    )
    priming_decay_per_min: NonNegative = Field(
        default=1.0 / 14400.0, description="Relaxation of priming without antigen, 1/min: 10 days. Model choice."
    )
    chemokine_loss_fraction: Fraction = Field(
        default=0.0,
        description="Fraction of tumour CXCL9/10 secretion lost when resistance.chemokine_loss is on "
        "(dimensionless). 0 = no loss; the desert scenario sets it high.",
    )
    vessel_abnormality_vegf_half_max: Positive = Field(
        default=0.5,
        description="VEGF at which vessel perfusion (O2 supply, immune entry) halves, ng/mL, when "
        "resistance.abnormal_vasculature is on. Model choice.",
    )
    initial_macrophages: NonNegative = Field(
        default=0.0, description="Fraction of stroma-ring voxels seeded with an M0 macrophage (dimensionless)."
    )
    tcell: TCellConfig = Field(default_factory=TCellConfig)
    macrophage: MacrophageConfig = Field(default_factory=MacrophageConfig)
    caf: CAFConfig = Field(default_factory=CAFConfig)
    ecm: ECMConfig = Field(default_factory=ECMConfig)
    phenotype: PhenotypeConfig = Field(default_factory=PhenotypeConfig)


class VesselsConfig(_Section):
    """Vessel voxels: oxygen sources (later also drug sources and immune entry points)."""

    pattern: Literal["none", "random", "list"] = Field(
        default="random",
        description="'none', 'random' (each voxel outside the initial tumour is a vessel with probability "
        "'density'), or 'list' (the voxel coordinates in 'positions').",
    )
    density: Fraction = Field(
        default=0.02,
        description="Fraction of voxels that are vessels for pattern 'random' (dimensionless). Tumour "
        "microvessel density is ~50-200 vessels/mm² (Weidner 1991 N Engl J Med); at 20 µm voxels 2 % is "
        "50 /mm² of the plane, the low end of that range.",
    )
    positions: list[list[int]] = Field(
        default_factory=list, description="Vessel voxel coordinates [i, j(, k)] for pattern 'list' (voxels)."
    )
    exclude_tumour: bool = Field(
        default=True, description="Keep random vessels out of the initial tumour (an avascular nodule)."
    )
    angiogenesis: bool = Field(
        default=False,
        description="VEGF-driven sprouting: a free tissue voxel next to a vessel becomes a vessel at rate "
        "angiogenesis_rate_per_min x VEGF/(VEGF + angiogenesis_vegf_half_max). Needs immune.enabled (VEGF field).",
    )
    angiogenesis_rate_per_min: NonNegative = Field(
        default=1.0e-4,
        description="Maximal sprouting rate of a free voxel adjacent to a vessel, 1/min. Model choice: new "
        "capillaries extend by tens of µm per day.",
    )
    angiogenesis_vegf_half_max: Positive = Field(
        default=0.5, description="VEGF of half-maximal sprouting, ng/mL. Model choice."
    )


class InitialTumourConfig(_Section):
    """The seeded tumour: a nodule (2-D disc) or spheroid (3-D ball)."""

    radius_um: NonNegative = Field(default=100.0, description="Radius of the seeded nodule or spheroid, µm.")
    center_um: list[float] | None = Field(
        default=None, description="Centre in µm from the lattice origin; default the lattice centre."
    )
    fill_fraction: Fraction = Field(
        default=1.0, description="Fraction of voxels inside the radius seeded with a cell (dimensionless)."
    )


class InitialConfig(_Section):
    """Initial condition."""

    tumour: InitialTumourConfig = Field(default_factory=InitialTumourConfig)


class OutputConfig(_Section):
    """What the run writes and how often."""

    dir: str | None = Field(
        default=None, description="Output directory; default runs/<name>. The CLI's --out overrides it."
    )
    snapshot_interval_min: Positive = Field(
        default=1440.0, description="Simulated minutes between snapshots (rounded to whole steps); 1440 = daily."
    )
    timeseries_every_steps: Annotated[int, Field(ge=1)] = Field(
        default=1, description="Record the time series every k steps (steps)."
    )
    compression: Annotated[int, Field(ge=0, le=9)] = Field(
        default=4, description="gzip level for snapshot fields (0 = none)."
    )
    summary_plot: bool = Field(default=True, description="Write summary.png at the end of the run.")


class Config(_Section):
    """A complete run configuration."""

    name: str = Field(default="run", min_length=1, description="Run name; names the output directory.")
    seed: Annotated[int, Field(ge=0, lt=2**63)] = Field(default=0, description="Root seed of the run's random stream.")
    backend: Literal["numpy", "cupy", "auto"] = Field(
        default="auto", description="Array backend: numpy (CPU), cupy (NVIDIA GPU) or auto (cupy if a GPU is found)."
    )
    dtype: Literal["float32", "float64"] = Field(default="float32", description="Floating dtype of the fields.")
    grid: GridConfig = Field(default_factory=GridConfig)
    time: TimeConfig = Field(default_factory=TimeConfig)
    fields: FieldsConfig = Field(default_factory=FieldsConfig)
    tumour: TumourConfig = Field(default_factory=TumourConfig)
    vessels: VesselsConfig = Field(default_factory=VesselsConfig)
    initial: InitialConfig = Field(default_factory=InitialConfig)
    immune: ImmuneConfig = Field(default_factory=ImmuneConfig)
    resistance: ResistanceConfig = Field(default_factory=ResistanceConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        bad = set(v) & set('/\\:*?"<>|')
        if bad or v in (".", ".."):
            raise ValueError(f"'{v}' cannot name a directory (avoid {''.join(sorted(bad)) or v})")
        return v

    @model_validator(mode="after")
    def _geometry_consistent(self) -> Config:
        ndim = len(self.grid.shape)
        for fname in ("oxygen", "chemokine", "ifng", "tgfb", "vegf", "cxcl12"):
            for face in getattr(self.fields, fname).boundary.faces:
                if face.startswith("z") and ndim == 2:
                    raise ValueError(f"fields.{fname}.boundary.faces names '{face}' but the grid is 2-D")
        for i, pos in enumerate(self.vessels.positions):
            if len(pos) != ndim or any(not 0 <= p < n for p, n in zip(pos, self.grid.shape)):
                raise ValueError(
                    f"vessels.positions[{i}] = {pos} is not a voxel of the {ndim}-D grid of shape {self.grid.shape}"
                )
        if self.vessels.angiogenesis and not self.immune.enabled:
            raise ValueError("vessels.angiogenesis needs the VEGF field: set immune.enabled = true")
        c = self.initial.tumour.center_um
        if c is not None and len(c) != ndim:
            raise ValueError(f"initial.tumour.center_um has {len(c)} coordinates, the grid is {ndim}-D")
        if self.time.duration_min < self.time.dt_min:
            raise ValueError(
                f"time.duration_min ({self.time.duration_min}) is shorter than one step (time.dt_min = "
                f"{self.time.dt_min})"
            )
        return self

    @property
    def ndim(self) -> int:
        """Number of lattice axes (2 or 3)."""
        return len(self.grid.shape)

    @property
    def n_steps(self) -> int:
        """Number of steps in the run."""
        return int(round(self.time.duration_min / self.time.dt_min))

    def output_dir(self) -> Path:
        """The output directory this config names."""
        return Path(self.output.dir) if self.output.dir else Path("runs") / self.name


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid key names of the section at ``loc`` (used to suggest the nearest name for an unknown key)."""
    cls: Any = model
    for part in loc[:-1]:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return []
        cls = cls.model_fields[part].annotation
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return []


def _format_errors(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            names = _fields_at(Config, loc)
            near = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + (near[0],))}'?" if near else ""
            valid = f" Valid keys here: {', '.join(names)}." if names else ""
            problems.append(f"{path}: unknown key{hint}{valid}")
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        problems.append(f"{path} = {shown}: {msg}")
    return problems


def parse_config(data: dict, source: str = "config") -> Config:
    """Validate a config mapping, raising :class:`ConfigError` listing every problem."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc), source) from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string such as backend=numpy


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides (values in TOML syntax) to a raw config mapping, in place.

    Raises
    ------
    ConfigError
        If an override is not of the form ``key=value`` or walks through a non-table key.
    """
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. grid.shape=[64,64]")
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"--set {item!r}: '{part}' is a value, not a section")
                break
            node = child
        else:
            node[parts[-1]] = _parse_value(text.strip())
    if problems:
        raise ConfigError(problems, "command line")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a TOML config file.

    Raises
    ------
    ConfigError
        If the file is missing, not TOML, or fails validation; the message names the file and every problem.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"no such file: {path}"], str(path)) from None
    except IsADirectoryError:
        raise ConfigError([f"{path} is a directory, expected a TOML file"], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["not a text file; expected TOML"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    if overrides:
        apply_overrides(data, overrides)
    return parse_config(data, str(path))


def _drop_none(obj):
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def config_to_toml(config: Config) -> str:
    """The fully resolved config as TOML text (every default written out)."""
    import tomli_w

    return tomli_w.dumps(_drop_none(config.model_dump(mode="json")))
