"""Building blocks of the config schema shared by the engine's root schema and every module's section.

Each module keeps its config section in ``abm/modules/<module>/config.py``; ``abm.config`` assembles them into one
static root schema, so ``tme config schema`` stays complete. Every field's description states its unit and source.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

__all__ = [
    "FACE_NAMES",
    "BoundaryConfig",
    "Fraction",
    "NonNegative",
    "Positive",
    "Section",
    "SoluteConfig",
    "check_names",
    "solute",
    "directory_name",
]

FaceBoundary = Literal["dirichlet", "noflux"]
FACE_NAMES = ("x_low", "x_high", "y_low", "y_high", "z_low", "z_high")


def check_names(names, known: tuple, what: str):
    """Raise a ValueError naming the first of ``names`` not in ``known``, the valid names and the nearest one."""
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"unknown {what} '{name}', expected any of {', '.join(known)}{hint}")
    return names


class Section(BaseModel):
    """A config section: unknown keys are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class BoundaryConfig(Section):
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
        check_names(v, FACE_NAMES, "face")
        return v



class SoluteConfig(Section):
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
    solver: Literal["lod", "exact"] = Field(
        default="lod",
        description="'lod' (operator split; accurate without strong per-voxel sinks) or 'exact' (the unsplit implicit "
        "step, for fields with strong per-voxel sinks).",
    )
    tolerance: Annotated[float, Field(gt=0, le=0.1)] = Field(
        default=1e-3, description="Stopping tolerance of the exact solve (relative max error, dimensionless)."
    )


def solute(name, unit, d, decay, d_src, decay_src):
    """A :class:`SoluteConfig` subclass whose defaults are this field's sourced values."""
    return create_model(
        f"{name.capitalize()}FieldConfig",
        __base__=SoluteConfig,
        __doc__=f"The {name} field (unit {unit}); simulated when immune.enabled is true.",
        unit=(str, Field(default=unit, description=f"Concentration unit (label only); {unit}.")),
        diffusivity_um2_per_min=(Positive, Field(default=d, description=f"Diffusion coefficient, µm²/min ({d_src}).")),
        decay_per_min=(NonNegative, Field(default=decay, description=f"First-order decay, 1/min ({decay_src}).")),
    )


def directory_name(v: str) -> str:
    """``v`` if it can name a run directory (no path separators or characters Windows refuses), else ValueError."""
    bad = set(v) & set('/\\:*?"<>|')
    if bad or v in (".", ".."):
        raise ValueError(f"'{v}' cannot name a directory (avoid {''.join(sorted(bad)) or v})")
    return v
