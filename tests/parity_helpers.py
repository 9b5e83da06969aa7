"""Backend parity helpers: outcome samples over seeds, their two-sample comparison, and the layout of a run file.

The GPU tests compare CuPy against NumPy with these; the CPU tests check the helpers themselves, NumPy against
NumPy, so a GPU run only exercises code that has already run.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]

#: A small, fast immune scene for the stochastic parity test: a 2-D nodule with CD8 T cells seeded around it, so
#: that killing starts at once; half a day of 6-min steps (120 steps).
PARITY_OVERRIDES = [
    "grid.shape=[40, 40]", "time.duration_min=720.0", "initial.tumour.radius_um=250.0",
    "immune.initial_tcells=120",
]
PARITY_OUTCOMES = ("tumour_cells", "cd8_density_core", "kills")
PARITY_SEEDS = range(20)
P_MIN = 0.01  # two-sample test: reject equal distributions below this p-value
MEAN_REL = 0.05  # means must agree to 5 % of their size ...
MEAN_SE = 3.0  # ... or within 3 standard errors of the difference, where seed noise is larger than that


def parity_config(backend: str, seed: int):
    """configs/immune_inflamed.toml shrunk by PARITY_OVERRIDES, on ``backend`` with ``seed``."""
    from abm.config import load_config

    return load_config(REPO / "configs" / "immune_inflamed.toml",
                       [f'backend="{backend}"', f"seed={seed}", *PARITY_OVERRIDES])


def parity_outcomes(backend: str, seed: int) -> dict[str, float]:
    """Final tumour count, final CD8 core density (cells/mm²) and kills summed over the run, for one seed."""
    from abm.model import Simulation

    cfg = parity_config(backend, seed)
    sim = Simulation(cfg)
    kills = 0.0
    for _ in range(cfg.n_steps):
        sim.step()
        r = sim.readouts()
        kills += r["kills"]
    return {"tumour_cells": r["tumour_cells"], "cd8_density_core": r["cd8_density_core"], "kills": kills}


def parity_sample(backend: str, seeds=PARITY_SEEDS, workers: int = 1) -> dict[str, np.ndarray]:
    """PARITY_OUTCOMES over ``seeds``, one array per outcome, on ``workers`` processes.

    Worker processes are spawned, never forked, so that each opens its own CUDA context; several processes share
    one GPU well here because a small scene's step is bound by kernel launches, not by the device.
    """
    seeds = list(seeds)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(parity_outcomes, [backend] * len(seeds), seeds))
    else:
        rows = [parity_outcomes(backend, s) for s in seeds]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in PARITY_OUTCOMES}


def compare_samples(a: dict, b: dict, p_min: float = P_MIN, mean_rel: float = MEAN_REL,
                    mean_se: float = MEAN_SE) -> dict[str, dict]:
    """Compare two samples of each outcome: Kolmogorov-Smirnov two-sample test and the difference of means.

    An outcome agrees when the KS p-value is at least ``p_min`` and the means differ by at most ``mean_rel`` of
    their mean magnitude or by at most ``mean_se`` standard errors of the difference (Welch), whichever is
    larger. Returns, per outcome, the statistics and ``ok``.
    """
    out = {}
    for key in a:
        x, y = np.asarray(a[key], float), np.asarray(b[key], float)
        ks = stats.ks_2samp(x, y)
        diff = abs(x.mean() - y.mean())
        scale = max(abs(x.mean()), abs(y.mean()))
        se = float(np.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size))
        allowed = max(mean_rel * scale, mean_se * se)
        out[key] = {"ks_p": float(ks.pvalue), "mean_a": float(x.mean()), "mean_b": float(y.mean()),
                    "mean_diff": float(diff), "allowed": float(allowed), "se_diff": se,
                    "ok": bool(ks.pvalue >= p_min and diff <= allowed)}
    return out


def h5_layout(path) -> dict[str, tuple]:
    """Every group and dataset of a run file: ``{path: ("group", attr names)}`` or ``("dataset", dtype, shape,
    attr names)``.

    The first axis of an agent column (the number of agents, which differs from run to run) is left out of its
    shape; the root attributes' values (backend, wall time) are not compared, only their names.
    """
    layout = {}

    def visit(name, obj):
        attrs = tuple(sorted(obj.attrs))
        if isinstance(obj, h5py.Group):
            layout[name] = ("group", attrs)
            return
        shape = obj.shape[1:] if "/agents/" in f"/{name}" else obj.shape
        layout[name] = ("dataset", obj.dtype.str, tuple(shape), attrs)

    with h5py.File(path) as f:
        layout["/"] = ("group", tuple(sorted(f.attrs)))
        f.visititems(visit)
    return layout


def layout_differences(a: dict, b: dict) -> list[str]:
    """What differs between two :func:`h5_layout` results, one line per path."""
    lines = [f"{p}: only in the first file" for p in sorted(set(a) - set(b))]
    lines += [f"{p}: only in the second file" for p in sorted(set(b) - set(a))]
    lines += [f"{p}: {a[p]} != {b[p]}" for p in sorted(set(a) & set(b)) if a[p] != b[p]]
    return lines


def run_briefly(path, backend: str, out_dir, steps: int = 3):
    """Run the config at ``path`` for ``steps`` steps on ``backend`` into ``out_dir``; returns the run file."""
    from abm.config import load_config
    from abm.runner import run_simulation

    cfg = load_config(path, [f'backend="{backend}"', "output.summary_plot=false"])
    cfg = cfg.model_copy(update={"time": cfg.time.model_copy(update={"duration_min": steps * cfg.time.dt_min})})
    return run_simulation(cfg, out_dir, progress=False).h5_path


def run_configs() -> list[Path]:
    """The bundled run configs: configs/*.toml and configs/therapies/*.toml (sweeps and trials are not runs)."""
    return sorted((REPO / "configs").glob("*.toml")) + sorted((REPO / "configs" / "therapies").glob("*.toml"))
