"""Restarting a run from one of its snapshots, unchanged or as a branch with a changed config.

A replay reads the snapshot at (or just before) the requested time, rebuilds the simulation with
:meth:`abm.model.Simulation.from_state` and hands it to :func:`abm.runner.run_simulation`. Every step's random
stream is derived from ``(seed, step)`` and the step is stored in the snapshot, so an unchanged replay on the
backend that wrote the file continues bit-identically.

The replay writes a new run directory; it never touches the parent file. Its HDF5 file starts at the branch
snapshot (the first snapshot of the new file equals the parent's snapshot at the branch time) and records its
parent in root attributes (docs/FORMAT.md): ``parent_file``, ``branch_time_min``, ``branch_step``,
``branch_overrides``, ``parent_config_toml``, and what the branch added: ``branch_added_modules`` and
``branch_added_fields`` (JSON lists; a module switched on at the branch is seeded there, a new field starts at its
initial value). The parent's history before the branch point stays in the
parent file and is not copied.
"""

from __future__ import annotations

import json
from pathlib import Path

from abm.config import Config, ConfigError, apply_overrides, parse_config
from abm.io.reader import RunFileError
from abm.io.run import open_run

__all__ = ["branch_config", "default_replay_dir", "read_therapy_file", "replay_run"]


def read_therapy_file(path) -> dict:
    """The tables of a therapy file; only ``therapy``, ``radiotherapy``, ``virus``, ``patient`` and ``effects``."""
    import tomllib

    from abm.config import ConfigError

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"no such file: {path}"], str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    unknown = sorted(set(data) - {"therapy", "radiotherapy", "virus", "patient", "effects"})
    if unknown:
        raise ConfigError([f"{', '.join(unknown)}: a therapy file holds only [therapy.<name>], "
                           "[radiotherapy.<name>], [virus.<name>], [patient] and [effects] tables"], str(path))
    return data


def branch_config(data: dict, parent_backend: str | None, overrides: list[str], therapy: dict | None = None,
                  source: str = "branch", parent_random: str | None = None) -> Config:
    """The config of a branch: the parent's resolved config with a therapy file's tables and the overrides.

    Parameters
    ----------
    data : dict
        The parent's resolved config as a raw mapping (:meth:`abm.io.RunFile.config_dict`); changed in place.
    parent_backend : str or None
        The backend that wrote the parent; the branch keeps it unless an override names ``backend``, so an
        unchanged replay continues bit-identically.
    overrides : list of str
        ``KEY=VALUE`` changes (TOML values), applied last.
    therapy : dict, optional
        The tables of a therapy file (:func:`read_therapy_file`): its ``[therapy.<name>]``, ``[radiotherapy.<name>]``
        and ``[virus.<name>]`` tables are added (one of the same name replaces the parent's) and its ``[patient]``
        and ``[effects]`` keys merged in.
    source : str
        Names the config in error messages.
    parent_random : str or None
        The generator of the parent's random streams (its ``random`` attribute); the branch keeps it unless an
        override names ``random``.

    Raises
    ------
    abm.config.ConfigError
        If an override is malformed or the changed config is invalid.
    """
    named = {o.partition("=")[0].strip() for o in overrides}
    if parent_backend and "backend" not in named:
        data["backend"] = parent_backend
    if parent_random and "random" not in named:
        data["random"] = parent_random
    if therapy is not None:
        data.setdefault("therapy", {}).update(therapy.get("therapy", {}))
        for section in ("radiotherapy", "virus"):
            if section in therapy:
                data.setdefault(section, {}).update(therapy[section])
        for key in ("patient", "effects"):
            if key in therapy:
                data[key] = {**data.get(key, {}), **therapy[key]}
    return parse_config(apply_overrides(data, list(overrides)), source)


def default_replay_dir(parent_file: Path, time_min: float) -> Path:
    """``<parent run dir>-replay-t<T>`` next to the parent run directory (T in minutes)."""
    parent_file = Path(parent_file).resolve()
    return parent_file.parent.with_name(f"{parent_file.parent.name}-replay-t{time_min:g}")


def replay_run(
    path,
    from_min: float,
    *,
    until_min: float | None = None,
    overrides: list[str] | None = None,
    out_dir=None,
    overwrite: bool = False,
    progress: bool = True,
    therapy_file=None,
):
    """Restart the run in ``path`` from its snapshot at (or just before) ``from_min``.

    Parameters
    ----------
    path : path-like
        Parent run file.
    from_min : float
        Restart time (min). It must lie between the first snapshot and the end of the run; the snapshot at or
        just before it is used.
    until_min : float, optional
        End time (min) of the replay; default the ``time.duration_min`` of the (possibly changed) config.
    overrides : list of str, optional
        ``KEY=VALUE`` config changes (TOML values) that branch the run, e.g.
        ``["tumour.apoptosis_rate_per_min=0.01"]``. ``backend`` and ``random`` default to the parent's.
    out_dir : path-like, optional
        Output directory; default :func:`default_replay_dir`.
    overwrite : bool
        Replace a run already in ``out_dir`` (never the parent).
    progress : bool
        Show a progress bar.
    therapy_file : path-like, optional
        TOML file whose ``[therapy.<name>]`` and ``[radiotherapy.<name>]`` tables (and ``[patient]``, ``[effects]``)
        are added to the branch's config before the overrides; a therapy of the same name replaces the parent's.

    Returns
    -------
    abm.runner.RunResult

    Raises
    ------
    RunFileError
        If the parent file is unusable, the time lies outside the run, or the output would replace the parent.
    abm.config.ConfigError
        If an override is malformed or the changed config is invalid.
    """
    from abm.model import Simulation
    from abm.runner import run_simulation

    path = Path(path)
    overrides = list(overrides or [])
    with open_run(path) as run:
        index = run.index_at(from_min)
        branch_time = float(run.times[index])
        branch_step = int(run.steps[index])
        parent_toml = run.config_toml
        data = run.config_dict()
        parent_backend, parent_random = run.attrs.get("backend"), run.attrs.get("random")
        state = run.state(branch_time)
    extra = read_therapy_file(therapy_file) if therapy_file is not None else None
    config = branch_config(data, parent_backend, overrides, extra, f"{path} with --set", parent_random)
    end = config.time.duration_min if until_min is None else float(until_min)
    if end <= branch_time:
        raise RunFileError(
            f"{path}: replay would end at t = {end:g} min, not after the branch snapshot at t = {branch_time:g} min; "
            "pass a later --until (or --set time.duration_min=...)"
        )
    out_dir = Path(out_dir) if out_dir is not None else default_replay_dir(path, branch_time)
    if (out_dir / "sim.h5").resolve() == path.resolve():
        raise RunFileError(f"{path}: a replay never overwrites its parent; choose another --out")
    try:
        sim = Simulation.from_state(config, state)
    except ConfigError:
        raise
    except ValueError as exc:
        raise RunFileError(f"{path}: the snapshot at t = {branch_time:g} min does not fit the config ({exc})") from None
    attrs = {
        "parent_file": str(path.resolve()),
        "branch_time_min": branch_time,
        "branch_step": branch_step,
        "branch_overrides": json.dumps(overrides),
        "branch_therapy_file": str(Path(therapy_file).resolve()) if therapy_file is not None else "",
        "parent_config_toml": parent_toml,
        "branch_added_modules": json.dumps(sim.added["modules"]),
        "branch_added_fields": json.dumps(sim.added["fields"]),
    }
    return run_simulation(config, out_dir, sim=sim, until_min=end, overwrite=overwrite, progress=progress,
                          extra_attrs=attrs)
