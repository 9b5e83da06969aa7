"""The figures of the GPU check: field solver, full model step, PhysiCell scene, step profile, memory; one JSON report.

    python benchmarks/gpu.py [--backend numpy|cupy] [--scale full|tiny] [--parts solver step physicell memory profile]
                             [--cupti-path DIR] [--out benchmarks/results/gpu-<backend>.json]

Parts (sizes are named once, in SIZES; ``--scale tiny`` shrinks every one of them to exercise the plumbing):

- ``solver``: one float32 oxygen field on a 256³ lattice (the problem of benchmarks/oxygen.py: tumour ball, 2 %
  vessel voxels, per-voxel sinks and sources), voxel-updates/s of the LOD step (after ``solver_warmup`` steps)
  and of the exact (multigrid-CG) step, cold (from 38 mmHg everywhere: the most iterations) and warm (after
  ``solver_warmup`` steps, near the fixed point: few or no iterations), best of the repeats, with iterations;
- ``step``: seconds per full model step of benchmarks/gpu_step_100.toml (100³ voxels, ~760k agents, 8 fields),
  set-up timed separately, after ``STEP_WARMUP`` steps;
- ``physicell``: simulated minutes per wall second of the 75³ PhysiCell scene, both oxygen solvers, through
  benchmarks/physicell.py, so CPU and GPU figures sit side by side;
- ``memory``: bytes per voxel (fields with their solver factors and scratch, layers, lattice indices) and per
  agent (each table's columns) of the step scene, counted from the arrays' ``nbytes`` (the same dtypes on both
  backends); the step's peak (CuPy: bytes the memory pool holds after the steps, an upper bound of the peak in
  use; NumPy: tracemalloc's peak during the steps); and whether a 256³ run with 10M agents fits in 80 GB;
- ``profile`` (CuPy only): kernel launches, host-device copies and synchronisations per step of the step scene,
  and the kernels that take the most device time, from CUPTI activity records (the ``cupti-python`` package; a
  ``--cupti-path`` folder is appended to ``sys.path`` to find it). Without CUPTI the part records why.

Each part's result carries ``status`` (``ok``, ``error`` with the message, or ``skipped``); the report is rewritten
after every part, so a part that is killed leaves the earlier ones on disk. The GPU is synchronised before every
timer read.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import traceback
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from abm.backend import get_backend, tune_host_allocator  # noqa: E402
from abm.config import load_config  # noqa: E402
from abm.model import Simulation  # noqa: E402
from benchmarks import oxygen, physicell  # noqa: E402
from kernels.diffusion import lod_diffuse, lod_factors, lod_scratch_size  # noqa: E402
from kernels.implicit import implicit_diffuse, implicit_factors, implicit_scratch_size  # noqa: E402

STEP_CONFIG = REPO / "benchmarks" / "gpu_step_100.toml"
PARTS = ("solver", "step", "physicell", "memory", "profile")
SIZES = {
    "full": {"solver_shape": (256, 256, 256), "solver_warmup": 3, "repeats": 3, "step_overrides": [],
             "step_steps": 10, "physicell_steps": 30, "physicell_repeats": 2, "profile_steps": 3,
             "memory_steps": 3},
    "tiny": {"solver_shape": (32, 32, 32), "solver_warmup": 1, "repeats": 1,
             "step_overrides": ["grid.shape=[24, 24, 24]", "initial.tumour.radius_um=200.0",
                                "immune.initial_tcells=500", "immune.caf.stroma_width_um=100.0"],
             "step_steps": 2, "physicell_steps": 1, "physicell_repeats": 1, "profile_steps": 1, "memory_steps": 1},
}
STEP_WARMUP = 2
#: The memory question: does a 256³ lattice with 10M agents fit on an 80 GB card (bytes, as the card is sold)?
TARGET = {"shape": (256, 256, 256), "agents": 10_000_000, "device_bytes": 80e9}


# ----------------------------------------------------------------------------------------------------------------
# Field solver
def bench_solver(backend, shape, warmup: int, repeats: int) -> dict:
    """Voxel-updates/s of the LOD and exact oxygen steps on ``shape`` (float32), warm-started."""
    xp, sync = backend.xp, backend.synchronize
    dtype = np.float32
    sink_h, source_h, _, _ = oxygen.oxygen_problem(shape)
    sink, source = xp.asarray(sink_h.astype(dtype)), xp.asarray(source_h.astype(dtype))
    del sink_h, source_h
    bounds = [(oxygen.FAR_FIELD_MMHG, oxygen.FAR_FIELD_MMHG)] * len(shape)
    common = (shape, oxygen.SPACING_UM, oxygen.DT_MIN, oxygen.DIFFUSIVITY, bounds, dtype, xp)
    size = int(np.prod(shape))
    out = {"shape": list(shape), "dtype": "float32"}

    factors = lod_factors(*common, decay_per_min=oxygen.DECAY)
    scratch = xp.empty(lod_scratch_size(shape), dtype=dtype)
    field = xp.full(shape, oxygen.FAR_FIELD_MMHG, dtype=dtype)
    for _ in range(warmup):
        lod_diffuse(field, factors, scratch, sink, source)
    seconds = oxygen._best(lambda: lod_diffuse(field, factors, scratch, sink, source), repeats, sync)
    out["lod"] = {"seconds_per_step": seconds, "voxel_updates_per_s": size / seconds}
    del factors, scratch

    factors = implicit_factors(*common, decay_per_min=oxygen.DECAY)
    scratch = xp.empty(implicit_scratch_size(shape), dtype=dtype)
    field = xp.empty(shape, dtype=dtype)
    infos = []

    def cold():
        field.fill(oxygen.FAR_FIELD_MMHG)  # a small share of the solve: one pass over the field
        infos.append(implicit_diffuse(field, factors, scratch, sink, source))

    seconds = oxygen._best(cold, repeats, sync)
    out["exact_cold"] = {"seconds_per_step": seconds, "voxel_updates_per_s": size / seconds,
                         "iterations": infos[-1].iterations, "residual": float(infos[-1].residual)}
    for _ in range(warmup):
        implicit_diffuse(field, factors, scratch, sink, source)
    infos.clear()
    seconds = oxygen._best(lambda: infos.append(implicit_diffuse(field, factors, scratch, sink, source)),
                           repeats, sync)
    out["exact_warm"] = {"seconds_per_step": seconds, "voxel_updates_per_s": size / seconds,
                         "iterations": infos[-1].iterations, "residual": float(infos[-1].residual)}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Full model step
def step_config(backend, overrides=()):
    """The step scene's config on ``backend``, with the scale's overrides."""
    return load_config(STEP_CONFIG, [f'backend="{backend.name}"', *overrides])


def agent_counts(sim) -> dict:
    """Live agents per table."""
    return {name: len(table) for name, table in sim.world.tables.items()}


def bench_step(backend, overrides, steps: int) -> dict:
    """Set-up time and seconds per step of the step scene over ``steps`` steps after ``STEP_WARMUP``."""
    cfg = step_config(backend, overrides)
    t = time.perf_counter()
    sim = Simulation(cfg, backend)
    backend.synchronize()
    setup = time.perf_counter() - t
    start = agent_counts(sim)
    for _ in range(STEP_WARMUP):
        sim.step()
    backend.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        sim.step()
    backend.synchronize()
    seconds = (time.perf_counter() - t) / steps
    end = agent_counts(sim)
    return {"grid": list(cfg.grid.shape), "fields": sorted(sim.world.fields), "n_fields": len(sim.world.fields),
            "agents_at_start": start, "agents_at_end": end, "total_agents_at_start": sum(start.values()),
            "setup_s": setup, "steps": steps, "seconds_per_step": seconds,
            "agent_updates_per_s": sum(end.values()) / seconds}


# ----------------------------------------------------------------------------------------------------------------
# PhysiCell scene
def bench_physicell(backend, steps: int, repeats: int) -> dict:
    """benchmarks/physicell.py's figures for both oxygen solvers."""
    runs = [physicell.bench(backend, solver, steps, repeats) for solver in ("exact", "lod")]
    return {"config": str(physicell.CONFIG.relative_to(REPO)), "steps": steps, "warmup": physicell.WARMUP,
            "physicell_sim_min_per_wall_s": physicell.PHYSICELL_SIM_MIN_PER_WALL_S, "runs": runs}


# ----------------------------------------------------------------------------------------------------------------
# Memory
def _arrays(obj, seen: set, skip: set):
    """Every NumPy/CuPy array reachable from ``obj`` through containers and the project's own objects."""
    if id(obj) in seen or id(obj) in skip:
        return
    seen.add(id(obj))
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype") and hasattr(obj, "shape"):
        yield obj
        return
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v, seen, skip)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            yield from _arrays(v, seen, skip)
    elif type(obj).__module__.split(".")[0] in ("abm", "kernels"):
        members = dict(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    members[name] = getattr(obj, name)
        for v in members.values():
            yield from _arrays(v, seen, skip)


def state_bytes(sim) -> dict:
    """Bytes of the simulation's arrays: lattice state per voxel and agent columns per agent.

    Lattice state is everything reachable from the world and the modules except the agent tables: fields with
    their solver factors, scratch and per-step sink/source buffers, layers, the tissue index, occupancy counts and
    scratch lattices (small index arrays, such as the vessel list, are counted with it).
    """
    world = sim.world
    tables = {id(t) for t in world.tables.values()}
    fields = {name: sum(int(a.nbytes) for a in _arrays(f, set(), set())) for name, f in world.fields.items()}
    lattice = sum(int(a.nbytes) for a in _arrays([world, sim.modules], set(), tables))
    per_table = {}
    for name, table in world.tables.items():
        row = sum(np.dtype(col.dtype).itemsize for col in table.schema.values())
        per_table[name] = {"rows": len(table), "bytes_per_agent": row,
                           "columns": {c: np.dtype(col.dtype).name for c, col in table.schema.items()}}
    rows = sum(t["rows"] for t in per_table.values())
    agent_bytes = sum(t["rows"] * t["bytes_per_agent"] for t in per_table.values())
    return {"voxels": world.size, "n_fields": len(world.fields), "lattice_bytes": lattice,
            "bytes_per_voxel": lattice / world.size,
            "field_bytes_per_voxel": {k: v / world.size for k, v in fields.items()},
            "agent_bytes": agent_bytes, "agents": rows,
            "bytes_per_agent": agent_bytes / rows if rows else 0.0, "tables": per_table}


def bench_memory(backend, overrides, steps: int) -> dict:
    """Persistent bytes per voxel and per agent of the step scene, the step's peak, and the 256³/10M estimate."""
    cfg = step_config(backend, overrides)
    xp = backend.xp
    pool = xp.get_default_memory_pool() if backend.name == "cupy" else None
    if pool is None:
        tracemalloc.start()
    else:
        gc.collect()
        pool.free_all_blocks()  # what earlier parts left cached in the pool is not this scene's
    sim = Simulation(cfg, backend)
    persistent = state_bytes(sim)
    if pool is not None:
        backend.synchronize()
        after_setup = pool.total_bytes()
    else:
        tracemalloc.reset_peak()
    for _ in range(steps):
        sim.step()
    backend.synchronize()
    after = state_bytes(sim)
    held = after["lattice_bytes"] + after["agent_bytes"]
    if pool is not None:
        peak = {"source": "cupy memory pool total_bytes after the steps (upper bound of the peak in use)",
                "pool_bytes_after_setup": after_setup, "peak_bytes": pool.total_bytes(),
                "used_bytes_after_steps": pool.used_bytes()}
    else:
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak = {"source": "tracemalloc peak during the steps (NumPy allocations)", "peak_bytes": top}
    peak["state_bytes_after_steps"] = held
    peak["peak_over_state"] = peak["peak_bytes"] / held
    return {"grid": list(cfg.grid.shape), "steps": steps, "state": persistent, "step_peak": peak,
            "estimate": estimate(persistent, peak["peak_over_state"])}


def estimate(state: dict, peak_over_state: float) -> dict:
    """Device bytes of the TARGET run from the measured per-voxel and per-agent bytes, and whether it fits."""
    voxels = int(np.prod(TARGET["shape"]))
    persistent = state["bytes_per_voxel"] * voxels + state["bytes_per_agent"] * TARGET["agents"]
    peak = persistent * max(1.0, peak_over_state)
    return {"shape": list(TARGET["shape"]), "agents": TARGET["agents"], "n_fields": state["n_fields"],
            "device_bytes": TARGET["device_bytes"], "persistent_bytes": persistent,
            "peak_bytes": peak, "peak_scaled_by": max(1.0, peak_over_state),
            "fits": bool(peak <= TARGET["device_bytes"]),
            "fits_persistent_only": bool(persistent <= TARGET["device_bytes"])}


# ----------------------------------------------------------------------------------------------------------------
# Profile
class CuptiTrace:
    """Kernel, memcpy, memset and synchronisation records of the CUPTI activity API, summarised as they arrive.

    Records are read inside the buffer-completed callback (their buffer is reused afterwards) and only counts,
    names and durations are kept.
    """

    KINDS = ("CONCURRENT_KERNEL", "MEMCPY", "MEMSET", "SYNCHRONIZATION")

    def __init__(self, cupti):
        self.cupti = cupti
        self.kernels: Counter = Counter()
        self.kernel_ns: Counter = Counter()
        self.copies: Counter = Counter()
        self.copy_bytes: Counter = Counter()
        self.syncs: Counter = Counter()
        self.memsets = 0

    def _completed(self, activities) -> None:
        c = self.cupti
        for a in activities:
            if a.kind == c.ActivityKind.CONCURRENT_KERNEL:
                self.kernels[a.name] += 1
                self.kernel_ns[a.name] += a.end - a.start
            elif a.kind == c.ActivityKind.MEMCPY:
                kind = c.ActivityMemcpyKind(a.copy_kind).name
                self.copies[kind] += 1
                self.copy_bytes[kind] += a.bytes
            elif a.kind == c.ActivityKind.MEMSET:
                self.memsets += 1
            elif a.kind == c.ActivityKind.SYNCHRONIZATION:
                self.syncs[c.ActivitySynchronizationType(a.type).name] += 1

    def __enter__(self):
        c = self.cupti
        for kind in self.KINDS:
            c.activity_enable(getattr(c.ActivityKind, kind))
        c.activity_register_callbacks(lambda: (8 << 20, 0), self._completed)
        return self

    def __exit__(self, *exc):
        c = self.cupti
        c.activity_flush_all(1)
        for kind in self.KINDS:
            c.activity_disable(getattr(c.ActivityKind, kind))
        return False


def bench_profile(backend, overrides, steps: int, cupti_path: str | None) -> dict:
    """Launches, copies and synchronisations per step of the step scene, and the top kernels by device time."""
    if backend.name != "cupy":
        return {"status": "skipped", "reason": "CUPTI counts CUDA work; the NumPy backend launches none"}
    if cupti_path:
        sys.path.append(cupti_path)  # after site-packages: never shadows what CuPy itself imports
    try:
        from cupti import cupti
    except Exception as exc:  # not installed, or its CUDA libraries do not load
        return {"status": "skipped", "reason": f"cupti-python is unavailable: {exc!r}"}
    sim = Simulation(step_config(backend, overrides), backend)
    for _ in range(STEP_WARMUP):
        sim.step()  # compiles and caches the kernels outside the trace
    backend.synchronize()
    with CuptiTrace(cupti) as trace:
        for _ in range(steps):
            sim.step()
        backend.synchronize()
    total_ns = sum(trace.kernel_ns.values())
    top = [{"kernel": name, "launches_per_step": trace.kernels[name] / steps, "device_ms_per_step": ns / steps / 1e6,
            "share": ns / total_ns if total_ns else 0.0} for name, ns in trace.kernel_ns.most_common(15)]
    d2h, h2d = trace.copies.get("DTOH", 0), trace.copies.get("HTOD", 0)
    return {"steps": steps, "kernel_launches_per_step": sum(trace.kernels.values()) / steps,
            "distinct_kernels": len(trace.kernels), "kernel_device_ms_per_step": total_ns / steps / 1e6,
            "copies_per_step": {k: v / steps for k, v in trace.copies.items()},
            "copy_bytes_per_step": {k: v / steps for k, v in trace.copy_bytes.items()},
            "memsets_per_step": trace.memsets / steps,
            "synchronizations_per_step": {k: v / steps for k, v in trace.syncs.items()},
            "host_syncs_per_step": (d2h + h2d + sum(trace.syncs.values())) / steps,
            "top_kernels": top}


# ----------------------------------------------------------------------------------------------------------------
def machine(backend) -> dict:
    """Where the figures were taken."""
    info = {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version,
            "numpy": np.__version__}
    if backend.name == "cupy":
        cp = backend.xp
        info["gpu"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        info["cupy"] = cp.__version__
        info["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
    return info


def run_part(name: str, fn) -> dict:
    """``fn()`` with its wall time and status; an exception becomes ``status = "error"`` with its message."""
    t = time.perf_counter()
    try:
        result = fn()
        result.setdefault("status", "ok")
    except Exception as exc:  # one failing part must not lose the others
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=8)}
    result["wall_s"] = time.perf_counter() - t
    print(f"{name}: {result['status']} in {result['wall_s']:.1f} s", flush=True)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--scale", default="full", choices=list(SIZES))
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--cupti-path", default=None, help="folder holding cupti-python, appended to sys.path")
    p.add_argument("--out", default=None, help="JSON report (default benchmarks/results/gpu-<backend>.json)")
    args = p.parse_args(argv)
    backend = get_backend(args.backend)
    sizes = SIZES[args.scale]
    out = Path(args.out or REPO / "benchmarks" / "results" / f"gpu-{backend.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "gpu", "backend": backend.name, "scale": args.scale,
              "allocator_tuned": tune_host_allocator(), "machine": machine(backend),
              "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
              "step_config": str(STEP_CONFIG.relative_to(REPO)), "parts": {}}
    overrides = sizes["step_overrides"]
    jobs = {
        "solver": lambda: bench_solver(backend, sizes["solver_shape"], sizes["solver_warmup"], sizes["repeats"]),
        "step": lambda: bench_step(backend, overrides, sizes["step_steps"]),
        "physicell": lambda: bench_physicell(backend, sizes["physicell_steps"], sizes["physicell_repeats"]),
        "memory": lambda: bench_memory(backend, overrides, sizes["memory_steps"]),
        "profile": lambda: bench_profile(backend, overrides, sizes["profile_steps"], args.cupti_path),
    }
    for name in args.parts:
        report["parts"][name] = run_part(name, jobs[name])
        out.write_text(json.dumps(report, indent=2))
    print(f"-> {out}")
    return report


if __name__ == "__main__":
    main()
