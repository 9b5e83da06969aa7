"""Readouts computed from a run's time series (no file access, no plotting).

RECIST 1.1 conventions (REFERENCES.md): partial response (PR) at a summed diameter at most 30 % below
baseline; progressive disease (PD) at least 20 % above the nadir (smallest diameter so far, baseline
included) and, clinically, at least 5 mm above it; complete response (CR) when no lesion is left; stable
disease (SD) otherwise. A simulated lesion is usually far below 5 mm across, so the absolute PD floor is a
parameter that defaults to 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RECIST_PD_RISE", "RECIST_PR_DROP", "exposure_ratio", "recist_categories", "recist_thresholds"]

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


def exposure_ratio(tumour_nM, plasma_mg_per_L, molecular_weight_kda: float, fraction_unbound: float = 1.0):
    """Tumour-to-plasma exposure of a drug so far: AUC over tumour cells / AUC of the unbound plasma level.

    Both AUCs are sums over equal steps of a run's time series (``tumour_<name>_nM`` and
    ``plasma_<name>_mg_per_L``), the measure a carrier's ``exposure_ratio_<payload>`` readout reports, so a free
    drug and the same drug carried can be compared (docs/THERAPIES.md section 8.6).

    Parameters
    ----------
    tumour_nM, plasma_mg_per_L : array_like, shape (T,)
        Mean drug over tumour cells (nM) and plasma concentration (mg/L) at each row.
    molecular_weight_kda : float
        Converts mg/L to nM (``10³/MW``).
    fraction_unbound : float
        Unbound fraction in plasma.

    Returns
    -------
    ndarray, shape (T,)
        Cumulative ratio (dimensionless); 0 while the plasma AUC is 0.
    """
    tumour = np.cumsum(np.asarray(tumour_nM, dtype=np.float64))
    plasma = np.cumsum(np.asarray(plasma_mg_per_L, dtype=np.float64)) * (1e3 / molecular_weight_kda * fraction_unbound)
    return np.divide(tumour, plasma, out=np.zeros_like(tumour), where=plasma > 0)
