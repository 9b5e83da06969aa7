"""tme-abm: a lattice agent-based simulator of the tumour microenvironment.

The engine (:class:`abm.model.Simulation`) runs the same model on NumPy and CuPy arrays. Adapters at the edge
(the ``tme`` command line, the HDF5 writer) wrap it; the engine imports none of them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tme-abm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

FORMAT_NAME = "tme-abm"
FORMAT_VERSION = 2

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "__version__"]
