"""The run configuration: one static pydantic schema, loaded from TOML, with every parameter's unit and source.

The root sections (grid, time, fields, resistance, output) live here; each module's section lives in
``abm/modules/<module>/config.py`` and is assembled into :class:`Config`. Every field's ``description`` states its
unit and where its default comes from (``REFERENCES`` means the project's parameter table, reproduced in
``docs/MODEL.md``). Unknown keys are rejected with the nearest valid name suggested; every problem in a file is
reported at once, each with its dotted key path and bad value.
"""

from __future__ import annotations

import difflib
import sys
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, Tag, ValidationError, field_validator, model_validator

from abm.modules.immune.config import Ccl2FieldConfig, ChemokineFieldConfig, IfngFieldConfig, ImmuneConfig
from abm.modules.stroma.config import Cxcl12FieldConfig, TgfbFieldConfig, VegfFieldConfig
from abm.modules.therapy.carrier_config import TherapyConfig, check_carrier_names
from abm.modules.therapy.cellular_config import CellTherapyConfig, VaccineConfig
from abm.modules.therapy.config import EffectsConfig, PatientConfig, check_therapy_names
from abm.modules.therapy.cytotoxic_config import RadiotherapyConfig
from abm.modules.therapy.virus_config import VirusConfig
from abm.modules.tumour.config import InitialTumourConfig, TumourConfig
from abm.modules.vasculature.config import OxygenConfig, VesselsConfig
from abm.schema import NonNegative, Positive, Section, directory_name

__all__ = [
    "Config",
    "ConfigError",
    "apply_overrides",
    "config_to_toml",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """A configuration problem a user must fix; the message lists every problem found."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{lines}")


class GridConfig(Section):
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


class TimeConfig(Section):
    """Time stepping."""

    dt_min: Positive = Field(
        default=6.0,
        le=60.0,
        description="Agent and field time step in minutes (PhysiCell's phenotype step is 6 min).",
    )
    duration_min: Positive = Field(default=14400.0, description="Simulated time in minutes (14400 min = 10 days).")


class FieldsConfig(Section):
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
    ccl2: Ccl2FieldConfig = Field(  # type: ignore[valid-type]
        default_factory=Ccl2FieldConfig, description="CCL2-like MDSC attractant (a.u.); only with immune.mdsc.enabled."
    )


class ResistanceConfig(Section):
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
        default=True, description="4. M2 macrophages (also through their PD-L1), Tregs and MDSCs (when "
        "immune.mdsc.enabled) suppress effector killing nearby."
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


class InitialConfig(Section):
    """Initial condition."""

    tumour: InitialTumourConfig = Field(default_factory=InitialTumourConfig)


class OutputConfig(Section):
    """What the run writes and how often."""

    dir: str | None = Field(
        default=None, description="Output directory; default runs/<name>. The CLI's --out overrides it."
    )
    snapshot_interval_min: Positive = Field(
        default=1440.0, description="Simulated minutes between snapshots (rounded to whole steps); 1440 = daily."
    )
    snapshots: Literal["interval", "final", "none"] | list[NonNegative] = Field(
        default="interval",
        description="Which snapshots to write: 'interval' (step 0, every snapshot_interval_min and the end), "
        "'final' (the end only), 'none' (time series only; such a run cannot be replayed) or a list of times in "
        "minutes (each rounded to a whole step; times the run does not reach are not written). Parameter sweeps "
        "cut their disk use with 'final' or 'none'. Model choice.",
    )
    timeseries_every_steps: Annotated[int, Field(ge=1)] = Field(
        default=1, description="Record the time series every k steps (steps)."
    )
    compression: Annotated[int, Field(ge=0, le=9)] = Field(
        default=4, description="gzip level for snapshot fields (0 = none)."
    )
    summary_plot: bool = Field(default=True, description="Write summary.png at the end of the run.")


class Config(Section):
    """A complete run configuration."""

    name: str = Field(default="run", min_length=1, description="Run name; names the output directory.")
    seed: Annotated[int, Field(ge=0, lt=2**63)] = Field(default=0, description="Root seed of the run's random stream.")
    backend: Literal["numpy", "cupy", "auto"] = Field(
        default="auto", description="Array backend: numpy (CPU), cupy (NVIDIA GPU) or auto (cupy if a GPU is found)."
    )
    random: Literal["auto", "pcg64", "philox"] = Field(
        default="auto",
        description="Generator of the random streams: pcg64 (NumPy's PCG64, drawn on the host; on cupy copied to "
        "the device), philox (counter-based Philox4x64-10, drawn where the backend runs, the same uniforms on "
        "numpy and cupy) or auto (pcg64 on numpy, philox on cupy). Model choice.",
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
    patient: PatientConfig = Field(default_factory=PatientConfig)
    therapy: dict[str, TherapyConfig] = Field(
        default_factory=dict,
        description="Therapies as named tables [therapy.<name>] (docs/THERAPIES.md); the name labels the drug's "
        "field, readouts and state.",
    )
    radiotherapy: dict[str, RadiotherapyConfig] = Field(
        default_factory=dict,
        description="Radiotherapy courses as named tables [radiotherapy.<name>] (docs/THERAPIES.md); the name labels "
        "the course's readouts and state.",
    )
    cell_therapy: dict[str, CellTherapyConfig] = Field(
        default_factory=dict,
        description="Adoptive T-cell transfers (CAR-T, TIL) as named tables [cell_therapy.<name>] "
        "(docs/THERAPIES.md); the name labels the product's readouts and state. Needs immune.enabled.",
    )
    vaccine: dict[str, VaccineConfig] = Field(
        default_factory=dict,
        description="Cancer vaccines as named tables [vaccine.<name>] (docs/THERAPIES.md): antigen doses toward "
        "priming. Needs immune.enabled.",
    )
    virus: dict[str, VirusConfig] = Field(
        default_factory=dict,
        description="An oncolytic virus as a named table [virus.<name>] (docs/THERAPIES.md); the name labels its "
        "field, readouts and state. At most one per run.",
    )
    effects: EffectsConfig = Field(default_factory=EffectsConfig)

    @field_validator("therapy", "radiotherapy", "cell_therapy", "vaccine", "virus")
    @classmethod
    def _therapy_names(cls, v: dict) -> dict:
        check_therapy_names(v)
        check_carrier_names(v)
        return v

    @field_validator("virus")
    @classmethod
    def _one_virus(cls, v: dict) -> dict:
        if len(v) > 1:
            raise ValueError(f"{len(v)} viruses ({', '.join(v)}): a run takes at most one [virus.<name>] (the tumour "
                             "table has one infection clock)")
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return directory_name(v)

    @model_validator(mode="after")
    def _geometry_consistent(self) -> Config:
        ndim = len(self.grid.shape)
        for fname in ("oxygen", "chemokine", "ifng", "tgfb", "vegf", "cxcl12", "ccl2"):
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
        sections = ("therapy", "radiotherapy", "cell_therapy", "vaccine", "virus")
        for i, a in enumerate(sections):
            for b in sections[i + 1:]:
                clash = sorted(set(getattr(self, a)) & set(getattr(self, b)))
                if clash:
                    raise ValueError(f"'{clash[0]}' names both a {a} and a {b} table; names must be unique")
        for section in ("radiotherapy", "cell_therapy", "virus"):
            for name, course in getattr(self, section).items():
                for key, coords in course.region.coordinates():
                    if len(coords) != ndim:
                        raise ValueError(f"{section}.{name}.region.{key} has {len(coords)} coordinates, the grid "
                                         f"is {ndim}-D")
        for name, drug in self.therapy.items():
            if getattr(drug, "route", None) != "intratumoral":
                continue
            for key, coords in drug.injection_site.region.coordinates():
                if len(coords) != ndim:
                    raise ValueError(f"therapy.{name}.injection.region.{key} has {len(coords)} coordinates, the "
                                     f"grid is {ndim}-D")
        for section in ("cell_therapy", "vaccine"):
            if getattr(self, section) and not self.immune.enabled:
                raise ValueError(f"[{section}.<name>] needs the immune layer: set immune.enabled = true")
        for name in self.cell_therapy:
            if name in ("tcell", "macrophage", "radiation", "chemo", "transferred"):
                raise ValueError(f"cell_therapy.{name}: '{name}' is reserved (readout tumour_killed_by_{name}); "
                                 "rename it")
        for name, drug in self.therapy.items():
            if drug.kind in ("chemotherapy", "antibody_drug_conjugate") and name in ("tcell", "macrophage", "radiation",
                                                                                 "chemo", "transferred"):
                raise ValueError(f"therapy.{name}: '{name}' is reserved (readout tumour_killed_by_{name}); rename it")
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


def _section_class(annotation) -> Any:
    """The config-section class an annotation holds, looking through ``X | None`` and unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_class(arg)
        if found is not None:
            return found
    return None


def _union_tags(annotation) -> dict[str, Any]:
    """``{tag: member}`` of a tagged (discriminated) union annotation, else empty."""
    out = {}
    for arg in typing.get_args(typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated
                                else annotation):
        for meta in getattr(arg, "__metadata__", ()):
            if isinstance(meta, Tag):
                out[meta.tag] = typing.get_args(arg)[0]
    return out


def _display_loc(loc: tuple) -> tuple:
    """``loc`` without the union tag pydantic puts after a therapy's name (``therapy.x.targets``, not ``.drug.``)."""
    entry = typing.get_args(Config.model_fields["therapy"].annotation)[1]
    if len(loc) > 2 and loc[0] == "therapy" and loc[2] in _union_tags(entry):
        return loc[:2] + loc[3:]
    return loc


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid key names of the section at ``loc`` (used to suggest the nearest name for an unknown key).

    Walks nested sections, named tables (``dict[str, Section]``: the name is skipped) and unions.
    """
    cls: Any = model
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if cls is None or part not in cls.model_fields:
            return []
        annotation = cls.model_fields[part].annotation
        if typing.get_origin(annotation) is dict and parts:
            parts.pop(0)  # the table's name
            annotation = typing.get_args(annotation)[1]
            tagged = _union_tags(annotation)
            if tagged and parts and parts[0] in tagged:
                annotation = tagged[parts.pop(0)]  # the union member pydantic chose
        elif typing.get_origin(annotation) is list and parts and isinstance(parts[0], int):
            parts.pop(0)  # the list index
            annotation = typing.get_args(annotation)[0]
        cls = _section_class(annotation)
    return list(cls.model_fields) if cls is not None else []


def _format_errors(exc: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """One line per problem of ``exc``: the dotted key, the bad value and what was expected.

    ``model`` is the schema that was validated (default :class:`Config`); an unknown key is answered with the
    nearest valid name in it.
    """
    problems = []
    for err in exc.errors():
        raw = tuple(err["loc"])
        loc = _display_loc(raw)
        path = ".".join(str(p) for p in loc) or "(top level)"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            names = _fields_at(model or Config, loc)
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
    except RecursionError:
        raise _nested_too_deeply(str(path), "the file is") from None
    # Reading, overriding and validating all walk the data recursively; a value nested thousands deep
    # exhausts Python's stack in any of them, so each step turns that into a ConfigError naming its source.
    if overrides:
        try:
            apply_overrides(data, overrides)
        except RecursionError:
            raise _nested_too_deeply("command line", "a --set value is") from None
    try:
        return parse_config(data, str(path))
    except RecursionError:
        what = "the file or a --set value is" if overrides else "the file is"
        raise _nested_too_deeply(str(path), what) from None


def _nested_too_deeply(source: str, what: str) -> ConfigError:
    """The error for data nested deeper than Python's recursion limit lets it be read."""
    return ConfigError([f"{what} nested too deeply to read: arrays or tables inside each other beyond Python's "
                        f"recursion limit ({sys.getrecursionlimit()}); a config needs only a few levels"], source)


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
