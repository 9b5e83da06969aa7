"""The calibration file of ``tme calibrate``: free parameters with priors, targets with their uncertainty.

A calibration file (TOML, docs/CALIBRATION.md) names a scene (the run config every model evaluation starts
from, with ``[scene_set]`` changes), the free parameters (any config key, each with a prior; ``loguniform`` and
``lognormal`` are sampled on the log10 scale), the targets (a readout of the run at a time, with an observed
value and its standard deviation) and the settings of the ABC-SMC engine (pyABC).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from abm.cohort.sweep import ExecutorSection, read_toml
from abm.cohort.trial_spec import flatten, set_path
from abm.config import Config, ConfigError, _format_errors, apply_overrides, parse_config
from abm.schema import Section, directory_name

__all__ = ["Calibration", "CalibrationSpec", "PriorSpec", "TargetSpec", "load_calibration"]


class PriorSpec(Section):
    """The prior of one free parameter, in the unit of the config key it sets.

    - ``uniform``: ``low``, ``high``;
    - ``loguniform``: ``low``, ``high`` (> 0), uniform in log10 of the value;
    - ``normal``: ``mean``, ``sd``;
    - ``lognormal``: ``median``, ``sigma`` (standard deviation of the natural log), normal in log10 of the value.
    """

    key: str = Field(min_length=1, description="Dotted config key the parameter sets, e.g. immune.priming_initial.")
    prior: Literal["uniform", "loguniform", "normal", "lognormal"] = Field(description="The law.")
    low: float | None = Field(default=None, description="uniform / loguniform: lower end.")
    high: float | None = Field(default=None, description="uniform / loguniform: upper end.")
    mean: float | None = Field(default=None, description="normal: the mean.")
    sd: Annotated[float, Field(gt=0)] | None = Field(default=None, description="normal: the standard deviation.")
    median: Annotated[float, Field(gt=0)] | None = Field(default=None, description="lognormal: the median.")
    sigma: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="lognormal: the standard deviation of the natural log.")
    truth: float | None = Field(
        default=None, description="Synthetic calibrations only: the value the target was made with, shown beside "
        "the posterior in the report.")

    @model_validator(mode="after")
    def _keys_of_the_law(self) -> PriorSpec:
        needs = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "normal": ("mean", "sd"),
                 "lognormal": ("median", "sigma")}[self.prior]
        missing = [k for k in needs if getattr(self, k) is None]
        if missing:
            raise ValueError(f"prior = '{self.prior}' needs {', '.join(missing)}")
        extra = [k for k in ("low", "high", "mean", "sd", "median", "sigma")
                 if getattr(self, k) is not None and k not in needs]
        if extra:
            raise ValueError(f"prior = '{self.prior}' takes {', '.join(needs)}, not {', '.join(extra)}")
        if self.prior in ("uniform", "loguniform") and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.prior == "loguniform" and self.low <= 0:
            raise ValueError(f"low ({self.low}) of a loguniform prior must be above 0")
        return self

    @property
    def log_scale(self) -> bool:
        """Whether the sampler works on log10 of the value."""
        return self.prior in ("loguniform", "lognormal")

    def scipy_rv(self) -> tuple[str, float, float]:
        """The prior on the sampler's scale as ``(scipy.stats name, loc, scale)``."""
        if self.prior == "uniform":
            return "uniform", self.low, self.high - self.low
        if self.prior == "loguniform":
            return "uniform", math.log10(self.low), math.log10(self.high) - math.log10(self.low)
        if self.prior == "normal":
            return "norm", self.mean, self.sd
        return "norm", math.log10(self.median), self.sigma / math.log(10.0)

    def to_value(self, x: float) -> float:
        """The config value of a sampler-scale value ``x``."""
        return float(10.0 ** x) if self.log_scale else float(x)


class TargetSpec(Section):
    """One observed quantity the model must reproduce."""

    readout: str = Field(min_length=1, description="Readout of the run (see `tme inspect` or docs/FORMAT.md).")
    at_day: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Time of the observation (days from the start of the run, linear interpolation "
        "of the time series); default the end of the run.")
    value: float = Field(description="The observed value, in the readout's unit.")
    sd: Annotated[float, Field(gt=0)] = Field(
        description="Its uncertainty (standard deviation, readout unit): the distance weighs each target by 1/sd.")
    source: str = Field(default="", description="Where the value comes from (a paper, a trial, 'synthetic').")


class ABCSection(Section):
    """The ABC-SMC engine (pyABC, Schaelte 2022 Bioinformatics 38:3384)."""

    population: Annotated[int, Field(ge=4, le=1_000_000)] = Field(
        default=100, description="Accepted particles per generation.")
    generations: Annotated[int, Field(ge=1, le=1000)] = Field(default=5, description="SMC generations to run.")
    min_epsilon: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="Stop earlier once the acceptance threshold (weighted distance, in target sds) "
        "falls to this.")
    min_acceptance_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0, description="Stop earlier once a generation accepts fewer than this share of its members.")
    max_members: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Stop after this many model evaluations in all (default: no limit).")


class CalibrationSpec(Section):
    """A calibration (docs/CALIBRATION.md)."""

    name: str = Field(min_length=1, description="Names the output directory runs/<name>.")
    description: str = Field(default="", description="Free text shown in the report.")
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(
        description="Root seed of the sampler and of every member's simulation seed.")
    scene: str = Field(description="Run config every member starts from, relative to the calibration file.")
    scene_set: dict[str, Any] = Field(default_factory=dict, description="Dotted key -> value for every member.")
    parameters: dict[str, PriorSpec] = Field(min_length=1, description="Free parameters, by name.")
    targets: dict[str, TargetSpec] = Field(min_length=1, description="Observed quantities, by name.")
    abc: ABCSection = Field(default_factory=ABCSection)
    executor: ExecutorSection = Field(default_factory=lambda: ExecutorSection(kind="serial"))

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return directory_name(v)

    @field_validator("parameters", "targets")
    @classmethod
    def _identifiers(cls, v: dict) -> dict:
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"'{name}' is not a usable name: letters, digits and _ only, not starting with a "
                                 "digit")
        return v

    @model_validator(mode="after")
    def _one_key_once(self) -> CalibrationSpec:
        keys = [p.key for p in self.parameters.values()]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"config key {twice[0]} is set by two parameters")
        clash = sorted(set(keys) & set(flatten(self.scene_set)))
        if clash:
            raise ValueError(f"config key {clash[0]} is both a free parameter and fixed in [scene_set]")
        return self


@dataclass(frozen=True)
class Calibration:
    """A validated calibration: its spec, where it was read from, and the base config of every member."""

    spec: CalibrationSpec
    path: Path
    base: Config

    @property
    def digest(self) -> str:
        """A fingerprint of everything that decides the result (a resumed study must have the same)."""
        # Where members run and when to stop do not change what the history means: a study may be resumed with
        # more generations or another executor.
        stop = {"generations", "min_epsilon", "min_acceptance_rate", "max_members"}
        text = json.dumps({"spec": self.spec.model_dump(mode="json", exclude={"executor": True, "description": True,
                                                                              "abc": stop}),
                           "base": self.base.model_dump(mode="json")}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_calibration(path, overrides: list[str] | None = None) -> Calibration:
    """Read, override and validate a calibration file, its scene and one member at each prior's centre.

    Raises
    ------
    ConfigError
        If the file or its scene is missing or invalid, a parameter key is not a config key or its prior gives
        values the key refuses, or a target names a readout the model does not declare.
    """
    path = Path(path)
    raw = read_toml(path, "calibration file")
    apply_overrides(raw, list(overrides or []))
    try:
        spec = CalibrationSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, CalibrationSpec), str(path)) from None
    scene_path = Path(spec.scene) if Path(spec.scene).is_absolute() else path.resolve().parent / spec.scene
    scene = read_toml(scene_path, "scene")
    scene.setdefault("output", {})["summary_plot"] = False
    scene.get("output", {}).pop("dir", None)
    for key, value in flatten(spec.scene_set).items():
        set_path(scene, key, value, f"{path} [scene_set]")
    scene["seed"] = spec.seed
    base = parse_config(scene, f"{path} (scene and scene_set)")
    _check_member(spec, scene, path, base)
    return Calibration(spec=spec, path=path, base=base)


def _prior_points(prior: PriorSpec) -> list[float]:
    """Values of the prior's support that every member may take: its ends (or central 99.8 %) and centre."""
    from scipy import stats

    name, loc, scale = prior.scipy_rv()
    rv = getattr(stats, name)(loc=loc, scale=scale)
    return [prior.to_value(x) for x in (rv.ppf(0.001), rv.median(), rv.ppf(0.999))]


def _check_member(spec: CalibrationSpec, scene: dict, path: Path, base: Config) -> None:
    """Refuse a parameter the config does not accept over its prior, and a target the model does not declare."""
    import copy
    import difflib

    from abm.model import Simulation

    problems = []
    for name, prior in spec.parameters.items():
        for value in _prior_points(prior):
            data = copy.deepcopy(scene)
            try:
                set_path(data, prior.key, value, f"parameters.{name}.key")
                parse_config(data, "member")
            except ConfigError as exc:
                problems += [f"parameters.{name} (key {prior.key}, value {value:.6g} from its prior): {p}"
                             for p in exc.problems[:2]]
                break
    declared = Simulation(base).readout_declarations()
    for name, target in spec.targets.items():
        if target.readout not in declared:
            near = difflib.get_close_matches(target.readout, declared, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            problems.append(f"targets.{name}.readout: unknown readout '{target.readout}'{hint}")
        if target.at_day is not None and target.at_day * 1440.0 > base.time.duration_min + 1e-9:
            problems.append(f"targets.{name}.at_day = {target.at_day:g} is after the end of the run "
                            f"({base.time.duration_min / 1440.0:g} days)")
    if problems:
        raise ConfigError(problems, str(path))
