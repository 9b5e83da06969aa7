"""The HDF5 run writer: it owns the output file (layout in docs/FORMAT.md).

The model hands it state dictionaries; the writer buffers the time series at constant memory, writes
snapshots, and flushes after each snapshot so that a run killed at any moment leaves a file readable up to
its last snapshot. ``complete`` is set True only by :meth:`RunWriter.close`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import h5py
import numpy as np

from abm import FORMAT_NAME, FORMAT_VERSION, __version__

__all__ = ["RunWriter", "snapshot_name"]


def snapshot_name(index: int) -> str:
    """Group name of snapshot ``index`` under ``/snapshots``."""
    return f"{index:06d}"


class RunWriter:
    """Write one run to an HDF5 file.

    Parameters
    ----------
    path : path-like
        File to create; an existing file is replaced only if ``overwrite``.
    config_toml : str
        The resolved config, stored in the root attribute ``config_toml``.
    seed : int
        Root seed of the run.
    backend : str
        Backend name.
    shape : tuple of int
        Lattice shape.
    spacing_um : float
        Voxel edge (µm).
    compression : int
        gzip level for snapshot fields (0 = none).
    buffer_rows : int
        Time-series rows kept in memory before they are appended to the file.
    attrs : dict, optional
        Extra root attributes (e.g. the parent file of a branched run).
    overwrite : bool
        Replace an existing file.
    """

    def __init__(self, path, config_toml: str, seed: int, backend: str, shape, spacing_um: float,
                 compression: int = 4, buffer_rows: int = 256, attrs: dict | None = None, overwrite: bool = False):
        self.path = Path(path)
        self._file = h5py.File(self.path, "w" if overwrite else "w-")
        f = self._file
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["software_version"] = __version__
        f.attrs["created_utc"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        f.attrs["seed"] = int(seed)
        f.attrs["backend"] = backend
        f.attrs["config_toml"] = config_toml
        f.attrs["complete"] = False
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        grid = f.create_group("grid")
        grid.attrs["shape"] = np.asarray(shape, dtype=np.int64)
        grid.attrs["spacing_um"] = float(spacing_um)
        f.create_group("timeseries")
        f.create_group("snapshots")
        self.compression = int(compression)
        self._buffer_rows = int(buffer_rows)
        self._rows: list[dict] = []
        self._names: list[str] | None = None
        self._n_snapshots = 0
        f.flush()

    # ----------------------------------------------------------------------------------------------------------
    @property
    def n_snapshots(self) -> int:
        """Snapshots written so far."""
        return self._n_snapshots

    def record(self, metrics: dict[str, float]) -> None:
        """Buffer one time-series row; the first row fixes the set of metrics (``time_min`` first)."""
        if self._names is None:
            self._names = ["time_min", *[k for k in metrics if k != "time_min"]]
            ts = self._file["timeseries"]
            for name in self._names:
                ts.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(1024,))
        self._rows.append(metrics)
        if len(self._rows) >= self._buffer_rows:
            self.flush_timeseries()

    def flush_timeseries(self) -> None:
        """Append the buffered rows to the file."""
        if not self._rows:
            return
        ts = self._file["timeseries"]
        n_new = len(self._rows)
        for name in self._names:
            ds = ts[name]
            n = ds.shape[0]
            ds.resize((n + n_new,))
            ds[n:] = np.asarray([row.get(name, np.nan) for row in self._rows], dtype=np.float64)
        self._rows.clear()

    def write_snapshot(self, state: dict) -> int:
        """Write a snapshot from :meth:`abm.model.Simulation.state` output and flush the file.

        Returns
        -------
        int
            The snapshot's index.
        """
        index = self._n_snapshots
        g = self._file["snapshots"].create_group(snapshot_name(index))
        st = state["state"]
        g.attrs["time_min"] = float(st["time_min"])
        g.attrs["step"] = int(st["step"])
        g.attrs["complete"] = False  # set True after the last dataset, so a half-written snapshot is recognised
        comp = {"compression": "gzip", "compression_opts": self.compression} if self.compression else {}
        fields = g.create_group("fields")
        for name, data in state["fields"].items():
            fields.create_dataset(name, data=data, chunks=True, shuffle=bool(comp), **comp)
        agents = g.create_group("agents")
        for kind, columns in state["agents"].items():
            ag = agents.create_group(kind)
            for col, data in columns.items():
                ag.create_dataset(col, data=data, **(comp if data.size > 1024 else {}))
        _write_state(g.create_group("state"), st, comp)
        g.attrs["complete"] = True
        self._n_snapshots += 1
        self.flush_timeseries()
        self._file.flush()
        return index

    def close(self, complete: bool = True, **attrs) -> None:
        """Flush everything, set ``complete`` and any extra root attributes, and close the file."""
        if not self._file.id.valid:
            return
        self.flush_timeseries()
        for key, value in attrs.items():
            self._file.attrs[key] = value
        self._file.attrs["complete"] = bool(complete)
        self._file.close()

    def abort(self) -> None:
        """Close without marking the file complete (what is flushed stays readable)."""
        if self._file.id.valid:
            try:
                self.flush_timeseries()
            finally:
                self._file.close()


def _write_state(group: h5py.Group, state: dict, comp: dict) -> None:
    """Write a (possibly nested) state mapping: scalars as attributes, arrays as datasets, dicts as groups.

    Nested mappings are how future state slots in without a format change: e.g. ``state["pk"][drug]`` with
    the compartment amounts of one drug, ``state["pending_doses"][drug]`` with the times and doses still to
    come (see docs/FORMAT.md). Boolean arrays are stored as uint8 with the attribute ``bool=True``.
    """
    for key, value in state.items():
        if isinstance(value, dict):
            _write_state(group.create_group(key), value, comp)
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            data = value.astype(np.uint8) if value.dtype == bool else value
            ds = group.create_dataset(key, data=data, **(comp if value.size > 1024 else {}))
            if value.dtype == bool:
                ds.attrs["bool"] = True
        else:
            group.attrs[key] = value


def _read_state(group: h5py.Group) -> dict:
    """Inverse of :func:`_write_state`."""
    st: dict = dict(group.attrs)
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            st[key] = _read_state(item)
        else:
            data = item[()]
            st[key] = data.astype(bool) if item.attrs.get("bool", False) else data
    return st


def read_snapshot_state(group: h5py.Group) -> dict:
    """Read one snapshot group back into the dictionary layout of :meth:`abm.model.Simulation.state`."""
    fields = {name: ds[()] for name, ds in group["fields"].items()}
    agents = {kind: {col: ds[()] for col, ds in g.items()} for kind, g in group["agents"].items()}
    return {"fields": fields, "agents": agents, "state": _read_state(group["state"])}
