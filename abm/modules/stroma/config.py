"""Config section of the stroma module: ``[immune.caf]``, ``[immune.ecm]`` and its fields (TGF-β, VEGF, CXCL12)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from abm.schema import Fraction, NonNegative, Positive, Section, check_names, solute

__all__ = ["CAFConfig", "CAF_RULES", "Cxcl12FieldConfig", "ECMConfig", "TgfbFieldConfig", "VegfFieldConfig"]

TgfbFieldConfig = solute(
    "tgfb", "ng/mL", 3000.0, 0.0116,
    "model choice: ~5e-7 cm²/s, a 25 kDa dimer scaled from IFN-γ by Stokes-Einstein",
    "model choice: 1 h tissue half-life; free TGF-β1 clears from plasma in 2-3 min (Wakefield 1990 J Clin "
    "Invest) but matrix-bound latent TGF-β persists",
)
VegfFieldConfig = solute(
    "vegf", "ng/mL", 6000.0, 0.01, "~1e-6 cm²/s, VEGF165 in interstitium (Mac Gabhann & Popel transport models)",
    "model choice: ~70 min half-life, the order reported for tissue VEGF",
)
Cxcl12FieldConfig = solute(
    "cxcl12", "a.u.", 1000.0, 0.016, "chemokine class value, PhysiCell immunostimulatory factor", "PhysiCell"
)



CAF_RULES = ("caf_secretion", "caf_activation", "ecm_remodelling")


class CAFConfig(Section):
    """Cancer-associated fibroblasts (tissue layer)."""

    rules: list[str] = Field(
        default=list(CAF_RULES),
        description=f"CAF rules switched on, any of {', '.join(CAF_RULES)}.",
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        return check_names(v, CAF_RULES, "CAF rule")

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
    deactivation_rate_per_min: NonNegative = Field(
        default=2.4e-4,
        description="Inactivation rate of a CAF without TGF-β signalling, 1/min (e-folding ~2.9 days). Model "
        "choice: activated myofibroblasts revert toward quiescence when the fibrogenic signal stops (Kisseleva T "
        "et al. 2012 PNAS 109:9448, liver fibrosis regression); no rate measured in tumours was found.",
    )
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


class ECMConfig(Section):
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


