"""Oxygen where it matters: the quickstart's hypoxic readout against a direct steady-state solve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as spla

from abm.config import parse_config
from abm.model import Simulation

REPO = Path(__file__).resolve().parents[1]


def steady_oxygen(shape, dx, diffusivity, decay, sink, source, face_value):
    """Exact steady state of -div(D grad c) + (decay + sink) c = source, 38-mmHg-style Dirichlet faces.

    An assembly independent of the solver kernels: cell-centred grid, uniform ``D``, each Dirichlet face held
    at ``face_value`` half a voxel beyond the outermost centre (conductance ``2 D / dx**2``).
    """
    size = int(np.prod(shape))
    index = np.arange(size).reshape(shape)
    g = diffusivity / dx**2
    diag = np.full(size, decay) + sink.ravel()
    rhs = source.ravel().astype(np.float64).copy()
    rows, cols, vals = [], [], []
    for axis, n in enumerate(shape):
        lo = np.take(index, np.arange(n - 1), axis=axis).ravel()
        hi = np.take(index, np.arange(1, n), axis=axis).ravel()
        rows += [lo, hi]
        cols += [hi, lo]
        vals += [np.full(lo.size, -g), np.full(lo.size, -g)]
        np.add.at(diag, lo, g)
        np.add.at(diag, hi, g)
        for edge in (0, n - 1):
            face = np.take(index, edge, axis=axis).ravel()
            diag[face] += 2 * g
            rhs[face] += 2 * g * face_value
    rows.append(np.arange(size))
    cols.append(np.arange(size))
    vals.append(diag)
    matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(size, size))
    return spla.spsolve(matrix.tocsc(), rhs).reshape(shape)


def test_quickstart_hypoxic_fraction_matches_the_exact_steady_state_at_day_14():
    """The quickstart's tumour, vessels and oxygen (its immune layer and therapy left out, which leave O2 alone)."""
    import tomllib

    data = tomllib.loads((REPO / "configs" / "quickstart.toml").read_text(encoding="utf-8"))
    data.pop("therapy", None)
    data.update(backend="numpy", immune={"enabled": False}, grid={"shape": [100, 100], "spacing_um": 20.0})
    cfg = parse_config(data)
    sim = Simulation(cfg)
    for _ in range(cfg.n_steps):
        sim.step()
    readout = sim.readouts()
    assert readout["time_min"] == 14 * 1440 and readout["oxygen_solver_iterations"] < 20
    # Freeze the agents; solve the steady state of the same continuous problem directly.
    world, ox, p = sim.world, cfg.fields.oxygen, cfg.tumour
    tumour = np.asarray(world.tissue == world.code("tumour"))
    vessels = np.asarray(world.layers["vessels"])
    sink = p.oxygen_uptake_per_min * tumour + ox.vessel_supply_per_min * vessels
    source = ox.vessel_supply_per_min * ox.blood_mmHg * vessels
    exact = steady_oxygen(world.shape, world.spacing_um, ox.diffusivity_um2_per_min, ox.decay_per_min, sink,
                          source, ox.boundary.value)
    voxels = np.asarray(world.tables["tumour"]["voxel"])
    exact_fraction = float(np.mean(exact.reshape(-1)[voxels] < p.hypoxic_threshold_mmHg))
    assert 0.05 < exact_fraction < 0.95  # the nodule has a hypoxic core: the comparison means something
    assert abs(readout["hypoxic_fraction"] - exact_fraction) < 0.03, (readout["hypoxic_fraction"], exact_fraction)
    field = np.asarray(world.fields["oxygen"].data, dtype=np.float64)
    assert np.abs(field.reshape(-1)[voxels] - exact.reshape(-1)[voxels]).max() < 1.0
