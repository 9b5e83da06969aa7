"""Plots of a run file, drawn headless (Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from abm.io.reader import open_h5

__all__ = ["plot_summary"]


def _timeseries(f) -> dict[str, np.ndarray]:
    return {name: ds[()] for name, ds in f["timeseries"].items()}


def plot_summary(h5_path, png_path) -> Path:
    """Write a PNG of tumour burden (cells, lesion diameter) and hypoxic fraction over time.

    Parameters
    ----------
    h5_path : path-like
        Run file.
    png_path : path-like
        Output image.

    Returns
    -------
    Path
        ``png_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open_h5(h5_path) as f:
        ts = _timeseries(f)
        name = Path(h5_path).parent.name
    t_days = ts["time_min"] / 1440.0
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    ax = axes[0]
    ax.plot(t_days, ts["tumour_cells"], color="tab:red", label="live tumour cells")
    if "necrotic_voxels" in ts:
        ax.plot(t_days, ts["necrotic_voxels"], color="0.4", label="necrotic voxels")
    ax.set_xlabel("time (days)")
    ax.set_ylabel("count")
    ax.set_title("Tumour burden")
    if "tumour_diameter_um" in ts:
        ax2 = ax.twinx()
        ax2.plot(t_days, ts["tumour_diameter_um"], color="tab:blue", ls="--", label="lesion diameter")
        ax2.set_ylabel("equivalent diameter (µm)", color="tab:blue")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
    else:
        ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    ax.plot(t_days, ts["hypoxic_fraction"], color="tab:purple")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time (days)")
    ax.set_ylabel("fraction of live tumour cells")
    ax.set_title("Hypoxic fraction")
    fig.suptitle(name)
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
