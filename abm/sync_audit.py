"""Host-synchronisation audit: count, on NumPy, every operation that would make the host wait for a GPU.

On CuPy the host queues kernels and runs ahead of the device, until it needs a value the device has not yet
computed. It then waits (a *host sync*), and the device idles while the host catches up. A model step on the
GPU is fast only if it syncs a handful of times. CuPy syncs on:

- a device value turned into a Python one: ``float()``, ``int()``, ``bool()`` (an ``if`` on an array, ``xp.any``
  in a condition), ``operator.index`` (a device scalar as a size or slice bound), ``.item()``, ``.tolist()``,
  iteration over ``.tolist()``, printing;
- a copy to the host: ``cupy.asnumpy``, ``.get()``, ``np.asarray`` of a device array (CuPy refuses that one; here
  it is counted as ``to_host``);
- a result whose size depends on the data: ``nonzero``, ``flatnonzero``, ``argwhere``, ``where`` with one
  argument, ``unique`` and the set routines built on it, ``compress``, ``extract``, ``place``, ``putmask`` (a mask
  write inside), and boolean-mask indexing, read (``a[mask]``) or written (``a[mask] = v``): CuPy counts the
  mask's true entries on the host (``copyto(dst, src, where=mask)`` and ``where(mask, a, b)`` do not sync);
- ``bincount``, twice, whatever ``minlength``: CuPy checks for negative input and finds the maximum on the host
  (``cupy/_statistics/histogram.py``); a scatter-add (``xp.add.at``) into a zeroed array does not sync;
- ``histogram`` without ``range`` (the bin edges come from the data's minimum and maximum).

:func:`audit_backend` returns a :class:`abm.backend.Backend` whose namespace behaves like NumPy but whose arrays
are :class:`DeviceArray` wrappers that record each of these in a :class:`SyncLedger`, under the call site: the
innermost frame in ``abm/`` or ``kernels/``. Arithmetic, ufuncs, reductions to 0-d arrays, ``take``,
``where(c, a, b)``, scatter-adds and sorting record nothing, as on CuPy. Host-to-device copies (``xp.asarray`` of
host data) are counted apart as ``uploads``: they do not make the host wait for queued work.

The audit follows the code paths CuPy takes where the code branches on ``xp is np`` (the namespace is not
NumPy), and NumPy's where it branches on ``xp.__name__ == "cupy"`` (the raw CUDA kernels cannot run here). It
is a development tool: a step runs several times slower than on NumPy.
"""

from __future__ import annotations

import os
import sys
import types
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from abm.backend import Backend, StepRandom

__all__ = ["SYNC_FUNCTIONS", "AuditNamespace", "DeviceArray", "SyncLedger", "audit_backend"]

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SITE_ROOTS = tuple(os.path.join(_PACKAGE_ROOT, d) + os.sep for d in ("abm", "kernels"))
_THIS_FILE = os.path.abspath(__file__)

#: Array functions that sync on CuPy, and how many host waits each call makes.
SYNC_FUNCTIONS = {
    "nonzero": 1, "flatnonzero": 1, "argwhere": 1, "unique": 1, "union1d": 1, "intersect1d": 1,
    "setdiff1d": 1, "setxor1d": 1, "compress": 1, "extract": 1, "place": 1, "putmask": 1, "bincount": 2,
}
_SHAPED = ("zeros", "ones", "empty", "full", "eye", "identity", "arange", "linspace")
_UPLOADERS = ("asarray", "array", "ascontiguousarray", "asanyarray")


@dataclass
class SyncLedger:
    """Host syncs and uploads counted so far, by ``(kind, site)``.

    Attributes
    ----------
    syncs : Counter
        ``(kind, site) -> host waits``; ``site`` is ``"path:line (function)"`` relative to the package root.
    uploads : Counter
        ``site -> host-to-device copies``.
    """

    syncs: Counter = field(default_factory=Counter)
    uploads: Counter = field(default_factory=Counter)

    def record(self, kind: str, n: int = 1) -> None:
        """Count ``n`` host waits of ``kind`` at the caller's site."""
        self.syncs[kind, _call_site()] += n

    def record_upload(self) -> None:
        """Count one host-to-device copy at the caller's site."""
        self.uploads[_call_site()] += 1

    @property
    def total(self) -> int:
        """Host waits counted so far."""
        return sum(self.syncs.values())

    def reset(self) -> None:
        """Forget everything counted."""
        self.syncs.clear()
        self.uploads.clear()

    def by_kind(self) -> Counter:
        """Host waits per kind."""
        out: Counter = Counter()
        for (kind, _), n in self.syncs.items():
            out[kind] += n
        return out

    def by_site(self) -> Counter:
        """Host waits per ``(site, kind)``."""
        return Counter({(site, kind): n for (kind, site), n in self.syncs.items()})


def _call_site() -> str:
    """``"path:line (function)"`` of the innermost frame in ``abm/`` or ``kernels/`` outside this module."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path != _THIS_FILE and path.startswith(_SITE_ROOTS):
            rel = os.path.relpath(path, _PACKAGE_ROOT)
            return f"{rel}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "<outside the package>"


def _unwrap(x):
    """``x`` with every :class:`DeviceArray` (also inside tuples, lists and dicts) replaced by its NumPy array."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, tuple):
        return tuple(_unwrap(v) for v in x)
    if isinstance(x, list):
        return [_unwrap(v) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x, ns):
    """NumPy results as device values: arrays and NumPy scalars (CuPy's 0-d arrays) become :class:`DeviceArray`."""
    if isinstance(x, np.ndarray):
        return DeviceArray(x, ns)
    if isinstance(x, np.generic):
        return DeviceArray(np.asarray(x), ns)
    if isinstance(x, tuple):
        return tuple(_wrap(v, ns) for v in x)
    if isinstance(x, list):
        return [_wrap(v, ns) for v in x]
    return x


def _has_device(x) -> bool:
    if isinstance(x, DeviceArray):
        return True
    if isinstance(x, tuple | list):
        return any(_has_device(v) for v in x)
    return False


def _is_mask(key) -> bool:
    """Whether an (unwrapped) index holds a boolean array: a data-dependent result size."""
    if isinstance(key, tuple):
        return any(_is_mask(k) for k in key)
    return isinstance(key, np.ndarray) and key.dtype == bool and key.ndim > 0


def _syncs_of(name: str, args, kwargs) -> int:
    """Host waits CuPy makes in the array function ``name`` called with ``args`` and ``kwargs``."""
    n = SYNC_FUNCTIONS.get(name, 0)
    sizes = args if name in ("arange", "linspace") else args[:1] if name in _SHAPED else ()
    if name in _SHAPED and "shape" in kwargs:
        sizes = (kwargs["shape"],)
    n += sum(1 for s in sizes if _has_device(s))  # a device scalar as a size or bound: read on the host
    if name == "where" and len(args) + len(kwargs) == 1:
        n = 1
    elif name == "histogram" and kwargs.get("range") is None and (len(args) < 3 or args[2] is None):
        n = 1
    return n


class DeviceArray(NDArrayOperatorsMixin):
    """A NumPy array standing in for a CuPy one: what would sync on CuPy is recorded in the namespace's ledger.

    Operators, ufuncs (also ``ufunc.at`` and ``out=``), NumPy functions (``__array_function__``) and methods
    work as on the wrapped array and return :class:`DeviceArray` again; NumPy scalars come back as 0-d arrays,
    as CuPy returns them.
    """

    __slots__ = ("_a", "_ns")
    __array_priority__ = 1000

    def __init__(self, a: np.ndarray, ns: AuditNamespace):
        self._a = a
        self._ns = ns

    # Metadata: known on the host, no sync.
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)

    def __len__(self) -> int:
        return len(self._a)

    def __array_namespace__(self, api_version=None):
        return self._ns

    def _sync(self, kind: str, n: int = 1) -> None:
        self._ns.ledger.record(kind, n)

    # Conversions to the host: each one a sync.
    def __float__(self):
        self._sync("float")
        return float(self._a)

    def __int__(self):
        self._sync("int")
        return int(self._a)

    def __index__(self):
        self._sync("index")
        return self._a.__index__()

    def __bool__(self):
        self._sync("bool")
        return bool(self._a)

    def __complex__(self):
        self._sync("complex")
        return complex(self._a)

    def __array__(self, dtype=None, copy=None):
        self._sync("to_host")
        return self._a if dtype is None else self._a.astype(dtype, copy=False)

    def __repr__(self):
        self._sync("print")
        return f"DeviceArray({self._a!r})"

    def __str__(self):
        self._sync("print")
        return str(self._a)

    def __format__(self, spec):
        self._sync("print")
        return format(self._a, spec)

    def __contains__(self, value):
        self._sync("bool")
        return value in self._a

    def item(self, *args):
        """The element as a Python scalar (a sync)."""
        self._sync("item")
        return self._a.item(*args)

    def tolist(self):
        """The array as nested Python lists (a sync)."""
        self._sync("tolist")
        return self._a.tolist()

    def get(self):
        """A host copy, as CuPy's ``ndarray.get`` (a sync)."""
        self._sync("to_host")
        return self._a.copy()

    def nonzero(self):
        """Indices of the non-zero entries (a sync: the result size depends on the data)."""
        self._sync("nonzero")
        return _wrap(self._a.nonzero(), self._ns)

    def compress(self, condition, *args, **kwargs):
        """Entries where ``condition`` holds (a sync)."""
        self._sync("compress")
        return _wrap(self._a.compress(_unwrap(condition), *_unwrap(args), **_unwrap(kwargs)), self._ns)

    def __iter__(self):
        return (_wrap(row, self._ns) for row in self._a)

    # Indexing: a boolean mask makes the size data-dependent.
    def __getitem__(self, key):
        key = _unwrap(key)
        if _is_mask(key):
            self._sync("mask_getitem")
        return _wrap(self._a[key], self._ns)

    def __setitem__(self, key, value):
        key = _unwrap(key)
        if _is_mask(key):
            self._sync("mask_setitem")
        self._a[key] = _unwrap(value)

    def __getattr__(self, name):
        if name.startswith("__"):  # no buffer or array-interface protocol: a host view goes through __array__
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr, self._ns)
        ns = self._ns

        def method(*args, **kwargs):
            return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)), ns)

        return method

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result, self._ns)

    def __array_function__(self, func, types, args, kwargs):
        return self._ns._call(func.__name__, func, args, kwargs)


class AuditNamespace(types.ModuleType):
    """NumPy as a device namespace: functions take and return :class:`DeviceArray` and record syncs.

    Array types, dtypes, constants and ufuncs are NumPy's own (ufuncs dispatch to :class:`DeviceArray`).
    """

    def __init__(self, ledger: SyncLedger | None = None):
        super().__init__("sync_audit_numpy", "NumPy whose arrays count host syncs")
        self.ledger = ledger or SyncLedger()
        self.ndarray = DeviceArray
        self._functions: dict = {}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(np, name)
        if isinstance(attr, type | np.ufunc | types.ModuleType) or not callable(attr):
            return attr  # dtypes, ufuncs (dispatch through __array_ufunc__), submodules, constants
        fn = self._functions.get(name)
        if fn is None:
            def fn(*args, _f=attr, _name=name, **kwargs):
                return self._call(_name, _f, args, kwargs)

            fn.__name__ = name
            self._functions[name] = fn
        return fn

    def _call(self, name: str, func, args, kwargs):
        """Call the NumPy function ``func`` on unwrapped arguments, record its syncs, wrap the result."""
        n = _syncs_of(name, args, kwargs)
        if n:
            self.ledger.record("index" if name in _SHAPED else name, n)
        if name in _UPLOADERS and args and not _has_device(args[0]):
            self.ledger.record_upload()
        result = func(*_unwrap(args), **_unwrap(kwargs))
        if name == "count_nonzero" and isinstance(result, int):  # a 0-d array on CuPy
            result = np.int64(result)
        return _wrap(result, self)

    def device(self, host: np.ndarray) -> DeviceArray:
        """``host`` as if computed on the device (no upload recorded): for the audit's own random draws."""
        return DeviceArray(np.asarray(host), self)


class _AuditRandom(StepRandom):
    """The step's random stream drawn by NumPy and handed over as device arrays.

    Philox draws count as made on the device (as CuPy's CUDA kernel makes them); PCG64 draws as uploads (CuPy
    copies NumPy's numbers to the device).
    """

    def __init__(self, ns: AuditNamespace, seed: int, step: int, stream: int, generator: str):
        super().__init__(np, seed, step, stream, generator)
        self._ns = ns

    def _draw(self, normal: bool, shape, dtype):
        values = super()._draw(normal, shape, dtype)
        if self.generator == "pcg64":
            self._ns.ledger.record_upload()
        return self._ns.device(values)


@dataclass(frozen=True)
class AuditBackend(Backend):
    """A :class:`~abm.backend.Backend` on :class:`AuditNamespace`; host copies and ``synchronize`` are syncs."""

    @property
    def ledger(self) -> SyncLedger:
        """Where the syncs are counted."""
        return self.xp.ledger

    def to_host(self, a) -> np.ndarray:
        """A host copy (a sync for device input)."""
        if isinstance(a, DeviceArray):
            self.ledger.record("to_host")
            return a._a
        return np.asarray(a)

    def random(self, seed: int, step: int, stream: int = 0, generator: str = "pcg64") -> StepRandom:
        """The step's random stream, drawn on the host and handed over as device arrays."""
        return _AuditRandom(self.xp, seed, step, stream, generator)

    def synchronize(self) -> None:
        """An explicit wait for the device."""
        self.ledger.record("synchronize")


def audit_backend(ledger: SyncLedger | None = None) -> AuditBackend:
    """A backend that runs on NumPy and records what would sync on CuPy (its random choice ``auto`` is Philox)."""
    return AuditBackend("numpy", AuditNamespace(ledger))
