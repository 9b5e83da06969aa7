"""The trial file of ``tme trial``: virtual patients drawn from parameter distributions, and the arms they get.

A trial file (TOML, docs/TRIALS.md) names a scene (a run config every patient starts from), the distributions
of the patient parameters (any config key: antigenicity, PD-L1, CAF and ECM density, vessel density, priming,
body weight...), the length of the untreated phase before treatment and of the follow-up, and the arms: each a
regimen of ``[therapy.<name>]`` tables in the shape of ``configs/therapies/*.toml``, or none (the untreated
control).

Sampling is reproducible from the trial's root seed: patient ``i`` gets the ``i``-th child of
``numpy.random.SeedSequence(seed).spawn(...)``, and from that child one stream per parameter (keyed by the
parameter's name) and the seed of its simulation. So a patient's values do not depend on how many patients the
trial has, nor on the other parameters listed: adding patients or a parameter leaves every other value as it was.
"""

from __future__ import annotations

import copy
import math
import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from abm.analysis import RECIST_SD_MIN_DAYS
from abm.cohort.sweep import ExecutorSection, read_toml
from abm.config import Config, ConfigError, _format_errors, apply_overrides, parse_config
from abm.schema import NonNegative, Positive, Section, directory_name

__all__ = ["ArmPlan", "Distribution", "Patient", "Trial", "TrialSpec", "load_trial", "patient_seed_sequence"]

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")
_RESERVED_ARMS = ("pre",)


class Distribution(Section):
    """How one patient parameter varies between patients.

    ``dist`` picks the law; each law takes its own keys:

    - ``fixed``: ``value``;
    - ``normal``: ``mean``, ``sd``, and optionally ``low`` and/or ``high`` (a truncated normal, sampled exactly);
    - ``lognormal``: ``median`` and ``sigma`` (the standard deviation of ln X), optionally ``low``/``high``
      (truncated on the log scale);
    - ``uniform``: ``low`` and ``high``.

    Values are in the unit of the config key they set.
    """

    dist: Literal["fixed", "normal", "lognormal", "uniform"] = Field(description="The law.")
    value: float | None = Field(default=None, description="fixed: the value.")
    mean: float | None = Field(default=None, description="normal: the mean.")
    sd: Annotated[float, Field(gt=0)] | None = Field(default=None, description="normal: the standard deviation.")
    median: Annotated[float, Field(gt=0)] | None = Field(default=None, description="lognormal: the median.")
    sigma: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="lognormal: the standard deviation of the natural log."
    )
    low: float | None = Field(default=None, description="uniform: lower end; normal/lognormal: truncation below.")
    high: float | None = Field(default=None, description="uniform: upper end; normal/lognormal: truncation above.")

    @model_validator(mode="after")
    def _keys_of_the_law(self) -> Distribution:
        needs = {"fixed": ("value",), "normal": ("mean", "sd"), "lognormal": ("median", "sigma"),
                 "uniform": ("low", "high")}[self.dist]
        allowed = set(needs) | ({"low", "high"} if self.dist in ("normal", "lognormal") else set())
        missing = [k for k in needs if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dist = '{self.dist}' needs {', '.join(missing)}")
        extra = [k for k in ("value", "mean", "sd", "median", "sigma", "low", "high")
                 if getattr(self, k) is not None and k not in allowed]
        if extra:
            raise ValueError(f"dist = '{self.dist}' takes {', '.join(sorted(allowed))}, not {', '.join(extra)}")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.dist == "lognormal" and self.low is not None and self.low < 0:
            raise ValueError(f"low ({self.low}) of a lognormal must be 0 or more")
        return self

    def sample(self, rng: np.random.Generator) -> float:
        """One draw from the law with ``rng``."""
        from scipy.stats import truncnorm

        if self.dist == "fixed":
            return float(self.value)
        if self.dist == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.dist == "normal":
            loc, scale, lo, hi = self.mean, self.sd, self.low, self.high
        else:
            loc, scale = math.log(self.median), self.sigma
            lo = math.log(self.low) if self.low else None
            hi = math.log(self.high) if self.high is not None else None
        a = -np.inf if lo is None else (lo - loc) / scale
        b = np.inf if hi is None else (hi - loc) / scale
        x = float(truncnorm.rvs(a, b, loc=loc, scale=scale, random_state=rng))
        return x if self.dist == "normal" else math.exp(x)


class ArmSpec(Section):
    """One arm: a regimen given from treatment start, or nothing (the untreated control)."""

    label: str | None = Field(default=None, description="Name in the report; default the arm's key.")
    file: str | None = Field(
        default=None, description="TOML file whose [therapy.<name>] and [effects] tables are the regimen (e.g. one "
        "of configs/therapies/); other tables of that file are not used. Relative to the trial file.",
    )
    therapy: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="The regimen as [arms.<arm>.therapy.<drug>] tables (docs/THERAPIES.md).",
    )
    effects: dict[str, Any] = Field(
        default_factory=dict, description="[effects] parameters of the target laws for this arm (docs/THERAPIES.md).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ArmSpec:
        if self.file is not None and self.therapy:
            raise ValueError("give the regimen either as 'file' or as [therapy.<drug>] tables, not both")
        return self


class TrialSpec(Section):
    """A virtual trial (docs/TRIALS.md)."""

    name: str = Field(min_length=1, description="Names the output directory runs/<name>.")
    description: str = Field(default="", description="Free text shown in the report.")
    seed: Annotated[int, Field(ge=0, lt=2**63)] = Field(description="Root seed of the patients' parameters and runs.")
    patients: Annotated[int, Field(ge=1, le=100000)] = Field(description="Number of virtual patients.")
    scene: str | None = Field(
        default=None, description="Run config every patient starts from (relative to the trial file); default the "
        "built-in defaults. It may not hold [therapy] tables: the phase before treatment is untreated.",
    )
    scene_set: dict[str, Any] = Field(
        default_factory=dict, description="Config values changed for every patient, by dotted key "
        "(\"grid.shape\" = [60, 60]) or as nested tables.",
    )
    treatment_start_day: Positive = Field(
        description="Length of the untreated phase (days): every arm branches from the patient's state then.",
    )
    follow_up_days: Positive = Field(description="Follow-up from treatment start (days).")
    assessment_every_days: Positive = Field(
        default=7.0, description="Days between tumour assessments from treatment start; the end of follow-up is "
        "always assessed. Model choice (clinical scans are every 6-9 weeks; a virtual lesion changes in days).",
    )
    sd_min_days: NonNegative = Field(
        default=RECIST_SD_MIN_DAYS, description="RECIST: days from baseline without progression for SD to be the "
        "best response (a patient who ends follow-up unprogressed is SD however short the follow-up).",
    )
    pd_min_increase_um: NonNegative = Field(
        default=0.0, description="RECIST's absolute rise for PD (5000 µm clinically) on the equivalent diameter, "
        "µm; 0 (the default) drops it, since a simulated lesion is well under 5 mm across.",
    )
    reference_arm: str | None = Field(default=None, description="Arm the others are compared with; default the first.")
    parameters: dict[str, Distribution] = Field(
        default_factory=dict, description="Patient parameters: dotted config key -> distribution.",
    )
    arms: dict[str, ArmSpec] = Field(description="The arms, at least one; [arms.<name>].")
    executor: ExecutorSection = Field(
        default_factory=ExecutorSection, description="Where the patients run (as in a sweep file, docs/BATCH.md); "
        "the command line's --workers, --scheduler, --dask-local and --slurm override it.",
    )

    @field_validator("parameters", mode="before")
    @classmethod
    def _dotted_keys(cls, v):
        """``[parameters.tumour.antigenicity_initial]`` is ``[parameters."tumour.antigenicity_initial"]``."""
        if not isinstance(v, dict):
            return v
        out = {}

        def walk(table: dict, prefix: str) -> None:
            for key, value in table.items():
                if isinstance(value, dict) and value and "dist" not in value:
                    walk(value, f"{prefix}{key}.")
                else:
                    out[f"{prefix}{key}"] = value

        walk(v, "")
        return out

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return directory_name(v)

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, v: dict) -> dict:
        if not v:
            raise ValueError("a trial needs at least one arm")
        for name in v:
            if not name or not name[0].isalpha() or set(name) - _NAME_CHARS or name in _RESERVED_ARMS:
                raise ValueError(f"arm name '{name}': use lowercase letters, digits and _, starting with a letter "
                                 f"(not {', '.join(_RESERVED_ARMS)})")
        return v

    @model_validator(mode="after")
    def _reference_is_an_arm(self) -> TrialSpec:
        if self.reference_arm is not None and self.reference_arm not in self.arms:
            raise ValueError(f"reference_arm = '{self.reference_arm}' is not one of the arms "
                             f"({', '.join(self.arms)})")
        return self

    @property
    def reference(self) -> str:
        """The arm the others are compared with."""
        return self.reference_arm or next(iter(self.arms))


@dataclass(frozen=True)
class Patient:
    """One virtual patient: ``pid`` (``p001``...), its index, the seed of its runs and its sampled parameters."""

    pid: str
    index: int
    seed: int
    parameters: dict


@dataclass(frozen=True)
class ArmPlan:
    """An arm as it is run: its name, label and therapy-file tables (``None``: untreated).

    ``tables`` holds ``therapy`` (and ``effects``) with the dose times moved to the run's clock: a schedule's
    ``start_day`` or ``times_day`` counts from treatment start in the trial file and from t = 0 in the run.
    """

    name: str
    label: str
    tables: dict | None

    def regimen(self) -> str:
        """The drugs of the arm, ``"no treatment"`` for the control."""
        drugs = list((self.tables or {}).get("therapy", {}))
        return " + ".join(drugs) if drugs else "no treatment"


@dataclass
class Trial:
    """A loaded, validated trial: the spec, its scene, the arms and the patients."""

    spec: TrialSpec
    path: Path
    scene: dict
    arms: dict[str, ArmPlan]
    patients: list[Patient]

    @property
    def treatment_start_min(self) -> float:
        """Treatment start (min of simulated time)."""
        return self.spec.treatment_start_day * 1440.0

    @property
    def end_min(self) -> float:
        """End of follow-up (min of simulated time)."""
        return (self.spec.treatment_start_day + self.spec.follow_up_days) * 1440.0

    def assessment_times_min(self) -> np.ndarray:
        """Baseline (treatment start), every ``assessment_every_days`` after it, and the end of follow-up (min)."""
        step = self.spec.assessment_every_days * 1440.0
        times = np.arange(self.treatment_start_min, self.end_min + 1e-6, step)
        if self.end_min - times[-1] > 1e-6:
            times = np.append(times, self.end_min)
        return times

    def pre_config(self, patient: Patient) -> Config:
        """The config of the patient's untreated phase: the scene with its parameters, seed and length."""
        return parse_config(self.pre_config_data(patient), f"{self.path} (patient {patient.pid})")

    def pre_config_data(self, patient: Patient) -> dict:
        """The raw mapping of :meth:`pre_config`."""
        data = copy.deepcopy(self.scene)
        for key, value in patient.parameters.items():
            set_path(data, key, value, f"{self.path} [parameters]")
        data["name"] = f"{self.spec.name}_{patient.pid}"
        data["seed"] = patient.seed
        data.setdefault("time", {})["duration_min"] = self.treatment_start_min
        return data


def patient_seed_sequence(seed: int, index: int, *key: int) -> np.random.SeedSequence:
    """The seed sequence of patient ``index``: ``SeedSequence(seed).spawn(n)[index]``, then spawned by ``key``.

    ``SeedSequence(seed, spawn_key=(index, ...))`` is exactly the child ``spawn`` gives, built without the others.
    """
    return np.random.SeedSequence(seed, spawn_key=(index, *key))


def _parameter_stream(seed: int, index: int, key: str) -> np.random.Generator:
    """Patient ``index``'s random stream for parameter ``key`` (child 0 of the patient, keyed by the name)."""
    return np.random.default_rng(patient_seed_sequence(seed, index, 0, zlib.crc32(key.encode("utf-8"))))


def _run_seed(seed: int, index: int) -> int:
    """Seed of patient ``index``'s simulation (child 1 of the patient), in [0, 2**63)."""
    return int(patient_seed_sequence(seed, index, 1).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_patients(spec: TrialSpec, n: int | None = None) -> list[Patient]:
    """The first ``n`` patients (default ``spec.patients``) with their seeds and parameter values."""
    n = spec.patients if n is None else n
    width = max(3, len(str(n)))
    return [Patient(pid=f"p{i + 1:0{width}d}", index=i, seed=_run_seed(spec.seed, i),
                    parameters={key: dist.sample(_parameter_stream(spec.seed, i, key))
                                for key, dist in spec.parameters.items()})
            for i in range(n)]


def set_path(data: dict, key: str, value, source: str) -> None:
    """Set dotted ``key`` in a raw config mapping; a part that holds a value is a :class:`ConfigError`."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"{key}: '{part}' is a value, not a section"], source)
        node = child
    node[parts[-1]] = value


def flatten(table: dict, prefix: str = "") -> dict:
    """``{"grid": {"shape": [60, 60]}, "time.dt_min": 10}`` as ``{"grid.shape": [...], "time.dt_min": 10}``."""
    out = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _shift_schedules(therapy: dict, days: float) -> dict:
    """Drug tables with every dose time moved ``days`` later (``start_day``, or each of ``times_day``)."""
    out = copy.deepcopy(therapy)
    for table in out.values():
        schedule = table.get("schedule") if isinstance(table, dict) else None
        if not isinstance(schedule, dict):
            continue  # the config's own validation names what is missing
        if isinstance(schedule.get("times_day"), list):
            schedule["times_day"] = [t + days if isinstance(t, int | float) else t for t in schedule["times_day"]]
        else:
            start = schedule.get("start_day", 0.0)
            schedule["start_day"] = start + days if isinstance(start, int | float) else start
    return out


def _arm_plan(name: str, arm: ArmSpec, base: Path, start_day: float) -> ArmPlan:
    if arm.file is not None:
        path = (base / arm.file) if not Path(arm.file).is_absolute() else Path(arm.file)
        data = read_toml(path, f"arms.{name}.file")
        therapy, effects = data.get("therapy", {}), {**data.get("effects", {}), **arm.effects}
        if not therapy:
            raise ConfigError([f"arms.{name}.file = '{arm.file}': {path} holds no [therapy.<name>] table; leave "
                               "'file' out for an untreated arm"], str(path))
    else:
        therapy, effects = arm.therapy, arm.effects
    tables = None
    if therapy:
        tables = {"therapy": _shift_schedules(therapy, start_day)}
        if effects:
            tables["effects"] = copy.deepcopy(effects)
    elif effects:
        raise ConfigError([f"arms.{name}.effects: an arm without therapy has no target laws to change"], "arms")
    return ArmPlan(name=name, label=arm.label or name, tables=tables)


def load_trial(path, overrides: list[str] | None = None, patients: int | None = None) -> Trial:
    """Read, override and validate a trial file; sample its patients and check every patient's config.

    Parameters
    ----------
    path : path-like
        The trial file (TOML).
    overrides : list of str, optional
        ``KEY=VALUE`` changes of the trial file (TOML values), e.g. ``["follow_up_days=7"]``.
    patients : int, optional
        Number of patients, replacing the file's ``patients``.

    Raises
    ------
    ConfigError
        If the file, its scene or an arm's file is missing or invalid, a patient's sampled config is invalid (the
        message names the patient, the key and the value), or the treatment start is not a whole number of steps.
    """
    path = Path(path)
    raw = read_toml(path, "trial file")
    apply_overrides(raw, list(overrides or []))
    if patients is not None:
        raw["patients"] = patients
    try:
        spec = TrialSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, TrialSpec), str(path)) from None
    base = path.resolve().parent
    scene: dict = {}
    if spec.scene is not None:
        scene_path = base / spec.scene if not Path(spec.scene).is_absolute() else Path(spec.scene)
        scene = read_toml(scene_path, "scene")
        if scene.get("therapy"):
            raise ConfigError([f"scene = '{spec.scene}' holds [therapy] tables ({', '.join(scene['therapy'])}); the "
                               "phase before treatment is untreated: give regimens as [arms.<name>]"], str(path))
    scene.setdefault("output", {})["summary_plot"] = False  # hundreds of runs: no per-run figure unless asked
    scene.get("output", {}).pop("dir", None)
    for key, value in flatten(spec.scene_set).items():
        set_path(scene, key, value, f"{path} [scene_set]")
    arms = {name: _arm_plan(name, arm, base, spec.treatment_start_day) for name, arm in spec.arms.items()}
    trial = Trial(spec=spec, path=path, scene=scene, arms=arms, patients=sample_patients(spec))
    _check_configs(trial)
    return trial


def _check_configs(trial: Trial) -> None:
    """Validate every patient's config and every arm's branch before anything runs; report all problems."""
    from abm.replay import branch_config

    by_problem: dict[str, list[str]] = {}
    first = None
    for patient in trial.patients:
        try:
            config = trial.pre_config(patient)
        except ConfigError as exc:
            for problem in exc.problems:
                by_problem.setdefault(problem, []).append(patient.pid)
            continue
        first = first or config
    if by_problem:
        problems = [f"{problem} (patient{'s' if len(pids) > 1 else ''} {', '.join(pids[:5])}"
                    f"{f' and {len(pids) - 5} more' if len(pids) > 5 else ''})"
                    for problem, pids in list(by_problem.items())[:20]]
        if trial.spec.parameters:
            problems.append("a sampled value must lie in its key's range: bound its distribution with low/high")
        raise ConfigError(problems, f"{trial.path} (scene, scene_set and parameters)")
    problems = []
    steps = trial.treatment_start_min / first.time.dt_min
    if abs(steps - round(steps)) > 1e-9:
        raise ConfigError([f"treatment_start_day = {trial.spec.treatment_start_day:g} is not a whole number of "
                           f"steps of time.dt_min = {first.time.dt_min:g} min"], str(trial.path))
    snapshots = first.output.snapshots
    if snapshots != "interval":
        raise ConfigError([f"output.snapshots = {snapshots!r}: a trial needs 'interval' (the default), so that the "
                           "untreated phase ends with the snapshot its arms branch from and each arm's file starts "
                           "with it; thin the files with output.snapshot_interval_min instead"], str(trial.path))
    from abm.config import config_to_toml

    parent = tomllib.loads(config_to_toml(first))
    for arm in trial.arms.values():
        try:
            branch_config(copy.deepcopy(parent), None, [f"time.duration_min={trial.end_min!r}"], arm.tables,
                          f"{trial.path} [arms.{arm.name}]")
        except ConfigError as exc:
            problems += [f"arms.{arm.name}: {problem}" for problem in exc.problems]
    if problems:
        raise ConfigError(problems, str(trial.path))
