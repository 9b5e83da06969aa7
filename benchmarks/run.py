"""Throughput and memory benchmarks of the core engine, written as a JSON report.

    python benchmarks/run.py [--backend numpy|cupy] [--random auto|pcg64|philox] [--repeats 5]
                             [--out benchmarks/results/core.json]

Measures (sizes are named once, in SIZES):
- field solver voxel-updates/s (one LOD step = one update of every voxel) on 2-D 512² and 3-D 128³, float32,
  for uniform D without per-voxel sink (the precomputed-factor path), spatially varying D, and uniform D with a
  per-voxel sink (the path the oxygen field takes when cells consume it);
- full simulation steps/s of configs/quickstart.toml (set-up timed separately), with the chosen random generator;
- peak resident memory of the process, and field-solver bytes per voxel.
Each timing is the best of the repeats; the GPU is synchronised before every timer read.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from abm.backend import get_backend, tune_host_allocator  # noqa: E402
from abm.config import load_config  # noqa: E402
from abm.model import Simulation  # noqa: E402
from kernels.diffusion import lod_diffuse, lod_factors, lod_scratch_size  # noqa: E402

SIZES = {"solver_2d": (512, 512), "solver_3d": (128, 128, 128), "quickstart_steps": 200}


def _best(fn, repeats, sync):
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def bench_solver(backend, shape, repeats):
    xp = backend.xp
    rng = np.random.default_rng(0)
    out = {}
    field = xp.asarray(rng.random(shape, dtype=np.float32) * 38)
    scratch = xp.empty(lod_scratch_size(shape), dtype=np.float32)
    bcs = [(38.0, 38.0)] * len(shape)
    d_var = xp.asarray((1e5 * (0.2 + rng.random(shape))).astype(np.float32))
    sink = xp.asarray((10.0 * (rng.random(shape) < 0.3)).astype(np.float32))
    cases = {
        "uniform_D": (lod_factors(shape, 20.0, 6.0, 1e5, bcs, np.float32, xp, decay_per_min=0.1), None),
        "varying_D": (lod_factors(shape, 20.0, 6.0, d_var, bcs, np.float32, xp, decay_per_min=0.1), None),
        "uniform_D_with_sink": (lod_factors(shape, 20.0, 6.0, 1e5, bcs, np.float32, xp, decay_per_min=0.1), sink),
    }
    for name, (factors, s) in cases.items():
        t = _best(lambda f=factors, s=s: lod_diffuse(field, f, scratch, sink_per_min=s), repeats,
                  backend.synchronize)
        out[name] = {"seconds_per_step": t, "voxel_updates_per_s": field.size / t}
    out["bytes_per_voxel_field_and_scratch"] = (field.nbytes + scratch.nbytes) / field.size
    return out


def bench_quickstart(backend, steps, random):
    cfg = load_config(REPO / "configs/quickstart.toml", [f'backend="{backend.name}"', f'random="{random}"'])
    t = time.perf_counter()
    sim = Simulation(cfg, backend)
    backend.synchronize()
    setup = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        sim.step()
    backend.synchronize()
    run = time.perf_counter() - t
    return {"grid": cfg.grid.shape, "random": sim.world.generator, "steps": steps, "setup_s": setup,
            "steps_per_s": steps / run,
            "tumour_cells_at_end": len(sim.tumour), "full_run_steps": cfg.n_steps,
            "estimated_full_run_s": cfg.n_steps * run / steps}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--random", default="auto", choices=["auto", "pcg64", "philox"],
                   help="random generator of the quickstart run (auto: pcg64 on numpy, philox on cupy)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/core.json"))
    args = p.parse_args(argv)
    backend = get_backend(args.backend)
    report = {
        "backend": backend.name,
        "allocator_tuned": tune_host_allocator(),  # as the tme command does
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version},
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in SIZES.items()},
        "solver_2d": bench_solver(backend, SIZES["solver_2d"], args.repeats),
        "solver_3d": bench_solver(backend, SIZES["solver_3d"], args.repeats),
        "quickstart": bench_quickstart(backend, SIZES["quickstart_steps"], args.random),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if backend.name == "cupy":
        report["machine"]["gpu"] = backend.xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        report["gpu_peak_bytes"] = backend.xp.get_default_memory_pool().total_bytes()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for key in ("solver_2d", "solver_3d"):
        for case, r in report[key].items():
            if isinstance(r, dict):
                print(f"{key:10s} {case:22s} {r['voxel_updates_per_s']:.3g} voxel-updates/s")
    q = report["quickstart"]
    print(f"quickstart {q['steps_per_s']:.1f} steps/s, random {q['random']} "
          f"(full run ~{q['estimated_full_run_s']:.1f} s); peak RSS {report['peak_rss_mib']:.0f} MiB -> {out}")


if __name__ == "__main__":
    main()
