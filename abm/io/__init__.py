"""Reading and writing runs (the HDF5 contract of docs/FORMAT.md)."""

from abm.io.reader import RunFileError, load_snapshot_state, open_h5
from abm.io.writer import RunWriter, read_snapshot_state, snapshot_name

__all__ = ["RunFileError", "RunWriter", "load_snapshot_state", "open_h5", "read_snapshot_state", "snapshot_name"]
