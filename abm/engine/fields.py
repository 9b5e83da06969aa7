"""Diffusing fields: thin stateful wrappers over the kernels in :mod:`kernels.diffusion`.

A :class:`DiffusingField` holds its concentration array, diffusion coefficient (uniform or per voxel), decay,
boundary conditions and the precomputed solver factors. Agents record their uptake and secretion into the
field's per-step buffers (``sink``, first order, 1/min; ``source``, zero order, unit/min);
:meth:`DiffusingField.advance` then solves diffusion, decay, sinks and sources together, implicitly.
"""

from __future__ import annotations

import numpy as np

from kernels.diffusion import lod_diffuse, lod_factors, lod_scratch_size
from kernels.implicit import implicit_diffuse, implicit_factors, implicit_scratch_size

__all__ = ["DiffusingField", "SolverError", "face_boundaries"]


class SolverError(RuntimeError):
    """An iterative field solve did not converge (a numerical failure, not a user error)."""

_AXES = "xyz"


def face_boundaries(ndim: int, default: str, value: float, faces: dict[str, str]) -> list[tuple]:
    """Per-axis ``(low, high)`` boundary pairs for the solver: ``None`` (no-flux) or the Dirichlet value."""
    out = []
    for axis in range(ndim):
        pair = []
        for side in ("low", "high"):
            kind = faces.get(f"{_AXES[axis]}_{side}", default)
            if kind not in ("dirichlet", "noflux"):
                raise ValueError(f"face {_AXES[axis]}_{side}: boundary '{kind}' is neither 'dirichlet' nor 'noflux'")
            pair.append(float(value) if kind == "dirichlet" else None)
        out.append(tuple(pair))
    return out


class DiffusingField:
    """One diffusing solute on the lattice.

    Parameters
    ----------
    name : str
        Field name, e.g. ``"oxygen"``; used as the HDF5 dataset name.
    unit : str
        Concentration unit, e.g. ``"mmHg"``.
    xp : module
        Array namespace.
    shape : tuple of int
        Lattice shape.
    spacing_um : float
        Voxel edge (µm).
    dt_min : float
        Time step (min).
    diffusivity : float or array
        Diffusion coefficient, µm²/min (array of ``shape`` for a spatially varying D).
    decay_per_min : float
        First-order background decay (1/min).
    boundaries : list of (low, high)
        Per-axis boundary conditions, see :func:`face_boundaries`.
    initial : float
        Initial concentration everywhere (field unit).
    dtype : str
        ``"float32"`` or ``"float64"``.
    substeps : int
        Solver steps per agent step; more sub-steps shrink the splitting error of the LOD scheme.
    solver : {"lod", "exact"}
        ``"lod"``: the operator-split implicit scheme of :mod:`kernels.diffusion`. ``"exact"``: the unsplit
        backward-Euler system of :mod:`kernels.implicit`, solved to ``tolerance`` (for fields whose per-voxel
        sinks make the splitting error large, such as oxygen).
    tolerance : float
        Relative residual at which the exact solve stops.
    absolute_tolerance : float
        Absolute floor of the exact solve's stopping rule (field unit); 0 for a purely relative rule.

    Attributes
    ----------
    last_iterations : int
        Iterations of the last exact solve (0 for the LOD solver).
    last_residual : float
        Relative residual of the last exact solve (0 for the LOD solver).
    """

    def __init__(self, name, unit, xp, shape, spacing_um, dt_min, diffusivity, decay_per_min, boundaries, initial,
                 dtype="float32", substeps=1, solver="lod", tolerance=1e-4, absolute_tolerance=0.0):
        if decay_per_min < 0:
            raise ValueError(f"field '{name}': decay_per_min must be >= 0, got {decay_per_min}")
        self.name, self.unit, self.xp = name, unit, xp
        self.shape = tuple(int(n) for n in shape)
        self.spacing_um, self.dt_min = float(spacing_um), float(dt_min)
        self.substeps = int(substeps)
        if solver not in ("lod", "exact"):
            raise ValueError(f"field '{name}': solver must be 'lod' or 'exact', got {solver!r}")
        self.solver, self.tolerance, self.absolute_tolerance = solver, float(tolerance), float(absolute_tolerance)
        self.last_iterations, self.last_residual = 0, 0.0
        self.decay_per_min = float(decay_per_min)
        self.boundaries = list(boundaries)
        self.dtype = np.dtype(dtype)
        self.data = xp.full(self.shape, initial, dtype=self.dtype)
        size = implicit_scratch_size(self.shape) if solver == "exact" else lod_scratch_size(self.shape)
        self._scratch = xp.empty(size, dtype=self.dtype)
        self.set_diffusivity(diffusivity)
        self._sink = xp.zeros(self.shape, dtype=self.dtype)  # 1/min, refilled each step
        self._sink_touched = False
        self.source = xp.zeros(self.shape, dtype=self.dtype)  # unit/min, refilled each step

    def set_diffusivity(self, diffusivity) -> None:
        """Set a new diffusion coefficient (µm²/min, scalar or per voxel) and rebuild the solver factors."""
        self.diffusivity = diffusivity
        build = implicit_factors if self.solver == "exact" else lod_factors
        self._factors = build(self.shape, self.spacing_um, self.dt_min / self.substeps, diffusivity,
                              self.boundaries, self.dtype, self.xp, decay_per_min=self.decay_per_min)

    @property
    def sink(self):
        """Per-voxel first-order sink of this step (1/min), for rules to add into.

        A field whose sink no rule touched in a step is solved without it: the per-voxel sink path of the solver
        (symmetrised over two sweep orders) costs about twice the plain one, and most fields have no sink.
        """
        self._sink_touched = True
        return self._sink

    @sink.setter
    def sink(self, values) -> None:  # ``field.sink += x`` writes back the same buffer
        self._sink_touched = True
        if values is not self._sink:
            self._sink[...] = values

    def secrete(self, voxels, amount) -> None:
        """Add ``amount`` (field unit/min) to this step's source at each of the flat ``voxels``.

        Repeated voxels accumulate. The cost follows the number of secreting cells, not the lattice size. The
        sum is reproducible on a GPU, whose scatter-add applies repeats in any order, as long as ``amount``
        is one scalar for all entries or the voxels are distinct (one cell per voxel of the tissue layer).
        """
        self.xp.add.at(self.source.reshape(-1), voxels,
                       amount.astype(self.dtype, copy=False) if hasattr(amount, "astype") else self.dtype.type(amount))

    def clear_sources(self) -> None:
        """Zero the per-step sink and source buffers before agents record into them."""
        if self._sink_touched:
            self._sink.fill(0)
            self._sink_touched = False
        self.source.fill(0)

    def advance(self) -> None:
        """Advance one step: diffusion, decay and the recorded sinks and sources, all implicit.

        With ``solver = "exact"`` the iterations and residual of the (last) solve are kept in
        :attr:`last_iterations` and :attr:`last_residual`; a solve that hits its iteration cap raises
        :class:`SolverError` rather than continue with an unconverged field.
        """
        sink = self._sink if self._sink_touched else None
        if self.solver == "lod":
            for _ in range(self.substeps):
                lod_diffuse(self.data, self._factors, self._scratch, sink_per_min=sink, source=self.source)
            return
        iterations = 0
        for _ in range(self.substeps):
            info = implicit_diffuse(self.data, self._factors, self._scratch, sink_per_min=sink, source=self.source,
                                    tolerance=self.tolerance, absolute_tolerance=self.absolute_tolerance)
            iterations += info.iterations
            if not info.converged:
                raise SolverError(f"field '{self.name}': the implicit solve did not reach tolerance {self.tolerance:g} "
                                  f"in {info.iterations} iterations (relative residual {info.residual:.3g})")
        self.last_iterations, self.last_residual = iterations, float(info.residual)
