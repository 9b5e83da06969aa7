"""RECIST 1.1 on hand-made burden curves, and the trial statistics against values computed independently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from abm.analysis import best_response, first_progression_min
from abm.cohort.trial_stats import arm_summary, compare_arms, median_pfs, proportion_ci

DAY = 1440.0
WEEKLY = np.arange(6) * 7 * DAY


@pytest.mark.parametrize("diameters, cells, expected, progression_week", [
    ([100, 80, 40, 0, 0, 0], [50, 30, 10, 0, 0, 0], "CR", None),        # no tumour cell left
    ([100, 85, 70, 68, 69, 70], None, "PR", None),                        # -30 % from baseline is PR
    ([100, 95, 90, 96, 100, 105], None, "SD", None),                      # never -30 %, never +20 % over nadir
    ([100, 110, 121, 130, 140, 150], None, "PD", 2),                      # +21 % on week 2, within 42 days
    ([100, 60, 55, 60, 67, 80], None, "PR", 4),                           # PR, then +20 % over the nadir of 55
    ([100, 90, 85, 95, 103, 110], None, "PD", 4),                         # +21 % over the nadir, +3 % over baseline
])
def test_best_response_and_progression(diameters, cells, expected, progression_week):
    d = np.asarray(diameters, float)
    assert best_response(WEEKLY, d, cells) == expected
    t = first_progression_min(WEEKLY, d, cells)
    assert (t is None) if progression_week is None else (t == progression_week * 7 * DAY)


def test_absolute_pd_floor_and_sd_interval():
    d = np.array([1000.0, 900.0, 1100.0])   # +22 % over the nadir, but only 200 µm
    t = np.array([0.0, 7.0, 14.0]) * DAY
    assert best_response(t, d) == "PD"
    assert best_response(t, d, pd_min_increase_um=5000.0) == "SD"
    assert first_progression_min(t, d, pd_min_increase_um=5000.0) is None
    # SD needs sd_min_days without progression; with a shorter minimum the same curve is SD.
    assert best_response(t, d, sd_min_days=10.0) == "SD"
    assert best_response(t, [0.0, 1.0, 2.0]) == "NE" and best_response(t[:1], d[:1]) == "NE"


def test_wilson_interval_against_the_closed_form():
    k, n, z = 7, 20, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = proportion_ci(k, n, "wilson")
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert (lo, hi) == pytest.approx((0.1812, 0.5671), abs=1e-4)   # computed independently to 4 places


def test_clopper_pearson_at_the_ends():
    # With 0 or all successes the exact interval has the closed form 1 - (alpha/2)^(1/n).
    lo, hi = proportion_ci(0, 10, "exact")
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)
    lo, hi = proportion_ci(10, 10, "exact")
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), abs=1e-9)
    assert hi - lo == pytest.approx(0.3085, abs=1e-4)
    assert np.isnan(proportion_ci(0, 0)[0])


def test_km_median_mcnemar_and_arm_summary():
    assert median_pfs([2, 4, 6, 8, 10], [1, 1, 1, 1, 1])[0] == 6.0
    assert median_pfs([2, 4, 6, 8], [1, 0, 0, 0])[0] == np.inf   # the curve never falls to 1/2
    responses = ["PR", "PR", "SD", "PD", "CR", "PD", "SD", "PD"]
    ref = pd.DataFrame({"responder": [False] * 8, "best_response": ["SD"] * 8, "pfs_days": [14.0] * 8,
                        "pfs_event": [False] * 8, "best_pct_change": [5.0] * 8})
    other = pd.DataFrame({"responder": [r in ("CR", "PR") for r in responses], "best_response": responses,
                          "pfs_days": [14, 14, 14, 7, 14, 3.5, 14, 7], "pfs_event": [r == "PD" for r in responses],
                          "best_pct_change": [-40, -35, 0, 30, -100, 25, 2, 21]})
    s = arm_summary(other)
    assert s["n"] == 8 and s["responses"] == {"CR": 1, "PR": 2, "SD": 2, "PD": 3, "NE": 0}
    assert s["orr"] == 3 / 8 and s["dcr"] == 5 / 8 and s["pfs_events"] == 3
    assert s["orr_wilson"] == pytest.approx(proportion_ci(3, 8, "wilson"))
    c = compare_arms(ref, other)
    # Three discordant pairs, all favouring the other arm: exact two-sided p = 2 x 0.5^3.
    assert (c["responders_only_other"], c["responders_only_reference"]) == (3, 0)
    assert c["mcnemar_p"] == pytest.approx(0.25)
    assert 0 < c["logrank_p"] < 0.1 and c["median_diff_best_pct"] == pytest.approx(np.median(
        np.array([-40, -35, 0, 30, -100, 25, 2, 21]) - 5.0))
