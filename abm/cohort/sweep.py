"""Sweep files: a base config and the ways to vary it, expanded into batch members (docs/BATCH.md).

A sweep names a base config (a path relative to the sweep file) and any of four blocks, all keyed by the dotted
config keys of ``tme run --set``:

``[set]``
    Values every member gets (e.g. a shorter duration, ``output.snapshots = "final"``).
``[grid]``
    Lists of values; the members cover their cartesian product (the last key varies fastest).
``[zip]``
    Lists of equal length, varied together: row i takes the i-th value of each.
``[sample]``
    ``n`` points of a Latin hypercube (``method = "lhs"``) or a scrambled Sobol sequence (``"sobol"``, n a power
    of two) over ``[sample.ranges]``: ``low``, ``high``, optional ``log = true`` (uniform in log10) and
    ``integer = true`` (rounded), drawn with :mod:`scipy.stats.qmc`.

Design points are the product of the blocks present (grid x zip rows x sample points), and every point runs
``replicates`` times. Seeds come from one root seed (``seed``, default the base config's): with
``root = numpy.random.SeedSequence(seed)`` and ``sampling, replicate = root.spawn(2)``, the sample is drawn with
``numpy.random.default_rng(sampling)``, and replicate r of *every* design point runs with the seed
``replicate.spawn(replicates)[r].generate_state(1, numpy.uint64)[0] >> 1`` (63 bits, the range of ``seed``).
Replicate r thus shares its random stream across design points (common random numbers), so differences
between points are not masked by seed-to-seed noise; replicates differ from each other.

Members are numbered ``m0000, m0001, ...`` point by point, replicates innermost.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from abm.cohort.executors import EXECUTOR_KINDS, ExecutorSpec, SlurmSpec
from abm.config import ConfigError, _format_errors, apply_overrides, parse_config
from abm.schema import Section

__all__ = [
    "Design",
    "ExecutorSection",
    "Member",
    "RangeSpec",
    "SampleSpec",
    "SweepConfig",
    "format_value",
    "load_sweep",
]

SAMPLE_METHODS = ("lhs", "sobol")


class RangeSpec(Section):
    """The range one sampled parameter is drawn from."""

    low: float = Field(description="Lower bound, in the parameter's unit.")
    high: float = Field(description="Upper bound, in the parameter's unit (greater than low).")
    log: bool = Field(default=False, description="Uniform in log10 between low and high (both > 0).")
    integer: bool = Field(default=False, description="Round each drawn value to the nearest integer.")

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if not self.high > self.low:
            raise ValueError(f"high ({self.high:g}) must be greater than low ({self.low:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0, got low = {self.low:g}")
        return self


class SampleSpec(Section):
    """A space-filling sample over parameter ranges."""

    method: Literal["lhs", "sobol"] = Field(description="'lhs' (Latin hypercube) or 'sobol' (scrambled Sobol).")
    n: Annotated[int, Field(ge=1, le=1_000_000)] = Field(description="Number of points (Sobol: a power of two).")
    ranges: dict[str, RangeSpec] = Field(min_length=1, description="Dotted config key -> range.")

    @model_validator(mode="after")
    def _power_of_two(self) -> SampleSpec:
        if self.method == "sobol" and self.n & (self.n - 1):
            below = 1 << (self.n.bit_length() - 1)
            raise ValueError(f"a Sobol sample needs n a power of two to stay balanced, got {self.n}; "
                             f"use {below} or {below * 2}")
        return self


class SlurmSection(Section):
    """SLURM jobs for Dask workers (``dask_jobqueue.SLURMCluster``); see docs/CLUSTER.md."""

    account: str | None = Field(default=None, description="#SBATCH --account.")
    partition: str | None = Field(default=None, description="#SBATCH --partition.")
    gpus_per_job: Annotated[int, Field(ge=0, le=64)] = Field(
        default=0, description="GPUs per job (--gres=gpu:N); one worker per GPU, each bound to its GPU.")
    walltime: str = Field(default="01:00:00", pattern=r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$",
                          description="Job time limit, [D-]HH:MM:SS.")
    cores: Annotated[int, Field(ge=1)] = Field(default=1, description="CPU cores per job.")
    memory: str = Field(default="4GB", description="Memory per job, e.g. '16GB'.")
    jobs: Annotated[int, Field(ge=1)] = Field(default=1, description="Jobs kept running.")
    processes: Annotated[int, Field(ge=1)] = Field(default=1, description="Worker processes per CPU job.")
    python: str | None = Field(default=None, description="Python on the compute nodes; default this one.")
    job_extra: list[str] = Field(default_factory=list, description="Extra #SBATCH directives.")
    prologue: list[str] = Field(default_factory=list, description="Shell lines run before each worker starts.")
    log_directory: str | None = Field(default=None, description="Directory for the jobs' stdout/stderr.")


class ExecutorSection(Section):
    """Where the members run; the command line's --workers, --scheduler, --dask-local and --slurm override it."""

    kind: Literal["serial", "local", "dask", "slurm"] = Field(default="local", description=", ".join(EXECUTOR_KINDS))
    workers: Annotated[int, Field(ge=1)] = Field(default=1, description="Local process-pool size.")
    scheduler: str | None = Field(default=None, description="Dask scheduler address, e.g. tcp://host:8786.")
    dask_local: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Workers of a LocalCluster.")
    slurm: SlurmSection | None = Field(default=None, description="SLURM job template (kind = 'slurm').")

    def spec(self) -> ExecutorSpec:
        """The executor this section describes."""
        slurm = None
        if self.slurm is not None:
            data = self.slurm.model_dump()
            data["job_extra"], data["prologue"] = tuple(data["job_extra"]), tuple(data["prologue"])
            slurm = SlurmSpec(**data)
        return ExecutorSpec(kind=self.kind, workers=self.workers, scheduler=self.scheduler,
                            dask_local=self.dask_local, slurm=slurm)


class SweepConfig(Section):
    """A sweep file."""

    base: str = Field(description="Base config, a path relative to the sweep file.")
    name: str | None = Field(default=None, min_length=1,
                             description="Batch name; output in runs/<name>. Default: the sweep file's stem.")
    out: str | None = Field(default=None, description="Output directory; default runs/<name>.")
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = Field(
        default=None, description="Root seed of the sample and the replicate seeds; default the base config's.")
    replicates: Annotated[int, Field(ge=1, le=100_000)] = Field(default=1, description="Runs per design point.")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted key -> value for every member.")
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="Dotted key -> values; the cartesian product is run.")
    zip: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="Dotted key -> values, all lists of one length, varied together.")
    sample: SampleSpec | None = Field(default=None, description="Latin-hypercube or Sobol sample over ranges.")
    executor: ExecutorSection = Field(default_factory=ExecutorSection)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (set(v) & set('/\\:*?"<>|') or v in (".", "..")):
            raise ValueError(f"'{v}' cannot name a directory")
        return v

    @field_validator("zip")
    @classmethod
    def _equal_lengths(cls, v: dict[str, list]) -> dict[str, list]:
        lengths = {k: len(vals) for k, vals in v.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{k} ({n})" for k, n in lengths.items())
            raise ValueError(f"zipped lists must have one length, got {listed}")
        return v

    @model_validator(mode="after")
    def _keys_once(self) -> SweepConfig:
        seen: dict[str, str] = {}
        blocks = {"set": self.set, "grid": self.grid, "zip": self.zip,
                  "sample.ranges": self.sample.ranges if self.sample else {}}
        for block, keys in blocks.items():
            for key in keys:
                if not key or any(not part for part in key.split(".")):
                    raise ValueError(f"{block}: '{key}' is not a dotted config key such as grid.shape")
                if key == "seed" and block != "set":
                    raise ValueError(f"{block}: 'seed' cannot be varied; use replicates (seeds spawned from the "
                                     "root seed)")
                if key in seen:
                    raise ValueError(f"'{key}' is set in both [{seen[key]}] and [{block}]")
                seen[key] = block
        return self

    def varied_keys(self) -> list[str]:
        """The dotted keys that differ between design points, in file order."""
        return [*self.grid, *self.zip, *(self.sample.ranges if self.sample else {})]


def format_value(value: Any) -> str:
    """``value`` in the TOML syntax of ``--set`` (a float keeps every digit)."""
    import tomli_w

    return tomli_w.dumps({"v": _plain(value)}).strip()[len("v = "):].replace("\n", " ")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class Member:
    """One run of a batch: design point ``point``, replicate ``replicate``."""

    id: str
    index: int
    point: int
    replicate: int
    params: dict[str, Any]
    seed: int

    def overrides(self, fixed: dict[str, Any]) -> list[str]:
        """``--set`` items of this member: the fixed values, its parameters, then its seed."""
        items = {**fixed, **self.params}
        return [f"{key}={format_value(value)}" for key, value in items.items()] + [f"seed={self.seed}"]


class Design:
    """The members of a sweep, generated on demand (the sample is drawn once; nothing else is stored)."""

    def __init__(self, sweep: SweepConfig, root_seed: int):
        self.sweep = sweep
        self.root_seed = int(root_seed)
        sampling, replicate = np.random.SeedSequence(self.root_seed).spawn(2)
        self.replicate_seeds = [int(c.generate_state(1, np.uint64)[0]) >> 1
                                for c in replicate.spawn(sweep.replicates)]
        self.sample = draw_sample(sweep.sample, np.random.default_rng(sampling)) if sweep.sample else None
        n_grid = math.prod(len(v) for v in sweep.grid.values())
        n_zip = len(next(iter(sweep.zip.values()))) if sweep.zip else 1
        n_sample = sweep.sample.n if sweep.sample else 1
        self.n_points = n_grid * n_zip * n_sample
        self.width = max(4, len(str(self.n_points * sweep.replicates - 1)))

    def __len__(self) -> int:
        return self.n_points * self.sweep.replicates

    def _points(self) -> Iterator[dict[str, Any]]:
        s = self.sweep
        grid = [dict(zip(s.grid, combo)) for combo in itertools.product(*s.grid.values())] if s.grid else [{}]
        zipped = [dict(zip(s.zip, row)) for row in zip(*s.zip.values())] if s.zip else [{}]
        for g, z in itertools.product(grid, zipped):
            if self.sample is None:
                yield {**g, **z}
                continue
            for row in self.sample:
                yield {**g, **z, **row}

    def __iter__(self) -> Iterator[Member]:
        reps = self.sweep.replicates
        for point, params in enumerate(self._points()):
            for r in range(reps):
                index = point * reps + r
                yield Member(f"m{index:0{self.width}d}", index, point, r, params, self.replicate_seeds[r])


def draw_sample(spec: SampleSpec, rng: np.random.Generator) -> list[dict[str, float]]:
    """``spec.n`` points of a Latin hypercube or scrambled Sobol sample, scaled to ``spec.ranges``.

    Returns
    -------
    list of dict
        One mapping dotted key -> value per point (floats; ints where ``integer``).
    """
    from scipy.stats import qmc

    keys = list(spec.ranges)
    d = len(keys)
    if spec.method == "lhs":
        unit = qmc.LatinHypercube(d=d, rng=rng).random(spec.n)
    else:
        unit = qmc.Sobol(d=d, scramble=True, rng=rng).random_base2(int(math.log2(spec.n)))
    points = []
    for row in unit:
        point = {}
        for key, u in zip(keys, row):
            r = spec.ranges[key]
            if r.log:
                value = 10.0 ** (math.log10(r.low) + u * (math.log10(r.high) - math.log10(r.low)))
            else:
                value = r.low + u * (r.high - r.low)
            value = min(max(value, r.low), r.high)  # no rounding error past a bound
            point[key] = int(round(value)) if r.integer else float(value)
        points.append(point)
    return points


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, Path, dict]:
    """Read and validate a sweep file; ``overrides`` (``key=value``, TOML values) join its ``[set]`` table.

    Returns
    -------
    (SweepConfig, Path, dict)
        The sweep, its base config's path (resolved against the sweep file's folder) and the base config's
        raw mapping.

    Raises
    ------
    ConfigError
        If the sweep file or its base config is missing, not TOML, or invalid (every problem with its key).
    """
    path = Path(path)
    data = read_toml(path, "sweep file")
    if overrides:
        data.setdefault("set", {})
        if isinstance(data["set"], dict):
            data["set"].update(_parse_overrides(overrides))
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, SweepConfig), str(path)) from None
    base = (path.parent / sweep.base).resolve() if not Path(sweep.base).is_absolute() else Path(sweep.base)
    base_data = read_toml(base, f"base config (base = {sweep.base!r} in {path})")
    return sweep, base, base_data


def _parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``{"a.b": value}`` from ``["a.b=value", ...]`` (values in TOML syntax, as ``tme run --set``)."""
    parsed = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"--set {item!r}: expected KEY=VALUE, e.g. time.duration_min=4320"], "command line")
        parsed[key.strip()] = apply_overrides({}, [f"v={text}"])["v"]
    return parsed


def read_toml(path: Path, what: str) -> dict:
    """The tables of a TOML file, or a :class:`ConfigError` naming the file and what it was read as."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"no such file: {path} ({what})"], str(path)) from None
    except IsADirectoryError:
        raise ConfigError([f"{path} is a directory, expected a TOML file ({what})"], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError([f"not a text file; expected TOML ({what})"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc} ({what})"], str(path)) from None
    except RecursionError:
        raise ConfigError([f"nested too deeply to read ({what})"], str(path)) from None


def member_config(base_data: dict, overrides: list[str], source: str):
    """The validated :class:`abm.config.Config` of one member (``base_data`` is not modified)."""
    import copy

    data = apply_overrides(copy.deepcopy(base_data), overrides)
    return parse_config(data, source)
