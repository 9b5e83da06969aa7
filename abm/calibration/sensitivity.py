"""Global sensitivity of a calibration's targets to its free parameters: Sobol indices with SALib.

The calibration file gives both sides: its parameters (their priors are the input distributions, sampled on
the sampler scale, log10 for log-scale priors) and its targets (the outputs: each target's readout at its time).
Saltelli's extension of the Sobol sequence (SALib; Saltelli 2010 Comput Phys Commun 181:259) makes
``N (D + 2)`` members for D parameters (first and total order only); they run through
:func:`abm.ensemble.simulate` on the calibration's executor; first-order (S1) and total (ST) indices with
bootstrap 95 % intervals are written per output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abm.calibration.engine import TargetSummary, member_seed
from abm.calibration.spec import Calibration
from abm.cohort.executors import ExecutorSpec

__all__ = ["SensitivityResult", "run_sensitivity"]


@dataclass
class SensitivityResult:
    """Sobol indices per (output, parameter), the members' table, and the wall time (s)."""

    indices: Any
    members: Any
    wall_s: float


def problem_of(calibration: Calibration) -> dict:
    """The SALib problem of a calibration's parameters on the sampler scale."""
    spec = calibration.spec
    bounds, dists = [], []
    for prior in spec.parameters.values():
        rv, loc, scale = prior.scipy_rv()
        if rv == "uniform":
            bounds.append([loc, loc + scale])
            dists.append("unif")
        else:
            bounds.append([loc, scale])  # SALib's 'norm': [mean, sd]
            dists.append("norm")
    return {"num_vars": len(bounds), "names": list(spec.parameters), "bounds": bounds, "dists": dists}


def run_sensitivity(calibration: Calibration, out_dir, n_base: int = 16, executor: ExecutorSpec | None = None,
                    progress: bool = True) -> SensitivityResult:
    """Sobol indices of every target to every parameter; writes ``sobol.csv``, ``members.csv``, ``sobol.png``.

    Parameters
    ----------
    n_base : int
        Base sample size N (a power of 2); ``N (D + 2)`` members are run.
    """
    import pandas as pd
    from SALib.analyze import sobol as sobol_analyze
    from SALib.sample import sobol as sobol_sample

    from abm.ensemble import simulate

    spec = calibration.spec
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problem = problem_of(calibration)
    x = sobol_sample.sample(problem, n_base, calc_second_order=False, seed=spec.seed)
    priors = list(spec.parameters.values())
    values = [{name: p.to_value(v) for (name, p), v in zip(spec.parameters.items(), row)} for row in x]
    params = [{spec.parameters[name].key: v for name, v in row.items()} for row in values]
    seeds = [member_seed(spec.seed, row) for row in values]
    targets = {name: (t.readout, None if t.at_day is None else t.at_day * 1440.0) for name, t in spec.targets.items()}
    t0 = time.perf_counter()
    frame = simulate(calibration.base, params, seeds=seeds, summaries=TargetSummary(targets),
                     executor=executor or spec.executor.spec(), progress=progress)
    frame.insert(0, "member", np.arange(len(frame)))
    frame.to_csv(out_dir / "members.csv", index=False)
    rows = []
    for name in targets:
        y = frame[name].to_numpy(dtype=float)
        ok = np.isfinite(y)
        if not ok.all():  # a failed member: its value is replaced by the mean, and the count reported
            y = np.where(ok, y, np.nanmean(y))
        result = sobol_analyze.analyze(problem, y, calc_second_order=False, seed=spec.seed)
        for j, (pname, prior) in enumerate(zip(problem["names"], priors)):
            rows.append({"output": name, "parameter": pname, "key": prior.key, "S1": result["S1"][j],
                         "S1_conf": result["S1_conf"][j], "ST": result["ST"][j], "ST_conf": result["ST_conf"][j],
                         "failed_members": int((~ok).sum())})
    indices = pd.DataFrame(rows)
    indices.to_csv(out_dir / "sobol.csv", index=False)
    _figure(indices, out_dir / "sobol.png", f"{spec.name}: Sobol indices ({len(frame)} members)")
    return SensitivityResult(indices=indices, members=frame, wall_s=time.perf_counter() - t0)


def _figure(indices, path: Path, title: str) -> None:
    """One panel per output: S1 and ST per parameter with their 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs = list(dict.fromkeys(indices["output"]))
    fig, axes = plt.subplots(1, len(outputs), figsize=(3.8 * len(outputs), 3.2), squeeze=False, sharey=True)
    for ax, output in zip(axes[0], outputs):
        part = indices[indices["output"] == output]
        pos = np.arange(len(part))
        ax.bar(pos - 0.18, part["S1"], 0.36, yerr=part["S1_conf"], label="first order S1", color="tab:blue")
        ax.bar(pos + 0.18, part["ST"], 0.36, yerr=part["ST_conf"], label="total ST", color="tab:orange")
        ax.set_xticks(pos, part["parameter"], rotation=20)
        ax.set_title(output, fontsize=9)
        ax.axhline(0, color="0.5", lw=0.5)
    axes[0][0].set_ylabel("Sobol index")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
