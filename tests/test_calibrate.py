"""tme calibrate: recovery of known parameters from synthetic targets, resume after Ctrl-C, bad files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("pyabc")

from abm.calibration.engine import JOURNAL, read_journal, run_calibration  # noqa: E402
from abm.calibration.spec import load_calibration  # noqa: E402
from abm.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "configs" / "calibration" / "synthetic_growth.toml"
# Smaller than the shipped file so that a study takes seconds: a 16 x 16 patch, 12 particles.
SMALL = ["scene_set.grid.shape=[16,16]", "abc.population=12", "abc.generations=3"]


def _journal_keys(out: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (out / JOURNAL).read_text().splitlines()]


@pytest.mark.slow
def test_synthetic_calibration_recovers_the_truth(tmp_path):
    calibration = load_calibration(SYNTHETIC, ["abc.population=24", "abc.generations=3"])
    result = run_calibration(calibration, tmp_path / "cal", progress=False)
    summary = result.summary.set_index("parameter")
    for name, prior in calibration.spec.parameters.items():
        row = summary.loc[name]
        assert row["q05"] <= prior.truth <= row["q95"], (name, row.to_dict())
        # The posterior is much narrower than the prior (both log-uniform over a decade or more).
        assert (row["q95"] / row["q05"]) < 0.5 * (prior.high / prior.low), (name, row.to_dict())
    gens = result.generations
    assert list(gens["generation"]) == [0, 1, 2]
    assert gens["epsilon"].is_monotonic_decreasing
    for name in ("posterior.csv", "posterior_summary.csv", "generations.csv", "posterior.png"):
        assert (tmp_path / "cal" / name).stat().st_size > 0
    posterior = pd.read_csv(tmp_path / "cal" / "posterior.csv")
    assert len(posterior) == 24 and abs(posterior["weight"].sum() - 1) < 1e-9


@pytest.mark.slow
def test_resume_after_ctrl_c_makes_only_the_missing_members(tmp_path):
    whole = tmp_path / "whole"
    result = run_calibration(load_calibration(SYNTHETIC, SMALL), whole, progress=False)
    keys_whole = _journal_keys(whole)
    assert len(keys_whole) == len(set(keys_whole))

    # The same study, stopped by Ctrl-C in the middle of a generation.
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "abm.cli", "calibrate", str(SYNTHETIC), "-o", str(cut), "--quiet"]
    cmd += [f"--set={s}" for s in SMALL]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    generation0 = int(result.generations["members"].iloc[0])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        path = cut / JOURNAL
        if path.exists() and len(path.read_text().splitlines()) >= generation0 + 12 + 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to continue" in err
    assert "Traceback" not in err
    before = read_journal(cut / JOURNAL)
    assert 0 < len(before) < len(keys_whole)

    # Resumed: the finished members are read back, not simulated again, and the study ends where the
    # uninterrupted one did.
    from abm.calibration import engine

    calls = []
    original = engine.Member._simulate

    def counting(self, values, seed):
        calls.append(seed)
        return original(self, values, seed)

    engine.Member._simulate = counting
    try:
        resumed = run_calibration(load_calibration(SYNTHETIC, SMALL), cut, progress=False)
    finally:
        engine.Member._simulate = original
    keys_cut = _journal_keys(cut)
    assert len(keys_cut) == len(set(keys_cut)), "a member was simulated twice"
    assert sorted(keys_cut) == sorted(keys_whole)
    assert len(calls) == len(keys_whole) - len(before)
    pd.testing.assert_frame_equal(resumed.posterior, result.posterior)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cal.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = f"""
name = "bad"
seed = 1
scene = "{(REPO / 'configs' / 'quickstart.toml').as_posix()}"
[scene_set]
"immune.enabled" = false
[parameters.division]
key = "tumour.proliferation_rate_per_min"
prior = "loguniform"
low = 2.0e-4
high = 2.0e-3
[targets.cells]
readout = "tumour_cells"
value = 50.0
sd = 5.0
"""


@pytest.mark.parametrize("change, expected", [
    (("[targets.cells]", "[targets.cells]\nunit = 'cells'"), "unit"),
    (("low = 2.0e-4", "low = 2.0e-2"), "low (0.02) must be below high"),
    (("readout = \"tumour_cells\"", "readout = \"tumor_cells\""), "unknown readout 'tumor_cells'; did you mean"),
    (("key = \"tumour.proliferation_rate_per_min\"", "key = \"tumour.proliferation_per_min\""),
     "proliferation_per_min"),
    (("prior = \"loguniform\"\nlow = 2.0e-4\nhigh = 2.0e-3", "prior = \"uniform\"\nlow = -1.0\nhigh = 1.0"),
     "value -0.998"),
    (("sd = 5.0", "sd = 0.0"), "sd"),
])
def test_bad_calibration_files_exit_2_naming_the_key(tmp_path, capsys, change, expected):
    path = _write(tmp_path, GOOD.replace(*change))
    assert main(["calibrate", str(path), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err


def test_a_directory_of_another_calibration_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "calibration.json").write_text(json.dumps({"digest": "0123456789abcdef"}))
    path = _write(tmp_path, GOOD)
    assert main(["calibrate", str(path), "-o", str(out), "--quiet"]) == 2
    assert "holds a different calibration" in capsys.readouterr().err


def test_the_fingerprint_ignores_where_and_how_long_but_not_what():
    base = load_calibration(SYNTHETIC, SMALL)
    assert load_calibration(SYNTHETIC, SMALL + ["abc.generations=7", "executor.kind='local'"]).digest == base.digest
    assert load_calibration(SYNTHETIC, SMALL + ["targets.cells_day1.value=60.0"]).digest != base.digest
    assert load_calibration(SYNTHETIC, SMALL + ["scene_set.time.dt_min=30.0"]).digest != base.digest


def test_sobol_indices_name_the_parameter_that_drives_each_target(tmp_path):
    from abm.calibration.sensitivity import run_sensitivity

    calibration = load_calibration(SYNTHETIC, SMALL)
    result = run_sensitivity(calibration, tmp_path / "sobol", n_base=8, progress=False)
    assert len(result.members) == 8 * (2 + 2)
    st = result.indices.set_index(["output", "parameter"])["ST"]
    # Tumour pO2 is set by the O2 uptake per cell far more than by the division rate.
    assert st["tumour_po2", "uptake"] > 3 * st["tumour_po2", "division"]
    assert (tmp_path / "sobol" / "sobol.png").stat().st_size > 0
    assert main(["sensitivity", str(SYNTHETIC), "--n-base", "12", "-o", str(tmp_path / "x"), "--quiet"]) == 2
