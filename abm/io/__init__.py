"""Reading and writing runs (the HDF5 contract of docs/FORMAT.md)."""

from abm.io.reader import RunFileError, load_snapshot_state, open_h5
from abm.io.run import CELL_LAYERS, RunFile, open_run
from abm.io.writer import RunWriter, read_snapshot_state, snapshot_name

__all__ = [
    "CELL_LAYERS",
    "RunFile",
    "RunFileError",
    "RunWriter",
    "load_snapshot_state",
    "open_h5",
    "open_run",
    "read_snapshot_state",
    "snapshot_name",
]
