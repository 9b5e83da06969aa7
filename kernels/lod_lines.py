"""The one-thread-per-line LOD solve: the compiled kernel of ``kernels/cuda/lod_lines.cu`` and its arguments.

On CuPy, :func:`kernels.diffusion.lod_diffuse` solves each axis with one launch of this kernel, one thread per
lattice line, instead of sweeping the lattice plane by plane. The kernel source is C99 that compiles both as
CUDA (NVRTC, through ``cupy.RawModule``) and as host C, so the same arithmetic can be checked on a CPU.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

__all__ = ["THREADS_PER_BLOCK", "cuda_launch", "kernel_name", "kernel_source", "line_count", "source_dir"]

THREADS_PER_BLOCK = 128
_HEADER = "lod_lines.cuh"
_ENTRY = "lod_lines.cu"
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def source_dir():
    """Directory of the kernel source files (a ``pathlib``-like traversable inside the installed package)."""
    return resources.files("kernels") / "cuda"


def kernel_source() -> str:
    """The kernel source as one text, the header inlined at each ``#include`` (NVRTC reads no files).

    Inlining also makes the text itself the whole input of the compilation, so CuPy's kernel cache, which is
    keyed on the source text, notices a change to the header.
    """
    folder = source_dir()
    entry = (folder / _ENTRY).read_text(encoding="utf-8")
    header = (folder / _HEADER).read_text(encoding="utf-8")
    include = f'#include "{_HEADER}"'
    if include not in entry:
        raise RuntimeError(f"{_ENTRY} no longer includes {_HEADER}; the kernel source cannot be assembled")
    return entry.replace(include, header)


def kernel_name(dtype) -> str:
    """Name of the entry point for fields of ``dtype`` (float32 or float64)."""
    try:
        return f"tme_lod_lines_{_SUFFIX[np.dtype(dtype)]}"
    except KeyError:
        raise ValueError(f"the line solve takes float32 or float64 fields, got {np.dtype(dtype)}") from None


def line_count(shape, axis: int) -> int:
    """Number of lattice lines along ``axis`` (one thread each)."""
    return int(np.prod(shape)) // int(shape[axis])


@functools.cache
def _cuda_module():
    """The kernel compiled once per process by NVRTC (CuPy also keeps it in its on-disk cache)."""
    import cupy

    return cupy.RawModule(code=kernel_source())


def cuda_launch(name: str, lines: int, args: tuple) -> None:
    """Launch the entry point ``name`` on the current CuPy stream with at least ``lines`` threads.

    Parameters
    ----------
    name : str
        Entry point, from :func:`kernel_name`.
    lines : int
        Number of lattice lines (threads).
    args : tuple
        Kernel arguments in the order of ``lod_lines.cu``: CuPy arrays or ``None`` (a null pointer) for the
        pointers, NumPy scalars of the field type for the reals and ``numpy.int64`` for the counts.
    """
    kernel = _cuda_module().get_function(name)
    blocks = (lines + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    kernel((blocks,), (THREADS_PER_BLOCK,), args)
