"""ABC-SMC calibration of two immune parameters against a synthetic observation, with pyABC.

A synthetic "patient" is simulated at known parameters (pre-existing priming 0.7, T-cell recruitment 1e-3 /min
per vessel voxel); pyABC (Schaelte 2022, Bioinformatics) then recovers them from three end-point readouts (tumour
cells, CD8 cells in the core, effector T cells after 3 days) by approximate Bayesian computation with
sequential Monte Carlo. Each model evaluation is one in-memory run of the cut-down quickstart scene through
abm.ensemble.simulate; pyABC's multicore sampler runs them in parallel. A few minutes on 2 cores.

    pip install 'tme-abm[examples]'
    python examples/pyabc_smc.py [--procs 2] [--population 16] [--generations 3]

Prints each generation's posterior mean and 90% interval next to the true values. The model is stochastic:
each evaluation draws a fresh seed, so the posterior accounts for seed-to-seed noise.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyabc

from abm.config import load_config
from abm.ensemble import simulate

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.toml"
SMALL = ["grid.shape=[32,32]", "time.dt_min=30.0", "time.duration_min=4320.0", "initial.tumour.radius_um=80.0",
         "output.summary_plot=false"]
OUTPUTS = ["tumour_cells", "cd8_core", "tcell_effector"]
TRUTH = {"priming": 0.7, "log10_recruitment": -3.0}
BASE = load_config(QUICKSTART, SMALL)


def to_config(p) -> dict:
    """PyABC's parameters as dotted config keys (recruitment is calibrated on a log10 scale, 1/min)."""
    return {"immune.priming_initial": float(p["priming"]),
            "immune.tcell.recruitment_per_min": float(10.0 ** p["log10_recruitment"])}


def model(p, seed: int | None = None) -> dict:
    """One run at parameters ``p``: the end-point readouts pyABC compares with the observation."""
    seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1) if seed is None else seed
    row = simulate(BASE, [to_config(p)], seeds=[seed], summaries=OUTPUTS, progress=False).iloc[0]
    if row["status"] != "done":
        raise RuntimeError(row["error"])
    return {name: float(row[name]) for name in OUTPUTS}


def main() -> None:
    """Simulate the observation, run ABC-SMC and print the posterior per generation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2, help="parallel model evaluations (default 2)")
    parser.add_argument("--population", type=int, default=16, help="particles per generation (default 16)")
    parser.add_argument("--generations", type=int, default=3, help="SMC generations (default 3)")
    args = parser.parse_args()

    observation = model(TRUTH, seed=1)
    print(f"observation at {TRUTH}: {observation}")
    prior = pyabc.Distribution(priming=pyabc.RV("uniform", 0.0, 1.0),
                               log10_recruitment=pyabc.RV("uniform", -3.7, 1.4))  # 2e-4 .. 5e-3 /min
    abc = pyabc.ABCSMC(model, prior, distance_function=pyabc.AdaptivePNormDistance(p=2),
                       population_size=args.population,
                       sampler=pyabc.sampler.MulticoreEvalParallelSampler(n_procs=args.procs))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        abc.new(f"sqlite:///{Path(tmp) / 'abc.db'}", observation)
        history = abc.run(max_nr_populations=args.generations)
        print(f"\n{history.total_nr_simulations} model runs in {time.perf_counter() - t0:.0f} s")
        for t in range(history.max_t + 1):
            frame, weights = history.get_distribution(m=0, t=t)
            parts = []
            for name, truth in TRUTH.items():
                values = frame[name].to_numpy()
                order = np.argsort(values)
                cdf = np.cumsum(weights[order]) / weights.sum()
                low, high = values[order][np.searchsorted(cdf, [0.05, 0.95])]
                mean = float(np.average(values, weights=weights))
                parts.append(f"{name} {mean:.2f} [{low:.2f}, {high:.2f}] (true {truth:g})")
            print(f"generation {t}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
