"""Oxygen step with strong per-voxel sinks: LOD (today's path) against the exact implicit solve, as a JSON report.

    python benchmarks/oxygen.py [--backend numpy|cupy] [--repeats 5] [--out benchmarks/results/oxygen.json]

Problem (sizes named once, in SIZES): a ball (3-D) or disc (2-D) of tumour uptake K = 10/min, random vessel
voxels outside it (K = 100/min, Q = 100 * 38 mmHg/min), D = 1e5 µm²/min, dx = 20 µm, dt = 6 min, lambda = 0.1/min,
38 mmHg Dirichlet faces, float32. For each solver:

- ``lod``: ``lod_diffuse`` with ``sink_per_min`` (the symmetrised LOD sink path), run to its fixed point;
- ``mg_cg``: ``implicit_diffuse`` (multigrid-preconditioned CG) at its default tolerance, warm-started: the
  first (cold) step from 38 mmHg everywhere, the steady regime after a few steps, and a growing regime in which
  0.5 % of the tumour's voxel count switches on at the rim each step;
- ``lod_gmres`` (NumPy only): GMRES preconditioned by one symmetrised LOD step (an approximate inverse; CG
  breaks down on it, see :func:`bench_lod_krylov`), cold step;
- ``pyamg_cg`` (NumPy only, skipped if PyAMG is absent): SciPy's CG preconditioned by PyAMG smoothed
  aggregation on the same sparse matrix (set-up per sink pattern timed separately).

The reference is the exact discrete steady state (the fixed point of the exact step map), solved to 1e-9 in
float64. Accuracy is reported over sink voxels (max and mean error) with the hypoxic fraction (tumour voxels
below 10 mmHg). Each timing is the best of the repeats; the GPU is synchronised before every timer read.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kernels.diffusion import lod_diffuse, lod_factors, lod_scratch_size  # noqa: E402
from kernels.implicit import (  # noqa: E402
    DEFAULT_TOLERANCE,
    implicit_diffuse,
    implicit_factors,
    implicit_matrix,
    implicit_scratch_size,
)

SIZES = {"oxygen_3d": (128, 128, 128), "oxygen_2d": (100, 100)}
TUMOUR_RADIUS = {2: 12, 3: 12}  # voxels (240 µm)
VESSEL_FRACTION = {2: 0.03, 3: 0.02}
SPACING_UM, DT_MIN, DIFFUSIVITY, DECAY, FAR_FIELD_MMHG = 20.0, 6.0, 1e5, 0.1, 38.0
UPTAKE, VESSEL_SUPPLY = 10.0, 100.0
HYPOXIC_MMHG = 10.0
STEPS_TO_STEADY = {"lod": 60, "mg_cg": 6}
GROWTH_PER_STEP = 0.005


def oxygen_problem(shape, seed=0):
    """Host float64 sink K (1/min), source Q (mmHg/min) and the tumour mask."""
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    tumour = radius <= TUMOUR_RADIUS[ndim]
    vessels = (rng.random(shape) < VESSEL_FRACTION[ndim]) & ~tumour
    sink = np.where(tumour, UPTAKE, 0.0) + np.where(vessels, VESSEL_SUPPLY, 0.0)
    source = np.where(vessels, VESSEL_SUPPLY * FAR_FIELD_MMHG, 0.0)
    return sink, source, tumour, radius


def _best(fn, repeats, sync):
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def accuracy(field, reference, sink, tumour):
    got = np.asarray(field, dtype=np.float64)
    err = np.abs(got - reference)[sink > 0]
    return {
        "max_error_mmHg": float(err.max()),
        "mean_error_mmHg": float(err.mean()),
        "hypoxic_fraction": float((got[tumour] < HYPOXIC_MMHG).mean()),
    }


def reference_solution(shape, sink, source):
    """Exact discrete steady state, float64 (host)."""
    factors = implicit_factors(shape, SPACING_UM, DT_MIN, DIFFUSIVITY, [(FAR_FIELD_MMHG,) * 2] * len(shape),
                               np.float64, np, decay_per_min=DECAY, steady=True)
    field = np.full(shape, FAR_FIELD_MMHG)
    info = implicit_diffuse(field, factors, sink_per_min=sink, source=source, tolerance=1e-9, max_iterations=500)
    assert info.converged, info
    return field


def bench_size(xp, sync, shape, repeats, to_host):
    dtype = np.float32
    sink_h, source_h, tumour, radius = oxygen_problem(shape)
    reference = reference_solution(shape, sink_h, source_h)
    sink, source = xp.asarray(sink_h.astype(dtype)), xp.asarray(source_h.astype(dtype))
    bounds = [(FAR_FIELD_MMHG, FAR_FIELD_MMHG)] * len(shape)
    size = int(np.prod(shape))
    out = {"shape": list(shape), "reference_hypoxic_fraction": float((reference[tumour] < HYPOXIC_MMHG).mean())}

    # LOD: today's sink path, run to its fixed point.
    t = time.perf_counter()
    lod = lod_factors(shape, SPACING_UM, DT_MIN, DIFFUSIVITY, bounds, dtype, xp, decay_per_min=DECAY)
    sync()
    setup = time.perf_counter() - t
    scratch = xp.empty(lod_scratch_size(shape), dtype=dtype)
    field = xp.full(shape, FAR_FIELD_MMHG, dtype=dtype)
    for _ in range(STEPS_TO_STEADY["lod"]):
        lod_diffuse(field, lod, scratch, sink, source)
    seconds = _best(lambda: lod_diffuse(field, lod, scratch, sink, source), repeats, sync)
    out["lod"] = {"setup_s": setup, "seconds_per_step": seconds, "voxel_updates_per_s": size / seconds,
                  **accuracy(to_host(field), reference, sink_h, tumour)}

    # Multigrid-preconditioned CG at the default tolerance.
    t = time.perf_counter()
    factors = implicit_factors(shape, SPACING_UM, DT_MIN, DIFFUSIVITY, bounds, dtype, xp, decay_per_min=DECAY)
    sync()
    setup = time.perf_counter() - t
    scratch = xp.empty(implicit_scratch_size(shape), dtype=dtype)
    field = xp.full(shape, FAR_FIELD_MMHG, dtype=dtype)
    sync()
    t = time.perf_counter()
    info = implicit_diffuse(field, factors, scratch, sink, source)
    sync()
    cold = {"seconds": time.perf_counter() - t, "iterations": info.iterations, "residual": info.residual}
    iterations = [info.iterations]
    for _ in range(STEPS_TO_STEADY["mg_cg"] - 1):
        iterations.append(implicit_diffuse(field, factors, scratch, sink, source).iterations)
    infos = []
    seconds = _best(lambda: infos.append(implicit_diffuse(field, factors, scratch, sink, source)), repeats, sync)
    steady = {"seconds_per_step": seconds, "voxel_updates_per_s": size / seconds,
              "iterations": infos[-1].iterations, "residual": infos[-1].residual,
              "iterations_first_steps": iterations, **accuracy(to_host(field), reference, sink_h, tumour)}
    # Growing regime: each step a few rim voxels start consuming (cell divisions), starting from the steady field.
    rng = np.random.default_rng(1)
    grow_sink = sink_h.copy()
    per_step = max(1, int(GROWTH_PER_STEP * tumour.sum()))
    grown, times = [], []
    for _ in range(repeats + 1):
        rim = np.flatnonzero((grow_sink == 0) & (radius <= TUMOUR_RADIUS[len(shape)] + 2))
        grow_sink.flat[rng.choice(rim, size=min(per_step, rim.size), replace=False)] = UPTAKE
        k = xp.asarray(grow_sink.astype(dtype))
        sync()
        t = time.perf_counter()
        grown.append(implicit_diffuse(field, factors, scratch, k, source).iterations)
        sync()
        times.append(time.perf_counter() - t)
    out["mg_cg"] = {"tolerance": DEFAULT_TOLERANCE, "setup_s": setup, "cold_step": cold, "steady": steady,
                    "growing": {"voxels_switched_per_step": per_step, "iterations": grown,
                                "median_seconds_per_step": float(np.median(times[1:])),
                                "voxel_updates_per_s": size / float(np.median(times[1:]))},
                    "scratch_elements_per_voxel": implicit_scratch_size(shape) / size}

    # Tolerance sweep (cold step: iterations, time and accuracy against the exact step from 38 mmHg).
    cold_exact = np.full(shape, FAR_FIELD_MMHG)
    exact_factors = implicit_factors(shape, SPACING_UM, DT_MIN, DIFFUSIVITY, bounds, np.float64, np,
                                     decay_per_min=DECAY)
    implicit_diffuse(cold_exact, exact_factors, sink_per_min=sink_h, source=source_h, tolerance=1e-10,
                     max_iterations=500)
    sweep = {}
    for tol in (1e-2, 3e-3, 1e-3, 1e-4):
        holder = {}

        def cold_step(tol=tol, holder=holder):
            holder["field"] = xp.full(shape, FAR_FIELD_MMHG, dtype=dtype)
            holder["info"] = implicit_diffuse(holder["field"], factors, scratch, sink, source, tolerance=tol)

        seconds = _best(cold_step, repeats, sync)
        err = np.abs(to_host(holder["field"]).astype(np.float64) - cold_exact)
        sweep[f"{tol:g}"] = {"iterations": holder["info"].iterations, "seconds": seconds,
                             "max_error_mmHg": float(err.max()), "max_error_sink_mmHg": float(err[sink_h > 0].max())}
    out["mg_cg"]["cold_step_tolerance_sweep"] = sweep

    if xp is np:
        out["lod_gmres"] = bench_lod_krylov(shape, factors, sink_h, source_h, cold_exact, repeats)
    if xp is np:
        out["pyamg_cg"] = bench_pyamg(shape, factors, sink_h, source_h, cold_exact, repeats)
    return out


def bench_lod_krylov(shape, factors, sink, source, cold_exact, repeats):
    """GMRES preconditioned by one symmetrised LOD step, float64 (the cold step from 38 mmHg).

    The symmetrised step ``(P + P^T) / 2`` (``P`` the product of the axis solves) is symmetric but, with a sink
    that varies from voxel to voxel, not positive definite: CG breaks down on it (``r . z < 0`` at the third
    iteration of the 2-D problem). GMRES accepts it.
    """
    import scipy.sparse.linalg as spla

    lod_zero = lod_factors(shape, SPACING_UM, DT_MIN, DIFFUSIVITY, [(0.0, 0.0)] * len(shape), np.float64, np,
                           decay_per_min=DECAY)
    scratch = np.empty(lod_scratch_size(shape))
    size = int(np.prod(shape))

    def lod_step(r):
        z = np.array(r, dtype=np.float64).reshape(shape)
        return lod_diffuse(z, lod_zero, scratch, sink).ravel()

    preconditioner = spla.LinearOperator((size, size), matvec=lod_step, dtype=np.float64)
    field = np.full(shape, FAR_FIELD_MMHG)
    matrix, rhs = implicit_matrix(field, factors, sink, source)
    result = {}
    for rtol in (1e-4,):
        counts = []

        def solve(rtol=rtol, counts=counts):
            counts.clear()
            x, _ = spla.gmres(matrix, rhs, x0=field.ravel(), rtol=rtol, restart=50, maxiter=2, M=preconditioner,
                              callback=lambda _: counts.append(1), callback_type="pr_norm")
            return x

        t = time.perf_counter()
        x = solve()  # capped at 100 iterations: one timing is enough
        result[f"rtol_{rtol:g}"] = {"iterations": len(counts), "seconds": time.perf_counter() - t,
                                    "max_error_mmHg": float(np.abs(x.reshape(shape) - cold_exact).max())}
    return result


def bench_pyamg(shape, factors, sink, source, cold_exact, repeats):
    """SciPy CG preconditioned by PyAMG smoothed aggregation, float64 (the cold step from 38 mmHg)."""
    try:
        import pyamg
    except ImportError:
        return {"skipped": "pyamg is not installed"}
    import scipy.sparse.linalg as spla

    field = np.full(shape, FAR_FIELD_MMHG)
    matrix, rhs = implicit_matrix(field, factors, sink, source)
    t = time.perf_counter()
    solver = pyamg.smoothed_aggregation_solver(matrix.tocsr())
    setup = time.perf_counter() - t
    preconditioner = solver.aspreconditioner(cycle="V")
    result = {"setup_s_per_sink_pattern": setup, "levels": len(solver.levels)}
    for rtol in (1e-4, 1e-6):
        counts = []

        def solve(rtol=rtol, counts=counts):
            counts.clear()
            x, _ = spla.cg(matrix, rhs, x0=field.ravel(), rtol=rtol, M=preconditioner,
                           callback=lambda _: counts.append(1))
            return x

        seconds = _best(solve, repeats, lambda: None)
        x = solve()
        result[f"rtol_{rtol:g}"] = {"iterations": len(counts), "seconds": seconds,
                                    "max_error_mmHg": float(np.abs(x.reshape(shape) - cold_exact).max())}
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--out", default=str(REPO / "benchmarks/results/oxygen.json"))
    args = p.parse_args(argv)
    if args.backend == "cupy":
        import cupy as xp

        def sync():
            xp.cuda.Device().synchronize()

        def to_host(a):
            return a.get()
    else:
        xp = np

        def sync():
            pass

        def to_host(a):
            return a
    report = {"backend": args.backend,
              "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version},
              "sizes": {k: list(SIZES[k]) for k in args.sizes}}
    if args.backend == "cupy":
        report["machine"]["gpu"] = xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    for key in args.sizes:
        report[key] = bench_size(xp, sync, SIZES[key], args.repeats, to_host)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for key in args.sizes:
        r = report[key]
        lod, mg = r["lod"], r["mg_cg"]
        print(f"{key}: reference hypoxic fraction {r['reference_hypoxic_fraction']:.3f}")
        print(f"  lod     {lod['voxel_updates_per_s']:.3g} voxel-updates/s ({lod['seconds_per_step'] * 1e3:.1f} ms); "
              f"max err {lod['max_error_mmHg']:.2f} mmHg, mean {lod['mean_error_mmHg']:.2f}, "
              f"hypoxic {lod['hypoxic_fraction']:.3f}")
        s, g = mg["steady"], mg["growing"]
        print(f"  mg_cg   steady {s['voxel_updates_per_s']:.3g} voxel-updates/s ({s['seconds_per_step'] * 1e3:.1f} ms, "
              f"{s['iterations']} it); growing {g['voxel_updates_per_s']:.3g} ({g['iterations']} it); "
              f"cold {mg['cold_step']['iterations']} it {mg['cold_step']['seconds'] * 1e3:.0f} ms; "
              f"max err {s['max_error_mmHg']:.3f} mmHg, hypoxic {s['hypoxic_fraction']:.3f}")
        for tol, v in mg["cold_step_tolerance_sweep"].items():
            print(f"    tol {tol:6s}: {v['iterations']:2d} it, {v['seconds'] * 1e3:7.1f} ms, "
                  f"max err {v['max_error_mmHg']:.3g} mmHg")
        for name in ("lod_gmres", "pyamg_cg"):
            if name in r:
                print(f"  {name:9s} {r[name]}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
