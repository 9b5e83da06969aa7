"""Config section of the vasculature module: ``[vessels]`` and ``[fields.oxygen]``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from abm.schema import BoundaryConfig, Fraction, NonNegative, Positive, Section

__all__ = ["OxygenConfig", "VesselsConfig"]

class OxygenConfig(Section):
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
    solver: Literal["lod", "exact"] = Field(
        default="exact",
        description="'exact': the unsplit implicit step (multigrid-preconditioned conjugate gradients to 'tolerance'); "
        "'lod': the operator-split step, about as fast but, with tumour uptake at K dt = 60, it puts several times "
        "too many cells below 10 mmHg (docs/MODEL.md §3b).",
    )
    tolerance: Annotated[float, Field(gt=0, le=0.1)] = Field(
        default=1e-3,
        description="Stopping tolerance of the exact solve: estimated max error relative to the field's maximum "
        "(dimensionless); 1e-3 is ~0.04 mmHg at 38 mmHg (kernels/implicit.py).",
    )
    substeps: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=1,
        description="Solver sub-steps per agent step (dimensionless); meant for solver = 'lod', whose splitting error "
        "is first order in the sub-step: the pO2 just outside a 400 µm 2-D nodule is 17.3 mmHg against 10.2 exact "
        "with 1 sub-step, 16.0 with 2, 14.6 with 4 (docs/MODEL.md).",
    )




class VesselsConfig(Section):
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


