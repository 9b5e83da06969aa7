"""Readouts computed from a run's time series (no file access, no plotting).

RECIST 1.1 conventions (REFERENCES.md): partial response (PR) at a summed diameter at most 30 % below
baseline; progressive disease (PD) at least 20 % above the nadir (smallest diameter so far, baseline
included) and, clinically, at least 5 mm above it; complete response (CR) when no lesion is left; stable
disease (SD) otherwise. A simulated lesion is usually far below 5 mm across, so the absolute PD floor is a
parameter that defaults to 0. The best overall response of one lesion (:func:`best_response`) and the time of
its first progression (:func:`first_progression_min`) are read from the same categories, so ``tme compare`` and
``tme trial`` classify a diameter curve alike.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RECIST_PD_RISE", "RECIST_PR_DROP", "RECIST_SD_MIN_DAYS", "best_response", "exposure_ratio",
           "first_progression_min", "recist_categories", "recist_thresholds"]

RECIST_PR_DROP = 0.30
RECIST_PD_RISE = 0.20

#: Minimum time (days) from the baseline without progression for SD to be the best response. RECIST 1.1 leaves
#: it to the protocol, "in general not less than 6-8 weeks" (Eisenhauer et al. 2009, Eur J Cancer 45:228);
#: this is the lower end.
RECIST_SD_MIN_DAYS = 42.0

_TIME_TOL_MIN = 1e-6
_RESPONSE_RANK = {"CR": 0, "PR": 1, "SD": 2, "PD": 3}


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


def _categories(diameter_um, tumour_cells, pd_min_increase_um: float):
    """Finite time points of a diameter series and their categories; ``None`` without a positive baseline."""
    d = np.asarray(diameter_um, dtype=np.float64)
    keep = np.isfinite(d)
    if not d.size or not keep[0] or d[0] <= 0:
        return None
    categories = recist_categories(d[keep], pd_min_increase_um)
    if tumour_cells is not None:
        cells = np.asarray(tumour_cells, dtype=np.float64)
        categories[np.nan_to_num(cells[keep], nan=1.0) <= 0] = "CR"
    return keep, categories


def best_response(time_min, diameter_um, tumour_cells=None, sd_min_days: float = RECIST_SD_MIN_DAYS,
                  pd_min_increase_um: float = 0.0) -> str:
    """Best overall response by RECIST 1.1 on one lesion's diameter, the first value being the baseline.

    Each time point after the baseline is CR (no tumour cells, or no lesion), PR (at most 30 % below the
    baseline), PD (at least 20 % above the nadir) or SD (:func:`recist_categories`). The best response is the
    best one recorded up to and including the first PD; no confirmation of CR or PR is asked. SD is the best
    response only where the lesion has not progressed within ``sd_min_days`` of the baseline (RECIST's minimum
    interval for SD); a run that progresses sooner is PD, and one that ends without progressing is SD however
    short it is. Without this rule the first recorded step after the baseline, minutes later, would make almost
    every growing tumour SD.

    Parameters
    ----------
    time_min : array_like, shape (T,)
        Times (min) of the values, the baseline first.
    diameter_um : array_like, shape (T,)
        Lesion diameter (µm) at the baseline and each later time point.
    tumour_cells : array_like, shape (T,), optional
        Live tumour cells at the same times.
    sd_min_days : float
        Minimum time (days) from the baseline without progression for SD to count.
    pd_min_increase_um : float
        Absolute rise over the nadir also required for PD (RECIST: 5000 µm); 0 disables it.

    Returns
    -------
    str
        ``"CR"``, ``"PR"``, ``"SD"`` or ``"PD"``; ``"NE"`` (not evaluable) without a finite, positive baseline
        or a time point after it.
    """
    found = _categories(diameter_um, tumour_cells, pd_min_increase_um)
    if found is None:
        return "NE"
    keep, categories = found
    t = np.asarray(time_min, dtype=np.float64)[keep]
    after = categories[1:]
    if not after.size:
        return "NE"
    progressed = np.nonzero(after == "PD")[0]
    if progressed.size:
        after = after[: progressed[0] + 1]
    best = min(after.tolist(), key=_RESPONSE_RANK.__getitem__)
    if best == "SD" and progressed.size and t[1 + progressed[0]] - t[0] < sd_min_days * 1440.0 - _TIME_TOL_MIN:
        return "PD"
    return best


def first_progression_min(time_min, diameter_um, tumour_cells=None, pd_min_increase_um: float = 0.0) -> float | None:
    """Time (min) of the first time point after the baseline classified PD (:func:`recist_categories`).

    A lesion that shrank to nothing (CR) and regrows is PD once it is 20 % over its nadir, as RECIST has it; a
    CR time point itself is never PD.

    Returns
    -------
    float or None
        The time of the first PD; ``None`` where the lesion never progressed or has no positive baseline.
    """
    found = _categories(diameter_um, tumour_cells, pd_min_increase_um)
    if found is None:
        return None
    keep, categories = found
    t = np.asarray(time_min, dtype=np.float64)[keep]
    progressed = np.nonzero(categories[1:] == "PD")[0]
    return float(t[1 + progressed[0]]) if progressed.size else None
