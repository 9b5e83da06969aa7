"""Tables and the figure of a calibration: the posterior per parameter, per generation, against the prior."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from abm.calibration.spec import Calibration

__all__ = ["weighted_quantiles", "write_report"]


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, q) -> np.ndarray:
    """Quantiles ``q`` of a weighted sample (the inverse of its weighted empirical CDF, midpoint rule)."""
    order = np.argsort(values)
    v, w = np.asarray(values, float)[order], np.asarray(weights, float)[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(q, cdf, v)


def _natural(calibration: Calibration, frame):
    """The particles of pyABC (sampler scale) on the config scale."""
    out = frame.copy()
    for name, prior in calibration.spec.parameters.items():
        if prior.log_scale:
            out[name] = 10.0 ** out[name]
    return out


def write_report(calibration: Calibration, history, out_dir: Path):
    """Write ``posterior.csv``, ``posterior_summary.csv``, ``generations.csv`` and ``posterior.png``.

    Returns
    -------
    tuple of pandas.DataFrame
        The last generation's weighted particles (config scale), the per-parameter summary, the generations.
    """
    import pandas as pd

    spec = calibration.spec
    pops = history.get_all_populations()
    pops = pops[pops["t"] >= 0].reset_index(drop=True)
    generations = pd.DataFrame({"generation": pops["t"].astype(int), "epsilon": pops["epsilon"],
                                "members": pops["samples"].astype(int), "accepted": pops["particles"].astype(int)})
    generations["acceptance_rate"] = generations["accepted"] / generations["members"]
    generations.to_csv(out_dir / "generations.csv", index=False)
    if history.max_t < 0:
        return None, None, generations
    frame, weights = history.get_distribution(m=0, t=history.max_t)
    posterior = _natural(calibration, frame.reset_index(drop=True))
    posterior["weight"] = np.asarray(weights) / np.sum(weights)
    posterior.to_csv(out_dir / "posterior.csv", index=False)
    rows = []
    for name, prior in spec.parameters.items():
        v, w = posterior[name].to_numpy(), posterior["weight"].to_numpy()
        q05, q50, q95 = weighted_quantiles(v, w, [0.05, 0.5, 0.95])
        rows.append({"parameter": name, "key": prior.key, "prior": prior.prior,
                     "mean": float(np.average(v, weights=w)), "median": q50, "q05": q05, "q95": q95,
                     "truth": prior.truth})
    summary = pd.DataFrame(rows)
    summary.to_csv(out_dir / "posterior_summary.csv", index=False)
    _figure(calibration, history, out_dir / "posterior.png")
    return posterior, summary, generations


def _figure(calibration: Calibration, history, path: Path) -> None:
    """One panel per parameter: prior, weighted posterior of every generation and truth where known.

    Posteriors are weighted Gaussian KDEs (lighter = later), on the sampler's scale (log10 for log-scale priors).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    spec = calibration.spec
    names = list(spec.parameters)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    last = history.max_t
    for ax, name in zip(axes[0], names):
        prior = spec.parameters[name]
        rv_name, loc, scale = prior.scipy_rv()
        rv = getattr(stats, rv_name)(loc=loc, scale=scale)
        grid = np.linspace(rv.ppf(0.001), rv.ppf(0.999), 300)
        ax.fill_between(grid, rv.pdf(grid), color="0.85", label="prior")
        for t in range(last + 1):
            frame, w = history.get_distribution(m=0, t=t)
            x = frame[name].to_numpy()
            if np.ptp(x) > 0:
                density = stats.gaussian_kde(x, weights=w)(grid)
                ax.plot(grid, density, color=cmap(t / max(last, 1)), lw=1.0 + (t == last),
                        label=f"generation {t}" if t in (0, last) else None)
        if prior.truth is not None:
            truth = np.log10(prior.truth) if prior.log_scale else prior.truth
            ax.axvline(truth, color="crimson", ls="--", label="truth")
        ax.set_xlabel(f"log10 {prior.key}" if prior.log_scale else prior.key, fontsize=8)
        ax.set_title(name)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("posterior density")
    fig.suptitle(f"{spec.name}: ABC-SMC posterior ({history.total_nr_simulations} members)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
