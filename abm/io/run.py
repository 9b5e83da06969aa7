"""Read access to a run file: snapshot times, fields, agents, time series and the resolved config.

>>> with open_run("runs/quickstart/sim.h5") as run:          # doctest: +SKIP
...     run.times                                            # snapshot times (min)
...     o2 = run.fields(1440.0)["oxygen"]                    # grid-shaped float32 array (mmHg)
...     cells = run.agents(1440.0, "tumour", frame=True)     # pandas DataFrame (pandas imported lazily)
...     ts = run.timeseries()                                # dict of 1-D arrays, no pandas needed

Reading uses h5py alone and never unpickles anything. Data are read one snapshot (or one dataset) at a time,
so memory does not grow with the length of the run.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import h5py
import numpy as np

from abm.io.reader import RunFileError, open_h5
from abm.io.state import read_snapshot_state, read_state

__all__ = ["CELL_LAYERS", "RunFile", "infer_kind", "load_snapshot_state", "open_run"]

#: Cell layers derived from a snapshot (boolean voxel masks), besides the fields.
CELL_LAYERS = ("tumour", "necrotic", "vessels")

# Format version 1 stored no kind per metric; these name patterns are how it is told (infer_kind).
_COUNT_SUFFIXES = ("_cells", "_voxels", "_quiescent", "_hypoxic")
_EVENT_MARKERS = ("_births", "_deaths", "_kills", "_killed", "_cleared", "_recruited")

_TIME_TOL_MIN = 1e-6


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _plain(value):
    """An HDF5 attribute as a plain Python value (for printing and JSON)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _usable(group) -> bool:
    """False for a snapshot the writer did not finish (a run killed while writing it)."""
    try:
        attrs = group.attrs
        if "time_min" not in attrs or "step" not in attrs or not bool(attrs.get("complete", True)):
            return False
        return all(part in group for part in ("fields", "agents", "state"))
    except (KeyError, OSError):
        return False


def infer_kind(name: str) -> str:
    """Kind of a time-series metric told from its name, for version-1 files that do not store it.

    Returns one of ``count``, ``event``, ``level``, ``ratio``, ``code`` (see :data:`abm.io.READOUT_KINDS`).
    """
    if name == "time_min":
        return "level"
    if name.endswith(_COUNT_SUFFIXES):
        return "count"
    if any(marker in name for marker in _EVENT_MARKERS):
        return "event"
    if name.endswith("_code"):
        return "code"
    if name.endswith(("_ratio", "_fraction")):
        return "ratio"
    return "level"


def load_snapshot_state(path, time_min: float | None = None) -> tuple[str, dict, float]:
    """Read the snapshot at (or just before) ``time_min`` (default: the last one).

    Returns
    -------
    config_toml : str
        The resolved config of the run.
    state : dict
        Snapshot state in the layout of :meth:`abm.model.Simulation.state`.
    time_min : float
        The snapshot's time.

    Raises
    ------
    RunFileError
        If the file is unusable, holds no snapshot, or ``time_min`` lies outside the run.
    """
    with open_run(path) as run:
        if not len(run):
            raise RunFileError(f"{path}: holds no snapshot")
        t = float(run.times[-1] if time_min is None else run.times[run.index_at(time_min)])
        return run.config_toml, run.state(t), t


def open_run(path) -> RunFile:
    """Open a run file read-only; use it as a context manager.

    Raises
    ------
    RunFileError
        If the file is missing, not HDF5, truncated, or not a tme-abm run.
    """
    return RunFile(path)


class RunFile:
    """A tme-abm run file opened read-only (see docs/FORMAT.md).

    Parameters
    ----------
    path : path-like
        The HDF5 file (``sim.h5``).

    Attributes
    ----------
    path : Path
        The file.
    times : ndarray of float64, shape (S,)
        Snapshot times (min), in snapshot order.
    steps : ndarray of int64, shape (S,)
        Step number of each snapshot.
    shape : tuple of int
        Lattice shape, 2 or 3 axes.
    spacing_um : float
        Voxel edge (µm).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._f = open_h5(self.path)
        try:
            f = self._f
            if "snapshots" not in f or "grid" not in f:
                raise RunFileError(f"{self.path}: a tme-abm file without /grid or /snapshots (damaged)")
            self._names = [k for k in sorted(f["snapshots"]) if _usable(f["snapshots"][k])]
            self.times = np.asarray([f["snapshots"][k].attrs["time_min"] for k in self._names], dtype=np.float64)
            self.steps = np.asarray([f["snapshots"][k].attrs["step"] for k in self._names], dtype=np.int64)
            self.shape = tuple(int(n) for n in f["grid"].attrs["shape"])
            self.spacing_um = float(f["grid"].attrs["spacing_um"])
        except (KeyError, OSError) as exc:
            self._f.close()
            raise RunFileError(f"{self.path}: damaged run file ({exc})") from None
        except RunFileError:
            self._f.close()
            raise

    # ----------------------------------------------------------------------------------------------------------
    def __enter__(self) -> RunFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._f.id.valid:
            self._f.close()

    @property
    def h5(self) -> h5py.File:
        """The underlying read-only :class:`h5py.File`."""
        return self._f

    @property
    def ndim(self) -> int:
        """Number of lattice axes."""
        return len(self.shape)

    @property
    def attrs(self) -> dict:
        """Root attributes as plain Python values."""
        return {k: _plain(v) for k, v in self._f.attrs.items()}

    @property
    def format_version(self) -> int:
        """Format version of the file (1 or 2; see docs/FORMAT.md)."""
        return int(self._f.attrs.get("format_version", 1))

    @property
    def complete(self) -> bool:
        """True if the writer closed the file cleanly (a killed run leaves False)."""
        return bool(self._f.attrs.get("complete", False))

    @property
    def config_toml(self) -> str:
        """The resolved config of the run, as TOML text."""
        return _text(self._f.attrs["config_toml"])

    def config_dict(self) -> dict:
        """The resolved config as a raw mapping (no validation)."""
        return tomllib.loads(self.config_toml)

    def config(self):
        """The resolved config, validated into a :class:`abm.config.Config`."""
        from abm.config import parse_config

        return parse_config(self.config_dict(), f"{self.path} (config_toml)")

    def therapies(self) -> list[dict]:
        """The therapies of the config: one mapping per [therapy], [radiotherapy], [cell_therapy], [vaccine], [virus].

        Each mapping holds the table's keys (``kind``, ``preset``, ``schedule``, ...) with its ``name`` added, in
        the order of the config; a radiotherapy course gets ``kind = "radiotherapy"``, a vaccine
        ``kind = "vaccine"``, a virus ``kind = "oncolytic_virus"`` (a cell therapy has its own ``kind``, ``car_t``
        or ``til``). Keys of ``[therapy]`` that are not tables are settings of the therapy module, not therapies,
        and are left out. An empty list where the config has no therapy.
        """
        config = self.config_dict()
        out = []
        for section, extra in (("therapy", {}), ("radiotherapy", {"kind": "radiotherapy"}), ("cell_therapy", {}),
                               ("vaccine", {"kind": "vaccine"}), ("virus", {"kind": "oncolytic_virus"})):
            tables = config.get(section)
            if isinstance(tables, dict):
                # The table's own name wins over a ``name`` key inside it: it is the one the config refers to.
                out += [{**extra, **spec, "name": name} for name, spec in tables.items() if isinstance(spec, dict)]
        return out

    # ----------------------------------------------------------------------------------------------------------
    # Snapshots
    def __len__(self) -> int:
        return len(self._names)

    @property
    def end_time_min(self) -> float:
        """Last time the run reached in the file: the later of the last snapshot and the last time-series row."""
        end = self.times[-1] if len(self.times) else 0.0
        ts = self._f.get("timeseries/time_min")
        if ts is not None and ts.shape[0]:
            end = max(end, float(ts[-1]))
        return float(end)

    def index_at(self, time_min: float) -> int:
        """Index of the snapshot at, or just before, ``time_min``.

        Raises
        ------
        RunFileError
            If the file holds no snapshot, or ``time_min`` lies before the first snapshot or after the end of
            the run (:attr:`end_time_min`).
        """
        if not len(self._names):
            raise RunFileError(f"{self.path}: holds no snapshot")
        t = float(time_min)
        span = f"snapshots span {self.times[0]:g}-{self.times[-1]:g} min, the run ends at {self.end_time_min:g} min"
        if t < self.times[0] - _TIME_TOL_MIN:
            raise RunFileError(f"{self.path}: no snapshot at or before t = {t:g} min; {span}")
        if t > self.end_time_min + _TIME_TOL_MIN:
            raise RunFileError(f"{self.path}: t = {t:g} min is after the end of the run; {span}")
        return int(np.nonzero(self.times <= t + _TIME_TOL_MIN)[0][-1])

    def snapshot(self, time_min: float) -> h5py.Group:
        """The HDF5 group of the snapshot at, or just before, ``time_min``."""
        return self._group(self.index_at(time_min))

    def _group(self, index: int) -> h5py.Group:
        return self._f["snapshots"][self._names[index]]

    def field_units(self, time_min: float | None = None) -> dict[str, str]:
        """Unit of each field in a snapshot (default: the first); ``""`` where the file stores none (version 1)."""
        g = self._group(0 if time_min is None else self.index_at(time_min))["fields"]
        return {name: _text(g[name].attrs.get("unit", "")) for name in sorted(g)}

    def field_names(self, time_min: float | None = None) -> list[str]:
        """Names of the fields stored in a snapshot (default: the first)."""
        g = self._group(0 if time_min is None else self.index_at(time_min))
        return sorted(g["fields"])

    def agent_types(self, time_min: float | None = None) -> list[str]:
        """Agent types stored in a snapshot (default: the first)."""
        g = self._group(0 if time_min is None else self.index_at(time_min))
        return sorted(g["agents"])

    def fields(self, time_min: float, names=None) -> dict[str, np.ndarray]:
        """Fields of the snapshot at or before ``time_min``, as grid-shaped NumPy arrays.

        Parameters
        ----------
        time_min : float
            Time (min); the snapshot at, or just before, it is read.
        names : iterable of str, optional
            Fields to read (default all).

        Returns
        -------
        dict of str to ndarray, each of shape :attr:`shape`
            Field values in their units (oxygen in mmHg).
        """
        g = self.snapshot(time_min)["fields"]
        wanted = sorted(g) if names is None else list(names)
        unknown = [n for n in wanted if n not in g]
        if unknown:
            raise RunFileError(f"{self.path}: no field {', '.join(unknown)}; fields: {', '.join(sorted(g))}")
        return {name: self._dataset(g[name]) for name in wanted}

    def _dataset(self, ds: h5py.Dataset, sel=()) -> np.ndarray:
        try:
            return ds[sel]
        except OSError as exc:
            raise RunFileError(f"{self.path}: cannot read {ds.name} (damaged: {exc})") from None

    def agents(self, time_min: float, agent_type: str, frame: bool = False):
        """Agent table of one type at the snapshot at or before ``time_min``.

        Parameters
        ----------
        time_min : float
            Time (min).
        agent_type : str
            Agent type, e.g. ``"tumour"``.
        frame : bool
            Return a :class:`pandas.DataFrame` (pandas is imported only then) instead of a dict of arrays.
            Columns of shape (N, k) become k columns ``<name>_0`` ... ``<name>_{k-1}``.

        Returns
        -------
        dict of str to ndarray (each of shape (N,) or (N, k)), or pandas.DataFrame
            ``voxel`` is the flat C-order index into the grid (see :meth:`voxel_coords`).
        """
        g = self.snapshot(time_min)["agents"]
        if agent_type not in g:
            raise RunFileError(f"{self.path}: no agent type '{agent_type}'; agent types: {', '.join(sorted(g))}")
        columns = {col: self._dataset(ds) for col, ds in g[agent_type].items()}
        if not frame:
            return columns
        import pandas as pd

        flat = {}
        for name, values in columns.items():
            if values.ndim == 1:
                flat[name] = values
            else:
                for i in range(values.shape[1]):
                    flat[f"{name}_{i}"] = values[:, i]
        return pd.DataFrame(flat)

    def voxel_coords(self, voxel) -> np.ndarray:
        """Lattice indices, shape (N, ndim) int64, of flat voxel indices ``voxel``."""
        return np.column_stack(np.unravel_index(np.asarray(voxel, dtype=np.int64), self.shape)).astype(np.int64)

    def state(self, time_min: float) -> dict:
        """Everything a restart needs at the snapshot at or before ``time_min``.

        Returns
        -------
        dict
            The layout of :meth:`abm.model.Simulation.state`: ``{"fields", "agents", "state"}``.
        """
        g = self.snapshot(time_min)
        try:
            return read_snapshot_state(g)
        except (KeyError, OSError) as exc:
            raise RunFileError(f"{self.path}: snapshot {g.name} is incomplete or damaged ({exc})") from None

    def snapshot_state(self, time_min: float) -> dict:
        """Only the ``state/`` entries (step, time, masks, and future PK/dose state) of one snapshot."""
        return read_state(self.snapshot(time_min)["state"])

    def agent_count(self, index: int, agent_type: str) -> int:
        """Number of agents of ``agent_type`` in snapshot ``index`` (reads no data, only a shape)."""
        g = self._group(index)["agents"]
        if agent_type not in g or not len(g[agent_type]):
            return 0
        first = next(iter(g[agent_type].values()))
        return int(first.shape[0])

    # ----------------------------------------------------------------------------------------------------------
    # Time series
    def timeseries(self, names=None) -> dict[str, np.ndarray]:
        """The time series as a dict of 1-D float64 arrays (``time_min`` first); no pandas needed.

        A metric that had not started by a row's time is NaN there. All arrays have the length of the shortest
        (rows half-appended by a run that failed while writing them are dropped).
        """
        ts = self._f.get("timeseries")
        if ts is None:
            return {}
        keys = list(ts) if names is None else list(names)
        keys = ["time_min", *[k for k in keys if k != "time_min"]] if "time_min" in ts else keys
        data = {k: self._dataset(ts[k]) for k in keys if k in ts}
        n = min((len(v) for v in data.values()), default=0)
        return {k: v[:n] for k, v in data.items()}

    def timeseries_units(self) -> dict[str, str]:
        """Unit of each time-series metric (``time_min`` first); ``""`` where the file stores none (version 1)."""
        return {k: _text(ds.attrs.get("unit", "")) for k, ds in self._timeseries_datasets().items()}

    def timeseries_kinds(self) -> dict[str, str]:
        """Kind of each time-series metric: ``count``, ``event``, ``level``, ``ratio`` or ``code``.

        Version-2 files store it per dataset; for version-1 files it is told from the name (:func:`infer_kind`).
        """
        return {k: _text(ds.attrs["kind"]) if "kind" in ds.attrs else infer_kind(k)
                for k, ds in self._timeseries_datasets().items()}

    def _timeseries_datasets(self) -> dict[str, h5py.Dataset]:
        ts = self._f.get("timeseries")
        if ts is None:
            return {}
        keys = ["time_min", *[k for k in ts if k != "time_min"]] if "time_min" in ts else list(ts)
        return {k: ts[k] for k in keys}

    def timeseries_frame(self):
        """The time series as a :class:`pandas.DataFrame` indexed by ``time_min`` (pandas imported lazily)."""
        import pandas as pd

        data = self.timeseries()
        frame = pd.DataFrame(data)
        return frame.set_index("time_min") if "time_min" in frame else frame

    # ----------------------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """What ``tme inspect`` prints, as plain JSON-able values."""
        attrs = self.attrs
        config = self.config_dict()
        ts = self._f.get("timeseries/time_min")
        n_rows = int(ts.shape[0]) if ts is not None else 0
        types = self.agent_types() if len(self) else []
        counts = {}
        if len(self):
            counts = {
                "first": {t: self.agent_count(0, t) for t in types},
                "last": {t: self.agent_count(len(self) - 1, t) for t in types},
            }
        out = {
            "file": str(self.path),
            "format": attrs.get("format"),
            "format_version": attrs.get("format_version"),
            "software_version": attrs.get("software_version"),
            "created_utc": attrs.get("created_utc"),
            "name": config.get("name"),
            "backend": attrs.get("backend"),
            "random": attrs.get("random"),
            "gpu_name": attrs.get("gpu_name"),
            "seed": attrs.get("seed"),
            "grid": {"shape": list(self.shape), "spacing_um": self.spacing_um, "ndim": self.ndim},
            "dt_min": config.get("time", {}).get("dt_min"),
            "snapshots": {
                "count": len(self),
                "times_min": self.times.tolist(),
                "steps": self.steps.tolist(),
            },
            "time_span_min": [float(self.times[0]), self.end_time_min] if len(self) else None,
            "timeseries_rows": n_rows,
            "fields": self.field_names() if len(self) else [],
            "agents": counts,
            "therapies": self.therapies(),
            "complete": self.complete,
            "end_reason": attrs.get("end_reason"),
        }
        for key in ("parent_file", "branch_time_min", "branch_step", "branch_overrides"):
            if key in attrs:
                out[key] = attrs[key]
        return out
