"""Opening run files safely: clear errors for missing, truncated, foreign or non-HDF5 files.

This is the low-level layer of reading: :mod:`abm.io.run` builds :class:`abm.io.RunFile` on it. It imports
nothing else from :mod:`abm.io`. Reading uses h5py alone and never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from abm import FORMAT_NAME, FORMAT_VERSION

__all__ = ["RunFileError", "open_h5"]


class RunFileError(ValueError):
    """A run file cannot be used; the message names the file and what is wrong."""


def open_h5(path) -> h5py.File:
    """Open a tme-abm run file read-only, checking that it is one.

    Raises
    ------
    RunFileError
        If the file is missing, is not HDF5 (or is truncated), or is an HDF5 file of another format or a
        newer format version. Every older format version is opened (docs/FORMAT.md says what each lacks).
    """
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"{path}: no such file")
    if path.is_dir():
        raise RunFileError(f"{path}: is a directory, expected a tme-abm HDF5 run file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        kind = "not an HDF5 file" if not h5py.is_hdf5(path) else "unreadable HDF5 (truncated or damaged)"
        raise RunFileError(f"{path}: {kind} ({exc})") from None
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT_NAME:
        f.close()
        raise RunFileError(f"{path}: an HDF5 file but not a tme-abm run (format attribute {fmt!r})")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        f.close()
        raise RunFileError(
            f"{path}: format version {version} is newer than this software reads ({FORMAT_VERSION}); upgrade tme-abm"
        )
    return f


def snapshot_times(f: h5py.File) -> np.ndarray:
    """Times (min) of the snapshots in an open run file, in snapshot order."""
    return np.asarray([f["snapshots"][k].attrs["time_min"] for k in sorted(f["snapshots"])], dtype=np.float64)
