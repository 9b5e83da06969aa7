"""The array backend: NumPy or CuPy, and the few operations that differ between them.

Everything backend-specific lives here: choosing and importing the array module, the random stream (PCG64 or
the counter-based Philox of :mod:`kernels.philox`), and host transfers. Model code takes ``backend.xp`` and
writes array code once. CuPy is imported only when it is asked for (``"cupy"``) or probed (``"auto"``).
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from kernels import philox

__all__ = ["GENERATORS", "Backend", "BackendError", "StepRandom", "get_backend", "select_device", "tune_host_allocator"]


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

    @property
    def philox_key(self) -> np.ndarray:
        """The Philox key: the first two 64-bit words, as ``numpy.random.Philox`` takes from this sequence."""
        return self._words[:2]

    def generate_state(self, n_words, dtype=np.uint32):
        """The cached words when PCG64 asks for its four 64-bit words, otherwise the seed sequence's."""
        if n_words == 4 and np.dtype(dtype) == np.uint64:
            return self._words.copy()
        return self._seq.generate_state(n_words, dtype)


GENERATORS = ("pcg64", "philox")


class StepRandom:
    """The random stream of one simulation step, derived from ``(seed, step)``.

    Deriving every step's stream from the root seed and the step number makes a restart from any snapshot
    continue bit-identically without storing generator state. ``stream`` separates independent uses (initial
    condition, each rule) so they never share numbers. Two generators can produce the stream:

    ``"pcg64"``: ``(seed, stream)`` seeds a PCG64 generator through :class:`numpy.random.SeedSequence` and step
    ``s`` starts ``s * 2**64`` draws into its period (``PCG64.advance``), so steps never overlap. The seed words
    of ``(seed, stream)`` are hashed once per process; a step's generator then costs about 2 µs instead of the
    ~15 µs of a fresh seed sequence, which matters at a dozen rule streams per step. The numbers are drawn on the
    host (NumPy's uniforms and ziggurat normals); on CuPy they are copied to the device, so both backends draw
    the same numbers at the cost of a host-to-device copy per draw.

    ``"philox"``: Philox4x64-10 (:mod:`kernels.philox`), a counter-based generator with no state to build. The
    key is the first two 64-bit words of the seed sequence of ``(seed, stream)`` (the key
    ``numpy.random.Philox`` takes from that sequence); the ``c``-th draw of the step (``c`` from 0) has the
    counter ``(0, step, c, 0)``, word 0 first, and its ``b``-th block of four words the counter
    ``(b + 1, step, c, 0)``, NumPy's convention. On NumPy the words come from NumPy's C Philox, on CuPy from a
    CUDA kernel, and the same array code turns them into numbers: uniforms are bit-identical on both backends,
    normals (Box–Muller) agree to the last-place accuracy of ``log``, ``cos`` and ``sin``.

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
    generator : {"pcg64", "philox"}
        Which generator draws the numbers.
    """

    def __init__(self, xp, seed: int, step: int, stream: int = 0, generator: str = "pcg64"):
        if generator not in GENERATORS:
            raise ValueError(f"unknown random generator '{generator}', expected one of {', '.join(GENERATORS)}")
        self.xp = xp
        self.generator = generator
        self._key = (int(seed), int(stream), int(step))
        self._pcg64 = None  # built on the first draw: many rules of a step draw nothing
        self._draws = 0  # Philox draws made so far: the next draw's counter word 2

    def _host_pcg64(self) -> np.random.Generator:
        if self._pcg64 is None:
            seed, stream, step = self._key
            bits = np.random.PCG64(_StreamSeed.of(seed, stream))
            bits.advance(step << 64)
            self._pcg64 = np.random.Generator(bits)
        return self._pcg64

    def _philox_draw(self, normal: bool, shape, dtype):
        seed, stream, step = self._key
        key = _StreamSeed.of(seed, stream).philox_key
        counter = (0, step, self._draws, 0)
        self._draws += 1
        if self.xp is np and not normal:  # NumPy's C conversion is the one of philox.uniform (tested), in one pass
            return _host_philox(key, counter).random(shape, dtype=dtype)
        n = math.prod(shape) if isinstance(shape, tuple | list) else int(shape)
        words = philox.normal_words(n) if normal else philox.uniform_words(n, dtype)
        if self.xp is np:
            bits = _host_philox(key, counter).bit_generator.random_raw(words)
        else:
            bits = philox.philox_raw_cuda(key, counter, words)
        values = philox.standard_normal(bits, n, dtype) if normal else philox.uniform(bits, n, dtype)
        return values.reshape(shape)

    def _draw(self, normal: bool, shape, dtype):
        if self.generator == "philox":
            return self._philox_draw(normal, shape, dtype)
        gen = self._host_pcg64()
        values = gen.standard_normal(shape, dtype=dtype) if normal else gen.random(shape, dtype=dtype)
        return values if self.xp is np else self.xp.asarray(values)

    def random(self, shape, dtype=np.float64):
        """Uniform numbers in [0, 1) on the backend, of the given shape."""
        return self._draw(False, shape, dtype)

    def normal(self, shape, dtype=np.float64):
        """Standard normal numbers on the backend, of the given shape."""
        return self._draw(True, shape, dtype)


_HOST_PHILOX = threading.local()
_SPENT_BUFFER = np.zeros(4, dtype=np.uint64)


def _host_philox(key: np.ndarray, counter: tuple) -> np.random.Generator:
    """NumPy's C Philox set to ``key`` and ``counter``; one per thread, reused, as building one costs ~13 µs."""
    gen = getattr(_HOST_PHILOX, "generator", None)
    if gen is None:
        gen = _HOST_PHILOX.generator = np.random.Generator(np.random.Philox(0))
    gen.bit_generator.state = {
        "bit_generator": "Philox",
        "state": {"counter": np.array(counter, dtype=np.uint64), "key": key},
        "buffer": _SPENT_BUFFER,
        "buffer_pos": 4,  # the buffer is spent: the next word starts a new block
        "has_uint32": 0,
        "uinteger": 0,
    }
    return gen


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

    def random(self, seed: int, step: int, stream: int = 0, generator: str = "pcg64") -> StepRandom:
        """The random stream for ``(seed, step)``; see :class:`StepRandom`."""
        return StepRandom(self.xp, seed, step, stream, generator)

    def resolve_random(self, choice: str) -> str:
        """The generator of the config choice ``random``: ``"auto"`` is PCG64 on NumPy and Philox on CuPy."""
        if choice == "auto":
            return "pcg64" if self.xp is np else "philox"
        if choice not in GENERATORS:
            raise BackendError(f"unknown random generator '{choice}', expected auto, {' or '.join(GENERATORS)}")
        return choice

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on NumPy); call before reading a timer."""
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()

    def device_info(self) -> dict:
        """What runs the model, for the run log and the run file's root attributes.

        Empty on NumPy. On CuPy: ``gpu_index`` (the current device, as CUDA numbers the visible ones),
        ``gpu_name``, ``gpu_memory_bytes``, ``gpu_compute_capability``, ``cuda_driver_version`` and
        ``cuda_runtime_version`` (CUDA's integers, e.g. 12040 for 12.4) and ``cupy_version``.
        """
        if self.xp is np:
            return {}
        cupy = self.xp
        index = int(cupy.cuda.runtime.getDevice())
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props.get("name", b"")
        return {
            "gpu_index": index,
            "gpu_name": name.decode(errors="replace") if isinstance(name, bytes) else str(name),
            "gpu_memory_bytes": int(props.get("totalGlobalMem", 0)),
            "gpu_compute_capability": f"{props.get('major', '?')}.{props.get('minor', '?')}",
            "cuda_driver_version": int(cupy.cuda.runtime.driverGetVersion()),
            "cuda_runtime_version": int(cupy.cuda.runtime.runtimeGetVersion()),
            "cupy_version": str(cupy.__version__),
        }


def select_device(index: int) -> None:
    """Make GPU ``index`` (among the devices CUDA sees) the current device of this process (``tme run --device``).

    Raises
    ------
    BackendError
        Without CuPy or a device, or if ``index`` is not one of the devices found.
    """
    try:
        cupy = _cupy_with_device()
    except BackendError as exc:
        raise BackendError(f"--device {index}: {exc}") from None
    n = int(cupy.cuda.runtime.getDeviceCount())
    if not 0 <= index < n:
        raise BackendError(f"--device {index}: CuPy finds {n} CUDA device(s), numbered 0 to {n - 1}")
    cupy.cuda.Device(index).use()


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
