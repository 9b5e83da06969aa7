"""Reading and writing runs (the HDF5 contract of docs/FORMAT.md).

Layers, bottom up: :mod:`abm.io.state` (snapshot state to and from HDF5 groups), :mod:`abm.io.reader` (opening a
file safely), :mod:`abm.io.run` (:class:`RunFile`, built on the two) and :mod:`abm.io.writer` (:class:`RunWriter`,
built on :mod:`abm.io.state`). No module imports one above it.
"""

from abm.io.reader import RunFileError, open_h5
from abm.io.run import CELL_LAYERS, RunFile, load_snapshot_state, open_run
from abm.io.state import read_snapshot_state
from abm.io.writer import READOUT_KINDS, RunWriteError, RunWriter, snapshot_name

__all__ = [
    "CELL_LAYERS",
    "READOUT_KINDS",
    "RunFile",
    "RunFileError",
    "RunWriteError",
    "RunWriter",
    "load_snapshot_state",
    "open_h5",
    "open_run",
    "read_snapshot_state",
    "snapshot_name",
]
