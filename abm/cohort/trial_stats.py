"""Statistics of a virtual trial: response rates, progression-free survival and the paired comparison of arms.

- Objective response rate (ORR: CR or PR) and disease control rate (DCR: CR, PR or SD) with 95 % intervals by
  Wilson's score method and by Clopper-Pearson's exact method (:func:`scipy.stats.binomtest`).
- Progression-free survival (PFS) by Kaplan-Meier with the median and its 95 % interval (lifelines: Brookmeyer-
  Crowley from the log(-log) pointwise band); the log-rank test between arms (lifelines).
- Response in two arms of the same patients, compared by McNemar's exact test: the two-sided binomial test of the
  discordant pairs against 1/2 (:func:`scipy.stats.binomtest`).

The log-rank test treats the arms as independent samples although every patient is in each arm; with paired
data it is conservative (its variance ignores the positive correlation between a patient's arms).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CI_LEVEL", "arm_summary", "compare_arms", "median_pfs", "proportion_ci"]

#: Confidence level of every interval in the report.
CI_LEVEL = 0.95


def proportion_ci(k: int, n: int, method: str = "wilson", level: float = CI_LEVEL) -> tuple[float, float]:
    """Confidence interval of a proportion ``k / n``.

    Parameters
    ----------
    k, n : int
        Successes and trials.
    method : str
        ``"wilson"`` (score interval) or ``"exact"`` (Clopper-Pearson).
    level : float
        Confidence level.

    Returns
    -------
    (float, float)
        Lower and upper bound; NaN for ``n = 0``.
    """
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method=method)
    return float(ci.low), float(ci.high)


def median_pfs(days, events, level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Kaplan-Meier median PFS (days) and its confidence interval; ``inf`` where the curve stays above 1/2."""
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    days = np.asarray(days, dtype=np.float64)
    if not days.size:
        return float("nan"), float("nan"), float("nan")
    kmf = KaplanMeierFitter(alpha=1.0 - level).fit(days, np.asarray(events, dtype=bool))
    ci = median_survival_times(kmf.confidence_interval_)
    return float(kmf.median_survival_time_), float(ci.iloc[0, 0]), float(ci.iloc[0, 1])


def arm_summary(rows) -> dict:
    """ORR, DCR (with Wilson and Clopper-Pearson intervals), response counts and median PFS of one arm.

    Parameters
    ----------
    rows : pandas.DataFrame
        The arm's evaluable rows of the trial table (``best_response``, ``pfs_days``, ``pfs_event``).
    """
    n = int(len(rows))
    counts = {c: int((rows["best_response"] == c).sum()) for c in ("CR", "PR", "SD", "PD", "NE")} if n else {}
    responders = counts.get("CR", 0) + counts.get("PR", 0)
    controlled = responders + counts.get("SD", 0)
    median, lo, hi = median_pfs(rows["pfs_days"], rows["pfs_event"]) if n else (math.nan,) * 3
    return {
        "n": n,
        "responses": counts,
        "orr": responders / n if n else math.nan,
        "orr_wilson": proportion_ci(responders, n, "wilson"),
        "orr_clopper_pearson": proportion_ci(responders, n, "exact"),
        "dcr": controlled / n if n else math.nan,
        "dcr_wilson": proportion_ci(controlled, n, "wilson"),
        "pfs_events": int(rows["pfs_event"].sum()) if n else 0,
        "median_pfs_days": median,
        "median_pfs_ci_days": (lo, hi),
        "median_best_pct_change": float(np.nanmedian(rows["best_pct_change"])) if n else math.nan,
    }


def compare_arms(reference, other) -> dict:
    """Paired comparison of two arms over the same patients (rows aligned by patient).

    Returns
    -------
    dict
        ``n_pairs``; McNemar's exact test on response (``responders_only_reference``, ``responders_only_other``
        (the discordant pairs), ``mcnemar_p``); the log-rank test on PFS (``logrank_chi2``, ``logrank_p``; NaN
        without any progression); and the median paired difference of the best change in diameter
        (``median_diff_best_pct``, other minus reference, percentage points).
    """
    from lifelines.statistics import logrank_test
    from scipy.stats import binomtest

    ref_resp = np.asarray(reference["responder"], dtype=bool)
    oth_resp = np.asarray(other["responder"], dtype=bool)
    only_ref = int((ref_resp & ~oth_resp).sum())
    only_other = int((oth_resp & ~ref_resp).sum())
    discordant = only_ref + only_other
    mcnemar_p = float(binomtest(only_other, discordant, 0.5).pvalue) if discordant else 1.0
    chi2 = p = math.nan
    events = np.concatenate([np.asarray(reference["pfs_event"], bool), np.asarray(other["pfs_event"], bool)])
    if len(reference) and events.any():
        test = logrank_test(reference["pfs_days"], other["pfs_days"], reference["pfs_event"], other["pfs_event"])
        chi2, p = float(test.test_statistic), float(test.p_value)
    diff = np.asarray(other["best_pct_change"], float) - np.asarray(reference["best_pct_change"], float)
    return {"n_pairs": int(len(reference)), "responders_only_reference": only_ref,
            "responders_only_other": only_other, "mcnemar_p": mcnemar_p, "logrank_chi2": chi2, "logrank_p": p,
            "median_diff_best_pct": float(np.nanmedian(diff)) if diff.size else math.nan}
