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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
        for name in v:
            if name not in FACE_NAMES:
                near = difflib.get_close_matches(name, FACE_NAMES, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise ValueError(f"unknown face '{name}', expected one of {', '.join(FACE_NAMES)}{hint}")
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


class FieldsConfig(_Section):
    """Diffusing fields."""

    oxygen: OxygenConfig = Field(default_factory=OxygenConfig)


TUMOUR_RULES = ("oxygen_uptake", "proliferation", "apoptosis", "necrosis", "necrotic_clearance")


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

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in TUMOUR_RULES:
                near = difflib.get_close_matches(name, TUMOUR_RULES, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise ValueError(f"unknown tumour rule '{name}', expected any of {', '.join(TUMOUR_RULES)}{hint}")
        return v

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
        for face in self.fields.oxygen.boundary.faces:
            if face.startswith("z") and ndim == 2:
                raise ValueError(f"fields.oxygen.boundary.faces names '{face}' but the grid is 2-D")
        for i, pos in enumerate(self.vessels.positions):
            if len(pos) != ndim or any(not 0 <= p < n for p, n in zip(pos, self.grid.shape)):
                raise ValueError(
                    f"vessels.positions[{i}] = {pos} is not a voxel of the {ndim}-D grid of shape {self.grid.shape}"
                )
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
