"""The array backend: NumPy or CuPy, and the few operations that differ between them.

Everything backend-specific lives here: choosing and importing the array module, the random stream, and
host transfers. Model code takes ``backend.xp`` and writes array code once. CuPy is imported only when it is
asked for (``"cupy"``) or probed (``"auto"``).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.random.bit_generator import ISeedSequence

__all__ = ["Backend", "BackendError", "StepRandom", "get_backend", "tune_host_allocator"]


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


def _cupy_with_device():
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(f"backend 'cupy' needs CuPy: pip install 'tme-abm[gpu]' ({exc})") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # the CUDA driver is missing or broken
        raise BackendError(f"backend 'cupy': CuPy finds no CUDA device ({exc})") from None
    if n < 1:
        raise BackendError("backend 'cupy': CuPy finds no CUDA device")
    return cupy


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def tune_host_allocator() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel (Linux/glibc only).

    A step allocates and frees many lattice-sized temporaries. Under glibc's defaults a large block is a fresh
    ``mmap`` (or the heap top is trimmed after a free), so every temporary pays page faults on first touch;
    on the 2-D agent benchmark that is about a sixth of the agent-rule time. Raising the mmap threshold to
    256 MiB and the trim threshold to 1 GiB lets the heap serve them again. Peak memory is unchanged; memory
    freed late in a run is returned at exit rather than at once. Process-wide, so entry points (the ``tme``
    command, the benchmarks) call it, not library code.

    Returns
    -------
    bool
        True if both settings were applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 256 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


class _StreamSeed(ISeedSequence):
    """The seed words of stream ``(seed, stream)``, hashed once by :class:`numpy.random.SeedSequence`."""

    __slots__ = ("_seq", "_words")

    def __init__(self, seed: int, stream: int):
        self._seq = np.random.SeedSequence(entropy=seed, spawn_key=(stream,))
        self._words = self._seq.generate_state(4, np.uint64)
        self._words.flags.writeable = False

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def of(seed: int, stream: int) -> _StreamSeed:
        return _StreamSeed(seed, stream)

    def generate_state(self, n_words, dtype=np.uint32):
        """The cached words when PCG64 asks for its four 64-bit words, otherwise the seed sequence's."""
        if n_words == 4 and np.dtype(dtype) == np.uint64:
            return self._words.copy()
        return self._seq.generate_state(n_words, dtype)


class StepRandom:
    """The random stream of one simulation step, derived from ``(seed, step)``.

    Deriving every step's stream from the root seed and the step number makes a restart from any snapshot
    continue bit-identically without storing generator state. ``stream`` separates independent uses (initial
    condition, each rule) so they never share numbers.

    On NumPy, ``(seed, stream)`` seeds a PCG64 generator through :class:`numpy.random.SeedSequence` and step
    ``s`` starts ``s * 2**64`` draws into its period (``PCG64.advance``), so steps never overlap. The seed words
    of ``(seed, stream)`` are hashed once per process; a step's generator then costs about 2 µs instead of the
    ~15 µs of a fresh seed sequence, which matters at a dozen rule streams per step. On CuPy, cuRAND's XORWOW is
    seeded from the seed sequence of ``(seed, stream, step)``.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``.
    seed : int
        Root seed of the run.
    step : int
        Step number (or another integer key), ``0 <= step < 2**64``.
    stream : int
        Purpose key: 0 for steps, 1 for the initial condition.
    """

    def __init__(self, xp, seed: int, step: int, stream: int = 0):
        self.xp = xp
        self._key = (int(seed), int(stream), int(step))
        self._generator = None  # built on the first draw: many rules of a step draw nothing

    @property
    def _gen(self):
        if self._generator is None:
            seed, stream, step = self._key
            if self.xp is np:
                bits = np.random.PCG64(_StreamSeed.of(seed, stream))
                bits.advance(step << 64)
                self._generator = np.random.Generator(bits)
            else:
                # CuPy's cuRAND generator is seeded from the seed sequence of (seed, stream, step).
                seq = np.random.SeedSequence(entropy=seed, spawn_key=(stream, step))
                self._generator = self.xp.random.Generator(self.xp.random.XORWOW(seq, size=self._CUPY_CHUNK))
        return self._generator

    # cuRAND XORWOW draws at most `size` numbers per call; larger requests are filled chunk by chunk.
    _CUPY_CHUNK = 1 << 20

    def _draw(self, method: str, shape, dtype):
        if self.xp is np:
            return getattr(self._gen, method)(shape, dtype=dtype)
        n = int(np.prod(shape))
        if n <= self._CUPY_CHUNK:
            return getattr(self._gen, method)(shape, dtype=dtype)
        out = self.xp.empty(n, dtype=dtype)
        for start in range(0, n, self._CUPY_CHUNK):
            stop = min(n, start + self._CUPY_CHUNK)
            out[start:stop] = getattr(self._gen, method)(stop - start, dtype=dtype)
        return out.reshape(shape)

    def random(self, shape, dtype=np.float64):
        """Uniform numbers in [0, 1) on the backend, of the given shape."""
        return self._draw("random", shape, dtype)

    def normal(self, shape, dtype=np.float64):
        """Standard normal numbers on the backend, of the given shape."""
        return self._draw("standard_normal", shape, dtype)


@dataclass(frozen=True)
class Backend:
    """An array backend.

    Attributes
    ----------
    name : str
        ``"numpy"`` or ``"cupy"``.
    xp : module
        The array module.
    """

    name: str
    xp: Any

    def to_host(self, a) -> np.ndarray:
        """Copy an array to a NumPy array on the host (no copy for NumPy input)."""
        if self.xp is np:
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def from_host(self, a, dtype=None):
        """Move a host array onto the backend."""
        return self.xp.asarray(a, dtype=dtype)

    def random(self, seed: int, step: int, stream: int = 0) -> StepRandom:
        """The random stream for ``(seed, step)``; see :class:`StepRandom`."""
        return StepRandom(self.xp, seed, step, stream)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on NumPy); call before reading a timer."""
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()


def get_backend(name: str) -> Backend:
    """Return the backend named ``"numpy"``, ``"cupy"`` or ``"auto"`` (CuPy if a CUDA device is found).

    Raises
    ------
    BackendError
        If ``"cupy"`` is asked for and CuPy or a device is missing.
    """
    if name == "numpy":
        return Backend("numpy", np)
    if name == "cupy":
        return Backend("cupy", _cupy_with_device())
    if name == "auto":
        try:
            return Backend("cupy", _cupy_with_device())
        except BackendError:
            return Backend("numpy", np)
    raise BackendError(f"unknown backend '{name}', expected numpy, cupy or auto")
