"""``tme trial``: sampling, the fork at treatment start, the table against the files, the report, resuming, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_tree_equal

from abm.analysis import best_response
from abm.cli import main
from abm.config import ConfigError
from abm.io import open_run

REPO = Path(__file__).resolve().parents[1]
ARMS = ("control", "nivolumab")

TRIAL = f"""
name = "tiny"
seed = 7
patients = 4
scene = "{(REPO / 'configs' / 'immune_inflamed.toml').as_posix()}"
treatment_start_day = 1
follow_up_days = 1.5
assessment_every_days = 0.5
sd_min_days = 1.0

[scene_set]
"grid.shape" = [30, 30]
"time.dt_min" = 20.0
"initial.tumour.radius_um" = 140.0
"output.snapshot_interval_min" = 1440.0

[parameters."tumour.antigenicity_initial"]
dist = "normal"
mean = 0.7
sd = 0.2
low = 0.1
high = 1.0

[parameters.immune.priming_initial]
dist = "uniform"
low = 0.3
high = 0.9

[parameters."patient.body_weight_kg"]
dist = "lognormal"
median = 75.0
sigma = 0.2

[arms.control]
label = "no treatment"

[arms.nivolumab]
[arms.nivolumab.therapy.nivolumab]
preset = "nivolumab"
schedule = {{ start_day = 0, doses = 1, dose_mg_per_kg = 3.0 }}
"""


def assert_within(base: dict, branch: dict, path: str = "") -> set[str]:
    """Assert every entry of ``base`` is in ``branch`` and identical; return the paths ``branch`` adds."""
    extra = {f"{path}/{k}" for k in set(branch) - set(base)}
    for key, value in base.items():
        assert key in branch, f"{path}/{key} is missing in the branch"
        if isinstance(value, dict):
            extra |= assert_within(value, branch[key], f"{path}/{key}")
        else:
            assert_tree_equal(value, branch[key], f"{path}/{key}")
    return extra


def write_trial(tmp_path: Path, text: str = TRIAL, name: str = "trial.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trial_run(tmp_path_factory):
    """The tiny trial run three times: with patient p004 blocked, then unblocked, then again unchanged."""
    root = tmp_path_factory.mktemp("trial")
    path = write_trial(root)
    out = root / "out"
    blocker = out / "patients" / "p004" / "pre"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the run directory should be")
    runs = []
    for step in range(3):
        if step == 1:
            blocker.unlink()
        stamps = {p: p.stat().st_mtime_ns for p in out.glob("patients/*/*/sim.h5")}
        rc = main(["trial", str(path), "-o", str(out), "--workers", "1", "--quiet"])
        runs.append({"rc": rc, "stamps": stamps, "table": pd.read_parquet(out / "results.parquet"),
                     "summary": json.loads((out / "summary.json").read_text())})
    return {"path": path, "out": out, "runs": runs}


def test_sampling_is_reproducible_and_per_patient(tmp_path):
    from abm.cohort.trial_spec import load_trial

    path = write_trial(tmp_path)
    a, b = load_trial(path), load_trial(path, patients=6)
    assert [p.parameters for p in a.patients] == [p.parameters for p in b.patients[:4]]
    assert [p.seed for p in a.patients] == [p.seed for p in b.patients[:4]]
    assert len({p.seed for p in b.patients}) == 6
    values = np.array([p.parameters["tumour.antigenicity_initial"] for p in b.patients])
    assert np.all((values >= 0.1) & (values <= 1.0)) and np.ptp(values) > 0
    # A parameter added to the file leaves the others' values as they were.
    more = load_trial(write_trial(tmp_path, TRIAL + '\n[parameters."vessels.density"]\ndist = "uniform"\n'
                                  'low = 0.02\nhigh = 0.06\n', "more.toml"))
    for p, q in zip(a.patients, more.patients):
        assert {k: q.parameters[k] for k in p.parameters} == p.parameters
    other = load_trial(path, ["seed=8"])
    assert [p.parameters for p in other.patients] != [p.parameters for p in a.patients]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "trials").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_trials_are_valid(path):
    from abm.cohort.trial_spec import load_trial

    trial = load_trial(path)
    assert len(trial.patients) == trial.spec.patients and len(trial.arms) >= 2
    assert trial.pre_config(trial.patients[0]).ndim == 2


def test_distributions_follow_their_laws():
    from abm.cohort.trial_spec import Distribution

    rng = np.random.default_rng(0)
    draws = np.array([Distribution(dist="lognormal", median=2.0, sigma=0.5, high=3.0).sample(rng)
                      for _ in range(1000)])
    assert draws.max() <= 3.0 and draws.min() > 0
    assert abs(np.median(draws) - 1.82) < 0.1   # the median of the law truncated at 3: exp(ln 2 + 0.5 * z)
    normal = [Distribution(dist="normal", mean=0.0, sd=1.0, low=0.0).sample(rng) for _ in range(1000)]
    assert min(normal) >= 0 and abs(np.mean(normal) - np.sqrt(2 / np.pi)) < 0.05   # half-normal mean
    with pytest.raises(ValueError, match="needs sd"):
        Distribution(dist="normal", mean=1.0)
    with pytest.raises(ValueError, match="not median"):
        Distribution(dist="uniform", low=0.0, high=1.0, median=0.5)


def test_bad_trial_key_exits_2_with_a_clear_message(tmp_path, capsys):
    bad = write_trial(tmp_path, TRIAL.replace("follow_up_days", "follow_up_dayz"))
    assert main(["trial", str(bad), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "follow_up_dayz: unknown key; did you mean 'follow_up_days'?" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    typo = write_trial(tmp_path, TRIAL.replace('"tumour.antigenicity_initial"', '"tumour.antigenicty_initial"'),
                       "typo.toml")
    assert main(["trial", str(typo), "--quiet"]) == 2
    assert "tumour.antigenicty_initial: unknown key; did you mean 'tumour.antigenicity_initial'?" in \
        capsys.readouterr().err
    wide = write_trial(tmp_path, TRIAL.replace("sd = 0.2\nlow = 0.1\nhigh = 1.0\n", "sd = 0.6\n"), "wide.toml")
    assert main(["trial", str(wide), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "tumour.antigenicity_initial = " in err and "(patient p0" in err
    assert "bound its distribution with low/high" in err


def test_arm_and_scene_errors_name_the_arm(tmp_path):
    from abm.cohort.trial_spec import load_trial

    with pytest.raises(ConfigError, match="arms.nivolumab: therapy.nivolumab = .*unknown preset 'nivolumabb'"):
        load_trial(write_trial(tmp_path, TRIAL.replace('preset = "nivolumab"', 'preset = "nivolumabb"')))
    with pytest.raises(ConfigError, match="arm name 'Bad'"):
        load_trial(write_trial(tmp_path, TRIAL.replace("[arms.control]", "[arms.Bad]"), "b.toml"))
    with pytest.raises(ConfigError, match="output.snapshots = 'none': a trial needs 'interval'"):
        load_trial(write_trial(tmp_path, TRIAL.replace("[scene_set]", '[scene_set]\n"output.snapshots" = "none"'),
                               "d.toml"))
    with pytest.raises(ConfigError, match="whole number of steps"):
        load_trial(write_trial(tmp_path, TRIAL.replace("treatment_start_day = 1", "treatment_start_day = 1.01"),
                               "c.toml"))


def test_arms_fork_bit_identically_at_treatment_start(trial_run):
    out = trial_run["out"]
    for pid in ("p001", "p002", "p003", "p004"):
        with open_run(out / "patients" / pid / "pre" / "sim.h5") as pre:
            t0 = float(pre.times[-1])
            assert t0 == 1440.0
            base = pre.state(t0)
            for arm in ARMS:
                with open_run(out / "patients" / pid / arm / "sim.h5") as run:
                    assert float(run.times[0]) == t0 and run.attrs["branch_time_min"] == t0
                    state = run.state(t0)
                    added_modules = set(json.loads(run.attrs["branch_added_modules"]))
                    added_fields = set(json.loads(run.attrs["branch_added_fields"]))
                assert_tree_equal(base["agents"], state["agents"])
                # Everything the untreated run holds is in the arm, bit for bit; the arm adds only its therapy.
                extra = assert_within(base, state)
                if arm == "control":
                    assert not added_modules and not added_fields and not extra
                else:
                    assert added_modules == {"therapy"} and added_fields == {"nivolumab"}
                    # The drug field, its occupancy lattice, the therapy module's state and the ECM factors of
                    # the new large-molecule field (zero until the first ECM update of the branch).
                    assert extra == {"/fields/nivolumab", "/fields/occupancy_pd1", "/state/therapy",
                                     "/state/stroma/ecm_factors"}
                    assert not state["fields"]["nivolumab"].any()  # no drug in tissue before the first dose


def test_failed_patient_is_recorded_and_resumed(trial_run):
    first, second, third = trial_run["runs"]
    assert first["rc"] == 1
    t = first["table"]
    assert set(t.loc[t.patient == "p004", "status"]) == {"failed"}
    assert t.loc[t.patient == "p004", "error"].str.contains("p004").all()
    assert set(t.loc[t.patient != "p004", "status"]) == {"ok"}
    assert first["summary"]["failed_patients"] == ["p004"] and first["summary"]["evaluable_patients"] == 3
    # Unblocked: only p004 runs; the others' files are left as they were.
    assert second["rc"] == 0 and set(second["table"]["status"]) == {"ok"}
    after = {p: p.stat().st_mtime_ns for p in trial_run["out"].glob("patients/*/*/sim.h5")}
    assert {p for p in after if "p004" not in str(p)} == set(second["stamps"])
    assert all(after[p] == second["stamps"][p] for p in second["stamps"])
    assert not (trial_run["out"] / "patients" / "p004" / "error.txt").exists()
    # Unchanged: nothing runs again.
    assert third["rc"] == 0 and third["stamps"] == after
    pd.testing.assert_frame_equal(second["table"], third["table"])


def test_table_matches_the_files(trial_run):
    from abm.cohort.trial_spec import load_trial

    out = trial_run["out"]
    table = trial_run["runs"][-1]["table"]
    trial = load_trial(trial_run["path"])
    assert len(table) == 4 * len(ARMS)
    csv = pd.read_csv(out / "results.csv")
    np.testing.assert_allclose(csv["best_pct_change"], table["best_pct_change"])
    times = trial.assessment_times_min()
    np.testing.assert_allclose(times, [1440.0, 2160.0, 2880.0, 3600.0])
    for row in table.itertuples():
        patient = next(p for p in trial.patients if p.pid == row.patient)
        assert row.seed == patient.seed
        with open_run(out / "patients" / row.patient / "pre" / "sim.h5") as pre:
            assert pre.config().tumour.antigenicity_initial == patient.parameters["tumour.antigenicity_initial"]
            assert pre.config().seed == patient.seed
            pre_ts = pre.timeseries()
        with open_run(row.file) as run:
            ts = run.timeseries()
        # Baseline: the last row of the untreated run and the first of the arm.
        assert row.baseline_diameter_um == pre_ts["tumour_diameter_um"][-1] == ts["tumour_diameter_um"][0]
        assert row.final_tumour_cells == ts["tumour_cells"][-1]
        at = [int(np.nonzero(np.isclose(ts["time_min"], t))[0][0]) for t in times]
        d, cells = ts["tumour_diameter_um"][at], ts["tumour_cells"][at]
        assert row.best_response == best_response(times, d, cells, sd_min_days=1.0)
        assert row.best_pct_change == pytest.approx(100 * (d[1:].min() / d[0] - 1))
        assert row.responder == (row.best_response in ("CR", "PR"))
    # Paired arms: the same baseline in both.
    wide = table.pivot(index="patient", columns="arm", values="baseline_diameter_um")
    np.testing.assert_array_equal(wide["control"], wide["nivolumab"])


def test_report_holds_the_tables_and_figures(trial_run):
    out = trial_run["out"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3
    assert "<table" in html and "ORR" in html and "Clopper" in html and "McNemar" in html
    assert "no treatment" in html and "nivolumab" in html
    summary = trial_run["runs"][-1]["summary"]
    assert set(summary["arms"]) == set(ARMS) and summary["reference_arm"] == "control"
    assert summary["arms"]["control"]["n"] == 4 and "nivolumab" in summary["comparisons"]
    for name in ("waterfall", "spider", "pfs"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
