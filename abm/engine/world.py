"""The world: everything a step reads and writes, on one backend, with no biology in it.

A :class:`World` holds the geometry and stencils, the diffusing fields, the non-diffusing layers, the agent
tables, the occupancy indices derived from them, scratch lattices and the per-step random streams. Modules
create its contents through their declarations; rules receive it as their first argument.

Occupancy indices
-----------------
``tissue``
    uint8 lattice of tissue codes: 0 free, then one code per marking layer (necrotic, vessels) and per table
    on the exclusive tissue layer (tumour, CAF), in declaration order; see :meth:`World.code`.
``rows(table)``
    int32 lattice of the row of a tissue-layer table's agent in each voxel (-1 where none).
``counts(layer)``
    int32 flat lattice of the agents of a capacity layer (immune) per voxel.

All three are refreshed once, after the commit of each step (and after seeding or loading), so rules and
readouts always see the agents as they are.
"""

from __future__ import annotations

import zlib

import numpy as np

from kernels.lattice import Stencil, moore_offsets

__all__ = ["FREE", "World"]

FREE = 0


class World:
    """State of one simulation on one backend.

    Parameters
    ----------
    backend : abm.backend.Backend
        Array backend.
    shape : tuple of int
        Lattice shape (2 or 3 axes).
    spacing_um : float
        Voxel edge (µm).
    dt_min : float
        Time step (min).
    dtype : str
        Float dtype of fields and float layers.
    seed : int
        Root seed of the run's random streams.
    generator : {"pcg64", "philox"}
        Generator of the random streams (:class:`abm.backend.StepRandom`).
    """

    def __init__(self, backend, shape, spacing_um: float, dt_min: float, dtype: str, seed: int,
                 generator: str = "pcg64"):
        self.backend = backend
        self.generator = generator
        xp = self.xp = backend.xp
        self.shape = tuple(int(n) for n in shape)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))
        self.spacing_um = float(spacing_um)
        self.dt_min = float(dt_min)
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)
        self.step_index = 0
        moore = moore_offsets(self.ndim)
        self.moore = Stencil(self.shape, moore, xp)  # the 8 (26) neighbours
        self.moore_and_self = Stencil(self.shape, np.vstack([np.zeros((1, self.ndim), np.int64), moore]), xp)
        self.fields: dict = {}
        self.layers: dict = {}
        self.tables: dict = {}
        self.table_specs: dict = {}
        self.layer_specs: dict = {}
        self.field_specs: dict = {}
        self.capacity: dict[str, int] = {}  # capacity layer -> places per voxel
        self.death_codes: dict[str, dict[str, int]] = {}
        self.death_immunogenicity: dict[str, dict[int, float]] = {}  # table -> cause code -> weight, nonzero only
        self.indices: dict = {}  # derived index arrays published by their owner (e.g. "vessel_voxels")
        self.systemic: dict[str, float] = {}  # 0-d signals of the systemic phase (e.g. plasma occupancy), host floats
        self._factors: dict = {}
        self._codes: dict[str, int] = {}
        self.tissue = xp.zeros(self.shape, dtype=np.uint8)
        self._rows: dict = {}
        self._memo: dict = {}
        self._counts: dict = {}
        self._scratch: dict = {}

    # ------------------------------------------------------------------------------------------------------
    @property
    def time_min(self) -> float:
        """Simulated time (min)."""
        return self.step_index * self.dt_min

    def rng(self, purpose: str):
        """The random stream named ``purpose`` (``module/rule``) at the current step."""
        return self.backend.random(self.seed, self.step_index, zlib.crc32(purpose.encode()) + 2, self.generator)

    def initial_rng(self, purpose: str):
        """The random stream named ``purpose`` for seeding the initial condition (or a module added later)."""
        return self.backend.random(self.seed, self.step_index, zlib.crc32(f"seed/{purpose}".encode()) + 2,
                                   self.generator)

    # ------------------------------------------------------------------------------------------------------
    # Occupancy
    def add_tissue_code(self, name: str) -> int:
        """Give ``name`` (a marking layer or a tissue table) its code in the tissue index."""
        if name in self._codes:
            raise ValueError(f"tissue code '{name}' declared twice")
        self._codes[name] = len(self._codes) + 1
        return self._codes[name]

    def code(self, name: str) -> int:
        """Tissue code of a marking layer or tissue table (``FREE`` = 0 for a free voxel)."""
        return self._codes[name]

    def has(self, need: str) -> bool:
        """Whether a ``field:``, ``layer:`` or ``table:`` requirement is present."""
        kind, _, name = need.partition(":")
        store = {"field": self.fields, "layer": self.layers, "table": self.tables}.get(kind)
        if store is None:
            raise ValueError(f"requirement '{need}' is not field:, layer: or table:")
        return name in store

    def refresh_occupancy(self) -> None:
        """Rebuild the tissue index and the capacity counts from the layers and tables (once per step)."""
        xp, flat = self.xp, self.tissue.reshape(-1)
        self.tissue.fill(FREE)
        for name, spec in self.layer_specs.items():
            if spec.tissue_mark:
                # copyto: a mask write (or CuPy's putmask) counts the mask's entries on the host
                xp.copyto(self.tissue, np.uint8(self._codes[name]), where=self.layers[name])
        for name, spec in self.table_specs.items():
            if spec.layer == "tissue":
                flat[self.tables[name]["voxel"]] = self._codes[name]
        self._rows.clear()
        self._memo.clear()
        self._counts = {layer: self.count_layer(layer) for layer in self.capacity}

    def rows(self, table: str):
        """Row of ``table``'s agent in each voxel (int32 flat lattice, -1 where none); built on first use."""
        row = self._rows.get(table)
        if row is None:
            xp = self.xp
            row = xp.full(self.size, -1, dtype=np.int32)
            vox = self.tables[table]["voxel"]
            row[vox] = xp.arange(vox.shape[0], dtype=np.int32)
            self._rows[table] = row
        return row

    def memo(self, key, compute):
        """``compute()``, computed once between two refreshes of the occupancy indices.

        For derived lattices several modules read in one step, such as the lesion regions.
        """
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def counts(self, layer: str):
        """Agents of capacity layer ``layer`` per voxel (int32 flat lattice), as of the last refresh."""
        return self._counts[layer]

    def count_layer(self, layer: str):
        """Count the agents of capacity layer ``layer`` per voxel now (int32 flat lattice)."""
        xp = self.xp
        counts = xp.zeros(self.size, dtype=np.int32)
        for name, spec in self.table_specs.items():
            if spec.layer == layer:
                xp.add.at(counts, self.tables[name]["voxel"], np.int32(1))  # cheaper than bincount's int64
        return counts

    # ------------------------------------------------------------------------------------------------------
    # Factors: named read points other modules provide (e.g. vessel perfusion)
    def provide(self, name: str, fn) -> None:
        """Register ``fn(voxels) -> float64 array`` as the factor ``name``."""
        if name in self._factors:
            raise ValueError(f"factor '{name}' provided twice")
        self._factors[name] = fn

    def provides(self, name: str) -> bool:
        """Whether some module provides the factor ``name``."""
        return name in self._factors

    def factor(self, name: str, voxels):
        """The factor ``name`` at ``voxels`` (float64, shape ``(N,)``); 1 where no module provides it."""
        fn = self._factors.get(name)
        if fn is None:
            return self.xp.ones(voxels.shape[0], dtype=np.float64)
        return fn(voxels)

    # ------------------------------------------------------------------------------------------------------
    # Scratch sums
    def scratch_sum(self, flat, weights, query, dtype=np.int32):
        """Scatter-add integer ``weights`` at ``flat`` onto a persistent all-zero lattice and read it at ``query``.

        The touched entries are zeroed again, so the cost follows the number of entries, never the lattice
        size. Integer sums are exact, hence independent of the order in which a GPU's atomics apply them; sum
        real numbers as fixed-point integers (``dtype=np.int64``) to keep that property.
        """
        xp = self.xp
        dtype = np.dtype(dtype)
        if dtype not in self._scratch:
            self._scratch[dtype] = xp.zeros(self.size, dtype=dtype)
        grid = self._scratch[dtype]
        xp.add.at(grid, flat, weights)
        out = grid.take(query)
        grid[flat] = 0
        return out

    def multiplicity(self, voxels):
        """For each entry of ``voxels``, how many entries (itself included) name the same voxel (int32)."""
        return self.scratch_sum(voxels, np.int32(1), voxels)

    def voxel_centres_um(self):
        """Voxel-centre coordinates (µm), one lattice-shaped float64 array per axis."""
        xp = self.xp
        axes = [(xp.arange(n, dtype=np.float64) + 0.5) * self.spacing_um for n in self.shape]
        return xp.meshgrid(*axes, indexing="ij")
