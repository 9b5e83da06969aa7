"""Movie export throughput (frames/s) and memory for a 256^2 2-D run and a 128^3 3-D run.

Synthetic run files are written straight through :class:`abm.io.RunWriter` (a growing tumour ball with a
necrotic core, random vessels and an oxygen field), so no simulation is needed. Each case is exported with the
default layers; the best of ``REPEATS`` is reported, with the peak Python-traced memory (NumPy buffers
included) at two run lengths to show that memory does not grow with the number of frames.

Usage: ``python benchmarks/movie.py`` from the repository root; writes ``benchmarks/results/movie.json``.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abm.io import RunWriter  # noqa: E402
from abm.movie import export_movie  # noqa: E402

# Sizes in one place: (label, grid shape, snapshots, export options)
CASES = [
    ("2d_256", (256, 256), 12, {}),
    ("3d_128_slice", (128, 128, 128), 8, {"view": "slice"}),
    ("3d_128_projection", (128, 128, 128), 8, {"view": "projection"}),
]
REPEATS = 3
SPACING_UM = 20.0


def synthetic_run(path: Path, shape, n_snapshots: int, seed: int = 0) -> Path:
    """Write a run file with ``n_snapshots`` snapshots of a growing tumour on ``shape``."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij", sparse=True)
    r = np.sqrt(sum(a.astype(np.float32) ** 2 for a in axes))
    vessels = rng.random(shape) < 0.02
    writer = RunWriter(path, 'name = "synthetic"\n', seed, "numpy", shape, SPACING_UM, overwrite=True,
                       readouts={"tumour_cells": ("cells", "count")}, field_units={"oxygen": "mmHg"})
    for k in range(n_snapshots):
        radius = 0.1 * min(shape) + 0.3 * min(shape) * k / max(n_snapshots - 1, 1)
        tumour = (r <= radius) & ~vessels
        necrotic = r <= 0.5 * radius
        oxygen = (38.0 * (1 - np.exp(-((r / radius) ** 2)))).astype(np.float32)
        voxels = np.flatnonzero(tumour & ~necrotic).astype(np.int64)
        writer.record({"time_min": 1440.0 * k, "tumour_cells": float(voxels.size)})
        writer.write_snapshot({
            "fields": {"oxygen": oxygen},
            "agents": {"tumour": {"voxel": voxels, "generation": np.zeros(voxels.size, np.int32),
                                  "quiescent": np.zeros(voxels.size, bool)}},
            "state": {"step": 240 * k, "time_min": 1440.0 * k, "tumour": {"necrotic": necrotic},
                      "vasculature": {"vessels": vessels}},
        })
    writer.close()
    return path


def export_timed(h5: Path, out: Path, options: dict) -> tuple[float, int]:
    """Export once; returns (seconds, frames)."""
    t0 = time.perf_counter()
    result = export_movie(h5, out, progress=False, **options)
    return time.perf_counter() - t0, result.frames


def export_peak_mib(h5: Path, out: Path, options: dict) -> float:
    """Peak Python-traced memory (MiB) of one export; traced separately because tracing slows the export."""
    tracemalloc.start()
    export_movie(h5, out, progress=False, **options)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> dict:
    report = {"benchmark": "movie_export", "python": platform.python_version(), "machine": platform.machine(),
              "processor": platform.processor(), "repeats": REPEATS, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, shape, n_snapshots, options in CASES:
            t0 = time.perf_counter()
            h5 = synthetic_run(tmp / f"{label}.h5", shape, n_snapshots)
            h5_long = synthetic_run(tmp / f"{label}_long.h5", shape, 2 * n_snapshots)
            setup_s = time.perf_counter() - t0
            best = min(export_timed(h5, tmp / f"{label}.mp4", options) for _ in range(REPEATS))
            peak = export_peak_mib(h5, tmp / f"{label}.mp4", options)
            peak_long = export_peak_mib(h5_long, tmp / f"{label}_long.mp4", options)
            report["cases"][label] = {
                "grid": list(shape), "frames": best[1], "setup_s": round(setup_s, 3),
                "export_s": round(best[0], 3), "frames_per_s": round(best[1] / best[0], 2),
                "peak_traced_mib": round(peak, 1), "peak_traced_mib_2x_frames": round(peak_long, 1),
                "file_mib": round(h5.stat().st_size / 2**20, 1), "options": options,
            }
            print(f"{label:>20}: {best[1] / best[0]:6.2f} frames/s ({best[1]} frames in {best[0]:.2f} s); "
                  f"peak {peak:.1f} MiB at {n_snapshots} frames, {peak_long:.1f} MiB at {2 * n_snapshots}")
    out = ROOT / "benchmarks" / "results" / "movie.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
