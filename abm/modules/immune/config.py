"""Config section of the immune module: ``[immune]`` (T cells, macrophages, priming, phenotype) and its fields."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from abm.modules.stroma.config import CAFConfig, ECMConfig
from abm.schema import Fraction, NonNegative, Positive, Section, check_names, solute

__all__ = [
    "ChemokineFieldConfig",
    "Ccl2FieldConfig",
    "IfngFieldConfig",
    "ImmuneConfig",
    "MACROPHAGE_RULES",
    "MDSCConfig",
    "MDSC_RULES",
    "MacrophageConfig",
    "PhenotypeConfig",
    "TCELL_RULES",
    "TCellConfig",
]

ChemokineFieldConfig = solute(
    "chemokine", "a.u.", 1000.0, 0.016, "PhysiCell immunostimulatory factor", "PhysiCell; 250 µm length"
)
IfngFieldConfig = solute("ifng", "ng/mL", 6000.0, 0.00385, "spQSP: 1e-6 cm²/s", "spQSP: half-life ~3 h, ln2/180 min")
Ccl2FieldConfig = solute(
    "ccl2", "a.u.", 1000.0, 0.016, "model choice: the chemokine field's PhysiCell value (CCL2 is a chemokine of "
    "the same size, ~8.6 kDa mature)", "model choice: the chemokine field's PhysiCell value, 250 µm length"
)

TCELL_RULES = ("tcell_secretion", "tcell_recruitment", "tcell_kill", "tcell_move", "tcell_death")
MACROPHAGE_RULES = ("macrophage_secretion", "macrophage_recruitment", "macrophage_polarisation", "macrophage_kill",
                    "macrophage_move", "macrophage_death")
MDSC_RULES = ("mdsc_ccl2_secretion", "mdsc_recruitment", "mdsc_move", "mdsc_death")


class TCellConfig(Section):
    """CD8 effector T cells and regulatory T cells (a T-cell state)."""

    rules: list[str] = Field(
        default=list(TCELL_RULES),
        description=f"T-cell rules switched on, any of {', '.join(TCELL_RULES)}.",
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        return check_names(v, TCELL_RULES, "T-cell rule")

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


class MacrophageConfig(Section):
    """Tumour-associated macrophages: M0, M1 and M2 states."""

    rules: list[str] = Field(
        default=list(MACROPHAGE_RULES),
        description=f"macrophage rules switched on, any of {', '.join(MACROPHAGE_RULES)}.",
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        return check_names(v, MACROPHAGE_RULES, "macrophage rule")

    recruitment_per_min: NonNegative = Field(
        default=1.0e-4, description="Recruitment per vessel voxel, 1/min, times chemokine/(chemokine + 0.5). "
        "Model choice (CCL2-like attraction modelled by the chemokine field)."
    )
    speed_um_per_min: NonNegative = Field(
        default=1.0, description="Migration speed, µm/min (PhysiCell macrophage default order)."
    )
    chemotaxis_sensitivity: NonNegative = Field(
        default=5.0,
        description="Bias of the walk up the chemokine gradient, as for T cells (dimensionless; 0 = unbiased). "
        "Model choice: the T-cell value.",
    )
    recruitment_chemokine_half_max: Positive = Field(
        default=0.5,
        description="Chemokine giving half-maximal recruitment and the gradient scale of the walk, a.u. Model "
        "choice: the T-cell value.",
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



class MDSCConfig(Section):
    """Myeloid-derived suppressor cells: recruited on a CCL2-like signal, suppress effector T cells nearby."""

    enabled: bool = Field(
        default=False,
        description="Simulate MDSCs (the mdsc table and the ccl2 field) when the immune layer is on. Off by default, "
        "so configs without this key give the numbers they gave before MDSCs existed.",
    )
    rules: list[str] = Field(
        default=list(MDSC_RULES), description=f"MDSC rules switched on, any of {', '.join(MDSC_RULES)}."
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        return check_names(v, MDSC_RULES, "MDSC rule")

    ccl2_secretion: NonNegative = Field(
        default=0.1, description="CCL2 secretion of a normoxic tumour cell, a.u./min. Model choice: the "
        "CXCL9/10-like chemokine's rate."
    )
    ccl2_hypoxia_boost: NonNegative = Field(
        default=3.0, description="Fold increase of CCL2 secretion of a fully hypoxic (0 mmHg) tumour cell, falling "
        "linearly to 0 at ccl2_hypoxia_threshold_mmHg (dimensionless). Model choice: hypoxia (HIF-1α) raises CCL2 and "
        "MDSC recruitment (Corzo 2010 J Exp Med 207:2439; Chiu 2017 Nat Commun 8:517; both UNVERIFIED, recalled)."
    )
    ccl2_hypoxia_threshold_mmHg: Positive = Field(
        default=10.0, description="pO2 below which CCL2 secretion rises, mmHg (HP10, the tumour module's hypoxic "
        "cut-off; McKeown 2014 Br J Radiol)."
    )
    recruitment_per_min: NonNegative = Field(
        default=1.0e-3, description="Maximal MDSC recruitment per vessel voxel, 1/min, times CCL2/(CCL2 + half-max) "
        "and perfusion. Model choice: ten times the macrophage value, since MDSCs expand in the blood of "
        "tumour-bearing hosts (Gabrilovich & Nagaraj 2009 Nat Rev Immunol 9:162); gives ~50-170 MDSCs per mm² in "
        "the 400 µm scenario nodule within 2-3 days."
    )
    ccl2_half_max: Positive = Field(
        default=0.5, description="CCL2 giving half-maximal recruitment and the gradient scale of the walk, a.u. "
        "Model choice (the chemokine value)."
    )
    monocytic_fraction: Fraction = Field(
        default=0.5, description="Share φ of recruitment through the monocytic (M-MDSC, CCR2) route; the rest "
        "(PMN-MDSC) enters through CXCR2 (dimensionless). CCR2 blockade scales the first share, CXCR2 blockade the "
        "second. Model choice: PMN-MDSCs are the majority in most mouse tumour models (Youn 2008 J Immunol "
        "181:5791, UNVERIFIED), M-MDSCs dominate CCL2-rich tumours; 0.5 takes neither side."
    )
    speed_um_per_min: NonNegative = Field(
        default=1.0, description="Migration speed, µm/min. Model choice: the macrophage value."
    )
    chemotaxis_sensitivity: NonNegative = Field(
        default=5.0, description="Bias of the walk up the CCL2 gradient (dimensionless; 0 = unbiased). Model "
        "choice: the T-cell value."
    )
    lifespan_min: Positive = Field(
        default=2880.0, description="Mean lifespan in the tumour, min (death rate 1/lifespan): 2 days. Model choice: "
        "tumour MDSCs turn over within days (Condamine 2014 J Clin Invest 124:2626, UNVERIFIED)."
    )
    suppression: Fraction = Field(
        default=0.5, description="Maximal suppression σ_MDSC of effector killing (dimensionless), reached at "
        "saturation_count MDSCs in the effector's Moore neighbourhood (itself included). Model choice: arginase-1, "
        "iNOS and ROS suppress T cells on contact (Gabrilovich & Nagaraj 2009 Nat Rev Immunol 9:162)."
    )
    saturation_count: Positive = Field(
        default=2.0, description="MDSCs in the Moore neighbourhood at which suppression saturates, K in "
        "σ min(1, n/K) (cells). Model choice: in vitro MDSC:T-cell ratios of 1:1-1:2 suppress proliferation "
        "strongly (Gabrilovich & Nagaraj 2009)."
    )


class PhenotypeConfig(Section):
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


class ImmuneConfig(Section):
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
    initial_tcells: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="CD8 effector T cells seeded at t = 0 on distinct random voxels of a shell around the seeded "
        "nodule (cells). PhysiCell's cancer_immune_3D sample introduces 7500 immune cells this way.",
    )
    initial_tcell_gap_um: NonNegative = Field(
        default=30.0,
        description="Gap between the seeded nodule's edge and the inner edge of the T-cell shell, µm (PhysiCell "
        "cancer_immune_3D introduce_immune_cells: tumour radius + 30 µm).",
    )
    initial_tcell_shell_um: Positive = Field(
        default=75.0,
        description="Thickness of the T-cell shell, µm (PhysiCell cancer_immune_3D introduce_immune_cells: 75 µm).",
    )
    tcell: TCellConfig = Field(default_factory=TCellConfig)
    macrophage: MacrophageConfig = Field(default_factory=MacrophageConfig)
    mdsc: MDSCConfig = Field(default_factory=MDSCConfig)
    caf: CAFConfig = Field(default_factory=CAFConfig)
    ecm: ECMConfig = Field(default_factory=ECMConfig)
    phenotype: PhenotypeConfig = Field(default_factory=PhenotypeConfig)


