"""Readouts computed from a run's time series (no file access, no plotting).

RECIST 1.1 conventions (REFERENCES.md): partial response (PR) at a summed diameter at most 30 % below
baseline; progressive disease (PD) at least 20 % above the nadir (smallest diameter so far, baseline
included) and, clinically, at least 5 mm above it; complete response (CR) when no lesion is left; stable
disease (SD) otherwise. A simulated lesion is usually far below 5 mm across, so the absolute PD floor is a
parameter that defaults to 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RECIST_PD_RISE", "RECIST_PR_DROP", "recist_categories", "recist_thresholds"]

RECIST_PR_DROP = 0.30
RECIST_PD_RISE = 0.20


def recist_thresholds(diameter_um, pd_min_increase_um: float = 0.0) -> dict[str, np.ndarray]:
    """Baseline, nadir and the PR/PD thresholds along a diameter time series.

    Parameters
    ----------
    diameter_um : array_like, shape (T,)
        Lesion (equivalent or summed) diameter in µm; the first value is the baseline.
    pd_min_increase_um : float
        Absolute rise over the nadir also required for PD (RECIST: 5000 µm); 0 disables it.

    Returns
    -------
    dict of str to ndarray, each of shape (T,)
        ``baseline``, ``nadir`` (running minimum before each time, baseline included), ``pr`` (PR at or
        below this) and ``pd`` (PD at or above this).
    """
    d = np.asarray(diameter_um, dtype=np.float64)
    baseline = np.full_like(d, d[0] if d.size else np.nan)
    nadir = np.minimum.accumulate(d) if d.size else d
    # The nadir a time point is compared against is the smallest diameter up to and including it.
    pd = np.maximum(nadir * (1.0 + RECIST_PD_RISE), nadir + pd_min_increase_um)
    return {"baseline": baseline, "nadir": nadir, "pr": baseline * (1.0 - RECIST_PR_DROP), "pd": pd}


def recist_categories(diameter_um, pd_min_increase_um: float = 0.0) -> np.ndarray:
    """RECIST category at each time point: ``"CR"``, ``"PR"``, ``"SD"`` or ``"PD"``.

    Parameters
    ----------
    diameter_um : array_like, shape (T,)
        Lesion diameter in µm; the first value is the baseline.
    pd_min_increase_um : float
        Absolute rise over the nadir also required for PD; 0 disables it.

    Returns
    -------
    ndarray of str, shape (T,)
    """
    d = np.asarray(diameter_um, dtype=np.float64)
    th = recist_thresholds(d, pd_min_increase_um)
    out = np.full(d.shape, "SD", dtype="<U2")
    out[d <= th["pr"]] = "PR"
    out[(d >= th["pd"]) & (d > th["nadir"])] = "PD"
    out[d <= 0] = "CR"
    return out
