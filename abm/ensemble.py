"""Ensembles in memory: many parameter sets in, one row of summary statistics per member out.

:func:`simulate` is the entry point for calibration and sensitivity tools (SALib, pyABC, optimisers): it runs
each member without writing files, on the executors of ``tme batch`` (:mod:`abm.cohort.executors`: serial, a
local process pool, Dask, SLURM), and returns a :class:`pandas.DataFrame`. A member runs exactly as ``tme run``
would run its config (same steps, same random stream), so a member's numbers equal those of the same config and
seed run to a file. See docs/ENSEMBLE.md and ``examples/``.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abm.cohort.executors import ExecutorSpec, TaskFailure, run_tasks
from abm.config import Config, ConfigError, config_to_toml, load_config, parse_config

__all__ = ["final_values", "simulate"]

#: Readout kinds summarised by default: the state at the end (per-step events are left out).
FINAL_KINDS = ("count", "level", "ratio", "code")


@dataclass(frozen=True)
class _Task:
    config_toml: str
    summaries: Any


def final_values(frame, kinds: Mapping[str, str]) -> dict[str, float]:
    """The last row of every count, level, ratio and code readout of a time series (the default summary)."""
    last = frame.iloc[-1]
    return {name: float(last[name]) for name, kind in kinds.items() if kind in FINAL_KINDS and name in last}


def _summarise(summaries, frame, kinds: dict[str, str]) -> dict[str, float]:
    if summaries is None:
        return final_values(frame, kinds)
    if callable(summaries):
        return {str(k): float(v) for k, v in dict(summaries(frame)).items()}
    return {name: float(frame[name].iloc[-1]) for name in summaries}


def _run_member(task: _Task) -> dict:
    """Run one member in memory and summarise its time series (module-level, so process pools can pickle it)."""
    import pandas as pd

    from abm.model import Simulation

    t0 = time.perf_counter()
    config = parse_config(tomllib.loads(task.config_toml), "ensemble member")
    sim = Simulation(config)
    every = config.output.timeseries_every_steps
    rows = [sim.metrics()]
    for _ in range(config.n_steps):
        sim.step()
        if sim.step_index % every == 0:
            rows.append(sim.metrics())
    if sim.step_index % every != 0:
        rows.append(sim.metrics())
    frame = pd.DataFrame(rows).set_index("time_min")
    kinds = {name: kind for name, (_, kind) in sim.readout_declarations().items()}
    values = _summarise(task.summaries, frame, kinds)
    values["wall_s"] = time.perf_counter() - t0
    return values


def _base(base_config) -> tuple[Config, str]:
    """``base_config`` (a Config, a TOML path or a raw mapping) validated, and a name for messages."""
    if isinstance(base_config, Config):
        return base_config, "base config"
    if isinstance(base_config, str | Path):
        return load_config(base_config), str(base_config)
    if isinstance(base_config, Mapping):
        return parse_config(dict(base_config), "base config"), "base config"
    raise TypeError(f"base_config: expected a Config, a TOML path or a mapping, got {type(base_config).__name__}")


def _member_seeds(seeds, n: int, default: int) -> list[int]:
    """One seed per member: the base config's for all (None), spawned from a root (int), or given (sequence)."""
    if seeds is None:
        return [default] * n
    if isinstance(seeds, int | np.integer):
        return [int(c.generate_state(1, np.uint64)[0]) >> 1 for c in np.random.SeedSequence(int(seeds)).spawn(n)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"seeds: {len(seeds)} given for {n} parameter sets")
    return seeds


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"params key '{key}': '{part}' is a value, not a section"], "ensemble")
        node = child
    node[parts[-1]] = value.item() if isinstance(value, np.generic) else value


def _rows(params) -> list[dict[str, Any]]:
    if hasattr(params, "to_dict") and hasattr(params, "columns"):  # a pandas DataFrame
        return params.to_dict(orient="records")
    if isinstance(params, Mapping):
        raise TypeError("params: expected a sequence of mappings (one per member) or a DataFrame, got one mapping")
    return [dict(p) for p in params]


def simulate(
    base_config,
    params: Sequence[Mapping[str, Any]],
    seeds: int | Sequence[int] | None = None,
    *,
    summaries: Sequence[str] | Callable | None = None,
    executor: ExecutorSpec | None = None,
    progress: bool = True,
) -> Any:
    """Run one member per parameter set, in memory, and return their summary statistics.

    Parameters
    ----------
    base_config : Config, path or mapping
        The config every member starts from.
    params : sequence of mappings, or DataFrame
        One mapping per member, dotted config key -> value (``{"immune.tcell.recruitment_per_min": 1e-3}``), or
        a DataFrame whose columns are dotted keys.
    seeds : int, sequence of int, or None
        None: every member uses the base config's seed (common random numbers). An int: a root seed, member i
        gets ``SeedSequence(root).spawn(n)[i]`` (63 bits). A sequence: one seed per member.
    summaries : sequence of str, callable, or None
        None: the final value of every count, level, ratio and code readout. Readout names: their final values.
        A callable ``f(frame) -> dict[str, float]`` of the member's time series (a DataFrame indexed by
        ``time_min``, one column per readout); with a process pool or Dask it must be a module-level function.
    executor : ExecutorSpec, optional
        Where to run; default serially in this process.
    progress : bool
        Show a progress bar over the members.

    Returns
    -------
    pandas.DataFrame
        One row per member, in the order of ``params``: the parameters, ``seed``, ``status`` (``done`` or
        ``failed``), ``error``, ``wall_s`` (s) and the summaries (NaN for a failed member).

    Raises
    ------
    abm.config.ConfigError
        If a member's config is invalid (nothing is run).
    KeyboardInterrupt
        On Ctrl-C: at once when running in this process; with a process pool after the running members have
        finished (they write nothing, so there is nothing to close; a second Ctrl-C kills them).
    """
    import pandas as pd

    if isinstance(summaries, str):
        raise TypeError("summaries: give a list of readout names, not one string")
    base, source = _base(base_config)
    base_toml = config_to_toml(base)
    rows = _rows(params)
    member_seeds = _member_seeds(seeds, len(rows), base.seed)
    tasks, problems = [], []
    for i, (row, seed) in enumerate(zip(rows, member_seeds)):
        data = tomllib.loads(base_toml)  # a fresh plain copy per member
        try:
            for key, value in row.items():
                _set_dotted(data, key, value)
            data["seed"] = seed
            config = parse_config(data, f"member {i}")
        except ConfigError as exc:
            problems.extend(f"member {i} ({row}): {p}" for p in exc.problems)
            continue
        if isinstance(summaries, Sequence) and i == 0:
            _check_summary_names(config, summaries)
        tasks.append((str(i), _Task(config_to_toml(config), summaries)))
    if problems:
        raise ConfigError(problems[:20], source)
    results: dict[int, Any] = {}
    for key, result in run_tasks(_run_member, tasks, executor or ExecutorSpec(kind="serial"),
                                 desc="members", progress=progress):
        results[int(key)] = result
    out = []
    for i, (row, seed) in enumerate(zip(rows, member_seeds)):
        result = results[i]
        record = {**row, "seed": seed}
        if isinstance(result, TaskFailure):
            record.update(status="failed", error=str(result), wall_s=np.nan)
        else:
            record.update(status="done", error=None, **result)
        out.append(record)
    return pd.DataFrame(out)


def _check_summary_names(config: Config, names: Sequence[str]) -> None:
    """Refuse readout names the model does not declare (checked once, before anything runs)."""
    import difflib

    from abm.model import Simulation

    declared = Simulation(config).readout_declarations()
    unknown = [n for n in names if n not in declared]
    if unknown:
        near = difflib.get_close_matches(unknown[0], declared, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError([f"summaries: unknown readout '{unknown[0]}'{hint} (declared: {', '.join(declared)})"],
                          "ensemble")
