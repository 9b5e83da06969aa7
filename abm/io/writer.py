"""The HDF5 run writer: it owns the output file (layout in docs/FORMAT.md).

The model hands it state dictionaries; the writer buffers the time series at constant memory, writes
snapshots, and flushes after each snapshot so that a run killed at any moment leaves a file readable up to
its last snapshot. ``complete`` is set True only by :meth:`RunWriter.close`.

The time series is declared up front: every metric has a unit and a kind (:data:`READOUT_KINDS`), its dataset
exists from the first row, a metric absent from a row (or not started yet) is NaN there, and an undeclared
metric is refused.

A write that fails (disk full, quota, I/O error) raises :class:`RunWriteError`. HDF5 (2.0, through h5py 3.16)
recovers from a failed write of raw data but not from a failed flush of its metadata cache: after one it can
neither flush nor close the file and crashes the process at the next try or at exit. Three things keep the file
usable:

- raw data are written through (no chunk cache, no sieve buffer), so a failed write raises in the call that
  made it rather than in h5py's destructor;
- before each metadata flush the writer checks that the disk has :data:`FLUSH_MARGIN_BYTES` free, and stops as
  if it were full when not;
- a reserve file of :data:`RESERVE_BYTES` beside the run file is deleted on failure, so that the file can still
  be closed with ``end_reason = "write_failed"`` (closing with no space at all can write part of the metadata
  and leave the file unopenable).

A quota (EDQUOT) that free space does not show can still fail a metadata flush; the message then says the
file could not be marked.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import errno as _errno
import os
import re
import shutil
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from abm import FORMAT_NAME, FORMAT_VERSION, __version__
from abm.io.state import read_snapshot_state, write_state

# read_snapshot_state is re-exported: callers imported it from here before abm.io.state existed.

__all__ = [
    "FLUSH_MARGIN_BYTES",
    "READOUT_KINDS",
    "RESERVE_BYTES",
    "RunWriteError",
    "RunWriter",
    "read_snapshot_state",
    "snapshot_name",
]

#: Kinds of time-series metric: a count of cells or voxels (``count``), events during the step that ended at
#: the row's time (``event``), a level or concentration (``level``), a fraction or ratio (``ratio``), an integer
#: category code (``code``).
READOUT_KINDS = ("count", "event", "level", "ratio", "code")

#: Bytes held in the reserve file beside the run file and given back when a write fails, so that the file can
#: still be marked and closed.
RESERVE_BYTES = 1 << 20

#: Free space (bytes) the file system must have before each flush of the file's metadata; with less, the writer
#: stops as if the disk were full. HDF5 cannot recover from a failed metadata flush (it can then neither flush
#: nor close the file, and crashes at exit), so that flush must not be the write that finds the disk full.
FLUSH_MARGIN_BYTES = 256 << 10

_TIME_DECLARATION = ("min", "level")


def snapshot_name(index: int) -> str:
    """Group name of snapshot ``index`` under ``/snapshots``."""
    return f"{index:06d}"


class RunWriteError(OSError):
    """Writing the run file failed (disk full, quota, I/O error).

    Attributes
    ----------
    filename : str
        The run file.
    what : str
        What was being written (``"snapshot"``, ``"time series"``, ...).
    time_min : float or None
        Simulation time (min) of what was being written.
    errno : int or None
        The system error number (28 = no space left on device), where HDF5 reported one.
    detail : str
        The underlying error's text.
    last_snapshot_min : float or None
        Time of the last snapshot flushed before the failure (None if none was).
    marked : bool or None
        Set by :meth:`RunWriter.close_after_failure`: whether ``end_reason = "write_failed"`` reached the file.
    """

    def __init__(self, filename, what: str, time_min: float | None, errno: int | None, detail: str,
                 last_snapshot_min: float | None, marked: bool | None = None):
        super().__init__(errno, os.strerror(errno) if errno else detail)
        self.filename = str(filename)
        self.what = what
        self.time_min = time_min
        self.detail = detail
        self.last_snapshot_min = last_snapshot_min
        self.marked = marked

    def __reduce__(self):
        return type(self), (self.filename, self.what, self.time_min, self.errno, self.detail,
                            self.last_snapshot_min, self.marked)

    def __str__(self) -> str:
        when = f" at t = {self.time_min:g} min" if self.time_min is not None else ""
        if self.errno:
            reason = f"{self.strerror[:1].lower()}{self.strerror[1:]} (errno {self.errno})"
        else:
            reason = self.detail
        fix = "free space" if self.errno in (_errno.ENOSPC, _errno.EDQUOT) else "fix the cause"
        text = f"{self.filename}: could not write {self.what}{when}: {reason}."
        if self.last_snapshot_min is None:
            text += f" The file holds no complete snapshot; {fix} and run again."
        else:
            t = self.last_snapshot_min
            text += (f" Every snapshot up to t = {t:g} min is readable; {fix} and "
                     f"`tme replay {self.filename} --from {t:g}` to continue.")
        if self.marked is True:
            text += ' The file is closed with end_reason = "write_failed".'
        elif self.marked is False:
            text += (" The file could not be written at all any more, so it is not marked (no end_reason); "
                     f"check it with `tme inspect {self.filename}`.")
        return text


def _errno_of(exc: BaseException) -> int | None:
    """The system errno of an h5py error: ``OSError.errno``, or the ``errno = N`` HDF5 puts in its messages."""
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    found = re.search(r"errno = (\d+)", str(exc))
    return int(found.group(1)) if found else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _check_declarations(readouts: Mapping, field_units: Mapping) -> dict[str, tuple[str, str]]:
    declared = {"time_min": _TIME_DECLARATION}
    for name, decl in readouts.items():
        if not isinstance(decl, tuple | list) or len(decl) != 2 or not all(isinstance(v, str) for v in decl):
            raise ValueError(f"readout '{name}': expected (unit, kind) strings, got {decl!r}")
        unit, kind = decl
        if kind not in READOUT_KINDS:
            raise ValueError(f"readout '{name}': kind {kind!r} is not one of {', '.join(READOUT_KINDS)}")
        if name == "time_min" and tuple(decl) != _TIME_DECLARATION:
            raise ValueError(f"readout 'time_min' is always {_TIME_DECLARATION}, got {tuple(decl)!r}")
        declared[name] = (unit, kind)
    for name, unit in field_units.items():
        if not isinstance(unit, str):
            raise ValueError(f"field '{name}': unit must be a string, got {unit!r}")
    return declared


def _create_h5(path: Path, overwrite: bool) -> h5py.File:
    """Create the HDF5 file with write-through raw data: no chunk cache and no sieve buffer.

    Both caches hold raw data back until a dataset is closed; a write that fails then fails in h5py's
    destructor, where it cannot be caught, and HDF5's next flush of the file crashes the process. Without them
    a failed write raises in the call that made it. Metadata is still cached and written at each flush.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)  # h5py's default
    mdc_nelmts, rdcc_nslots, _, rdcc_w0 = fapl.get_cache()
    fapl.set_cache(mdc_nelmts, rdcc_nslots, 0, rdcc_w0)
    fapl.set_sieve_buf_size(0)
    flags = h5py.h5f.ACC_TRUNC if overwrite else h5py.h5f.ACC_EXCL  # ACC_EXCL raises FileExistsError
    return h5py.File(h5py.h5f.create(os.fsencode(path), flags, fapl=fapl))


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
    readouts : mapping of str to (str, str)
        Every time-series metric the run records: name -> (unit, kind), kind one of :data:`READOUT_KINDS`.
        ``time_min`` (unit ``min``, kind ``level``) is added. A dataset is created per metric at once.
    field_units : mapping of str to str
        Unit of every field a snapshot may hold (field name -> unit, e.g. ``{"oxygen": "mmHg"}``).
    compression : int
        gzip level for snapshot fields (0 = none).
    buffer_rows : int
        Time-series rows kept in memory before they are appended to the file.
    random : str, optional
        Generator of the run's random streams (``"pcg64"`` or ``"philox"``), stored in the root attribute
        ``random``; not stored if None.
    attrs : dict, optional
        Extra root attributes (e.g. the parent file of a branched run).
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    ValueError
        If a declaration is malformed.
    RunWriteError
        If the file cannot be started (e.g. the disk is full).
    """

    def __init__(self, path, config_toml: str, seed: int, backend: str, shape, spacing_um: float, *,
                 readouts: Mapping[str, tuple[str, str]], field_units: Mapping[str, str], compression: int = 4,
                 buffer_rows: int = 256, random: str | None = None, attrs: dict | None = None,
                 overwrite: bool = False):
        self.path = Path(path)
        self._declared = _check_declarations(readouts, field_units)
        self._field_units = dict(field_units)
        self.compression = int(compression)
        self._buffer_rows = int(buffer_rows)
        self._rows: list[dict] = []
        self._n_snapshots = 0
        self._last_snapshot_min: float | None = None
        self._failure: RunWriteError | None = None
        self._open_snapshot: h5py.Group | None = None
        self._reserve: Path | None = None
        self._close_tried = False
        self._file = _create_h5(self.path, overwrite)
        try:
            head = {"random": random} if random is not None else {}
            self._start(config_toml, seed, backend, shape, spacing_um, {**head, **(attrs or {})})
        except RunWriteError:
            self.close_after_failure()
            raise

    def _start(self, config_toml: str, seed: int, backend: str, shape, spacing_um: float, attrs: dict) -> None:
        with self._guard("the file header", None):
            self._make_reserve()
            f = self._file
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["software_version"] = __version__
            f.attrs["created_utc"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            f.attrs["seed"] = int(seed)
            f.attrs["backend"] = backend
            f.attrs["config_toml"] = config_toml
            f.attrs["complete"] = False
            for key, value in attrs.items():
                f.attrs[key] = value
            grid = f.create_group("grid")
            grid.attrs["shape"] = np.asarray(shape, dtype=np.int64)
            grid.attrs["spacing_um"] = float(spacing_um)
            ts = f.create_group("timeseries")
            for name, (unit, kind) in self._declared.items():
                ds = ts.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(1024,))
                ds.attrs["unit"] = unit
                ds.attrs["kind"] = kind
            f.create_group("snapshots")
            self._flush()

    # ----------------------------------------------------------------------------------------------------------
    @property
    def n_snapshots(self) -> int:
        """Snapshots written so far."""
        return self._n_snapshots

    @property
    def readouts(self) -> dict[str, tuple[str, str]]:
        """The declared metrics, ``time_min`` first: name -> (unit, kind)."""
        return dict(self._declared)

    @property
    def failed(self) -> RunWriteError | None:
        """The write failure that stopped this writer, or None."""
        return self._failure

    def record(self, metrics: Mapping[str, float]) -> None:
        """Buffer one time-series row (it must hold ``time_min``; declared metrics it lacks are NaN).

        Raises
        ------
        ValueError
            If the row holds a metric that was not declared (the message names the nearest declared ones), or
            has no ``time_min``.
        RunWriteError
            If appending the buffer to the file fails, or an earlier write failed.
        """
        if self._failure is not None:
            raise self._failure
        undeclared = [k for k in metrics if k not in self._declared]
        if undeclared:
            hints = []
            for name in undeclared:
                near = difflib.get_close_matches(name, list(self._declared), n=3, cutoff=0.6)
                hints.append(f"'{name}'" + (f" (nearest declared: {', '.join(near)})" if near else ""))
            raise ValueError(f"{self.path}: time-series metric(s) not declared in readouts: {'; '.join(hints)}")
        if "time_min" not in metrics:
            raise ValueError(f"{self.path}: a time-series row needs 'time_min'")
        self._rows.append(dict(metrics))
        if len(self._rows) >= self._buffer_rows:
            self.flush_timeseries()

    def flush_timeseries(self) -> None:
        """Append the buffered rows to the file (``time_min`` last, so a half-done append is recognised)."""
        if not self._rows:
            return
        with self._guard("time series", float(self._rows[-1]["time_min"])):
            ts = self._file["timeseries"]
            n_new = len(self._rows)
            for name in [*list(self._declared)[1:], "time_min"]:
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

        Raises
        ------
        ValueError
            If a field has no declared unit (nothing is written then).
        RunWriteError
            If writing fails; the snapshot stays ``complete = False`` and readers skip it.
        """
        st = state["state"]
        time_min = float(st["time_min"])
        missing = [name for name in state["fields"] if name not in self._field_units]
        if missing:
            raise ValueError(f"{self.path}: field(s) {', '.join(missing)} have no declared unit (field_units); "
                             f"declared: {', '.join(self._field_units) or 'none'}")
        index = self._n_snapshots
        with self._guard("snapshot", time_min):
            g = self._file["snapshots"].create_group(snapshot_name(index))
            self._open_snapshot = g
            g.attrs["time_min"] = time_min
            g.attrs["step"] = int(st["step"])
            g.attrs["complete"] = False  # True after the last dataset, so a half-written snapshot is recognised
            comp = {"compression": "gzip", "compression_opts": self.compression} if self.compression else {}
            fields = g.create_group("fields")
            for name, data in state["fields"].items():
                ds = fields.create_dataset(name, data=data, chunks=True, shuffle=bool(comp), **comp)
                ds.attrs["unit"] = self._field_units[name]
            agents = g.create_group("agents")
            for kind, columns in state["agents"].items():
                ag = agents.create_group(kind)
                for col, data in columns.items():
                    ag.create_dataset(col, data=data, **(comp if data.size > 1024 else {}))
            write_state(g.create_group("state"), st, comp)
            g.attrs["complete"] = True
            self.flush_timeseries()
            self._flush()
            self._open_snapshot = None
        self._n_snapshots += 1
        self._last_snapshot_min = time_min
        return index

    def close(self, complete: bool = True, **attrs) -> None:
        """Flush everything, set ``complete`` and any extra root attributes, and close the file.

        After a write failure this is :meth:`close_after_failure`.

        Raises
        ------
        RunWriteError
            If the final writes fail.
        """
        if self._failure is not None:
            self.close_after_failure()
            return
        if not self._file.id.valid:
            return
        self.flush_timeseries()
        with self._guard("the end of the run", None):
            for key, value in attrs.items():
                self._file.attrs[key] = value
            self._file.attrs["complete"] = bool(complete)
            self._check_room()
            self._file.close()
        self._drop_reserve()

    def abort(self) -> None:
        """Close without marking the file complete (what is flushed stays readable); never raises a write error."""
        if self._failure is not None:
            self.close_after_failure()
            return
        if not self._file.id.valid:
            return
        try:
            self.flush_timeseries()
            with self._guard("the end of the run", None):
                self._check_room()
                self._file.close()
            self._drop_reserve()
        except RunWriteError:
            self.close_after_failure()

    def close_after_failure(self) -> bool:
        """After a :class:`RunWriteError`: give back the reserve, mark ``end_reason = "write_failed"`` and close.

        Buffered time-series rows are dropped, and the snapshot being written stays ``complete = False``. Tries
        once and never raises: a file that cannot take even this is left as the failure left it.

        Returns
        -------
        bool
            Whether the mark and the close reached the file (also stored in ``failed.marked``).
        """
        self._drop_reserve()
        if self._close_tried or not self._file.id.valid:
            # A close that failed leaves HDF5 unable to touch the file again without crashing.
            return bool(self._failure is not None and self._failure.marked)
        self._close_tried = True
        try:
            if self._open_snapshot is not None:
                self._open_snapshot.attrs["complete"] = False
            self._file.attrs["end_reason"] = "write_failed"
            self._file.attrs["complete"] = False
            self._file.close()
            marked = True
        except (OSError, RuntimeError, KeyError):
            marked = False  # writing again could damage what is on disk: leave the handle alone
        self._open_snapshot = None
        self._rows.clear()
        if self._failure is not None:
            self._failure.marked = marked
        return marked

    # ----------------------------------------------------------------------------------------------------------
    @contextmanager
    def _guard(self, what: str, time_min: float | None):
        """Turn an h5py or OS error inside the block into a :class:`RunWriteError`; refuse writes after one."""
        if self._failure is not None:
            raise self._failure
        try:
            yield
        except RunWriteError:
            raise
        except (OSError, RuntimeError) as exc:  # h5py reports failed writes as either
            self._failure = RunWriteError(self.path, what, time_min, _errno_of(exc), _one_line(exc),
                                          self._last_snapshot_min)
            raise self._failure from exc

    def _flush(self) -> None:
        self._check_room()
        self._file.flush()

    def _check_room(self) -> None:
        """Raise ENOSPC before a metadata flush that could find the disk full (:data:`FLUSH_MARGIN_BYTES`)."""
        try:
            usage = shutil.disk_usage(self.path.parent)
        except OSError:
            return
        if usage.total and usage.free < FLUSH_MARGIN_BYTES:
            raise OSError(_errno.ENOSPC, f"{os.strerror(_errno.ENOSPC)} ({usage.free} bytes free, fewer than "
                                         f"the {FLUSH_MARGIN_BYTES} the writer keeps for a safe flush)")

    def _make_reserve(self) -> None:
        reserve = self.path.with_name(f".{self.path.name}.reserve")
        try:
            with open(reserve, "wb") as fh:
                try:
                    os.posix_fallocate(fh.fileno(), 0, RESERVE_BYTES)
                except (AttributeError, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
                        raise
                    fh.write(os.urandom(RESERVE_BYTES))  # incompressible, so a compressing file system keeps it
            self._reserve = reserve
        except OSError as exc:
            reserve.unlink(missing_ok=True)
            if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
                raise
            self._reserve = None  # e.g. a read-only directory for side files: run without a reserve

    def _drop_reserve(self) -> None:
        if self._reserve is not None:
            try:
                self._reserve.unlink(missing_ok=True)
            except OSError:
                pass
            self._reserve = None
