"""``tme compare``: common baseline, RECIST best response, dose counts, labels, the figure and the CLI."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from abm.cli import main  # noqa: E402
from abm.compare import best_response, compare_runs, format_table  # noqa: E402
from abm.io import RunWriter, open_run  # noqa: E402

DAY = 1440.0
READOUTS = {
    "tumour_cells": ("cells", "count"),
    "tumour_diameter_um": ("um", "level"),
    "tcell_effector": ("cells", "count"),
    "cd8_density_core": ("cells/mm^2", "level"),
    "plasma_nivolumab_mg_per_L": ("mg/L", "level"),
    "tumour_nivolumab_nM": ("nM", "level"),
    "occupancy_pd1_core": ("1", "ratio"),
    "doses_nivolumab": ("doses", "event"),
    "doses_ipilimumab": ("doses", "event"),
}
NIVO = '[therapy.nivolumab]\nkind = "antibody"\npreset = "nivolumab"\nschedule = "q2w"\n'
IPI = '[therapy.ipilimumab]\nkind = "antibody"\npreset = "ipilimumab"\nschedule = "q3w"\n'


def write_run(path: Path, times_min, diameter_um, *, therapy_toml: str = "", cells=None, shape=(6, 5),
              **series) -> Path:
    """A run file with the given rows (one per time) and one snapshot at the last time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config = f'name = "{path.parent.name}"\n{therapy_toml}'
    w = RunWriter(path, config, 1, "numpy", shape, 20.0, readouts=READOUTS, field_units={"oxygen": "mmHg"})
    times = np.asarray(times_min, dtype=float)
    cells = np.full(times.shape, 100.0) if cells is None else np.asarray(cells, dtype=float)
    for i, t in enumerate(times):
        w.record({"time_min": t, "tumour_cells": cells[i], "tumour_diameter_um": diameter_um[i],
                  **{name: values[i] for name, values in series.items()}})
    w.write_snapshot({"fields": {"oxygen": np.zeros(shape, np.float32)},
                      "agents": {"tumour": {"voxel": np.arange(3, dtype=np.int64)}},
                      "state": {"step": len(times) - 1, "time_min": float(times[-1])}})
    w.close()
    return path


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


# --------------------------------------------------------------------------------------------------------------
def test_therapies_are_the_named_tables_of_the_therapy_section(tmp_path):
    path = write_run(tmp_path / "combo" / "sim.h5", [0.0, DAY], [100.0, 90.0],
                     therapy_toml="[therapy]\nenabled = true\n" + NIVO + IPI)
    with open_run(path) as run:
        therapies = run.therapies()
        assert run.summary()["therapies"] == therapies
    assert [t["name"] for t in therapies] == ["nivolumab", "ipilimumab"]
    assert therapies[0] == {"kind": "antibody", "preset": "nivolumab", "schedule": "q2w", "name": "nivolumab"}
    with open_run(write_run(tmp_path / "none" / "sim.h5", [0.0], [100.0])) as run:
        assert run.therapies() == []


@pytest.mark.parametrize(("days", "diameters", "cells", "expected"), [
    (None, [100, 95, 60, 65], None, "PR"),           # −40 % from baseline
    (None, [100, 125, 110], None, "PD"),             # +25 % over the nadir (the baseline) first
    (None, [100, 65, 90], None, "PR"),               # PR, then PD over the nadir: the best is PR
    (None, [100, 80, 40], [50, 10, 0], "CR"),        # no tumour cells left
    (None, [100, 100, 105], None, "SD"),             # never progressed: SD however short the run
    (None, [100, 90, 110, 70], None, "PD"),          # progressed (≥ 1.2 x 90) on day 2, before SD could count
    ([0, 1, 50, 60], [100, 90, 110, 70], None, "SD"),  # progressed only after the 42 days SD needs
    (None, [100], None, "NE"),                       # nothing after the baseline
    (None, [np.nan, 90], None, "NE"),
])
def test_best_response_by_recist(days, diameters, cells, expected):
    days = np.arange(len(diameters)) if days is None else np.asarray(days)
    assert best_response(days * DAY, diameters, cells) == expected


def test_sd_minimum_duration_can_be_changed():
    days, diameters = np.arange(4), [100, 90, 110, 70]
    assert best_response(days * DAY, diameters, sd_min_days=2.0) == "SD"
    assert best_response(days * DAY, diameters, sd_min_days=2.5) == "PD"


def test_branched_runs_share_the_later_start_as_baseline(tmp_path):
    # The parent starts at day 0 with rows every 1.5 days; the branch starts at day 2, between two parent rows.
    t_parent = np.arange(0.0, 9.0, 1.5) * DAY
    d_parent = 100.0 + 10.0 * t_parent / DAY                       # 120 µm at day 2
    parent = write_run(tmp_path / "parent" / "sim.h5", t_parent, d_parent)
    t_branch = np.array([2.0, 3.0, 5.0, 7.5]) * DAY
    doses = np.array([0.0, 1.0, np.nan, 1.0])
    plasma = np.array([0.0, 40.0, 20.0, 35.0])
    branch = write_run(tmp_path / "branch" / "sim.h5", t_branch, [120.0, 100.0, 80.0, 78.0], therapy_toml=NIVO,
                       doses_nivolumab=doses, plasma_nivolumab_mg_per_L=plasma)
    result = compare_runs([parent, branch], tmp_path / "out" / "compare.png", dpi=40)

    assert result.baseline_time_min == pytest.approx(2 * DAY)
    p, b = result.rows
    assert p.baseline_diameter_um == pytest.approx(120.0)        # interpolated between days 1.5 and 3
    assert p.final_diameter_change_pct == pytest.approx(100 * (175 / 120 - 1))
    assert p.best_response == "PD"                              # +21 % on day 4.5, within 42 days
    assert b.baseline_diameter_um == pytest.approx(120.0)
    assert b.final_diameter_change_pct == pytest.approx(100 * (78 / 120 - 1))
    assert b.best_response == "PR"
    assert (p.start_time_days, b.start_time_days, b.final_time_days) == (0.0, 2.0, 7.5)
    assert (p.label, b.label) == ("no therapy", "nivolumab")
    assert result.drugs == ["nivolumab"]
    assert (p.doses, b.doses) == ({"nivolumab": 0}, {"nivolumab": 2})   # NaN and 0 rows are no dose
    assert "drug_plasma" not in result.skipped and "drug_plasma" not in result.partial  # no therapy, no drug
    assert {"pdl1_mean", "drug_occupancy"} <= set(result.skipped)
    assert result.warnings == []

    text = format_table(result)
    assert "baseline: t = 2.00 d" in text and "doses nivolumab" in text
    line = next(line for line in text.splitlines() if line.startswith("nivolumab"))
    assert line.split()[-3:] == ["%", "PR", "2"] and "-35.0" in line


def test_figure_is_a_png_of_the_requested_size(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg

    t = np.arange(5) * DAY
    a = write_run(tmp_path / "a" / "sim.h5", t, [100, 90, 80, 70, 60], therapy_toml=NIVO,
                  tcell_effector=np.arange(5.0), cd8_density_core=np.linspace(0, 50, 5),
                  plasma_nivolumab_mg_per_L=[0, 50, 30, 60, 40], tumour_nivolumab_nM=[0, 5, 4, 6, 5],
                  occupancy_pd1_core=[0, 0.8, 0.7, 0.9, 0.85], doses_nivolumab=[0, 1, 0, 1, 0])
    b = write_run(tmp_path / "b" / "sim.h5", t, [100, 105, 110, 115, 130])
    for dpi in (30, 60):
        out = tmp_path / f"compare{dpi}.png"
        result = compare_runs([a, b], out, dpi=dpi)
        assert png_size(out) == result.size_px
        assert result.size_px == (round(15.6 * dpi), round(3 * 3.8 * dpi))  # three rows of three panels
        image = mpimg.imread(out)
        assert image.shape[:2] == result.size_px[::-1] and image.std() > 0.01   # not blank
    assert "tcell_effector" not in result.skipped and result.skipped.keys() == {"pdl1_mean"}


def test_default_labels_fall_back_to_the_directory_when_they_collide(tmp_path):
    t = [0.0, DAY]
    files = [write_run(tmp_path / "nivo_low" / "sim.h5", t, [100, 90], therapy_toml=NIVO),
             write_run(tmp_path / "nivo_high" / "sim.h5", t, [100, 80], therapy_toml=NIVO),
             write_run(tmp_path / "combo" / "sim.h5", t, [100, 70], therapy_toml=NIVO + IPI),
             write_run(tmp_path / "control" / "sim.h5", t, [100, 120])]
    result = compare_runs(files, tmp_path / "c.png", dpi=20)
    assert [r.label for r in result.rows] == ["nivo_low", "nivo_high", "nivolumab + ipilimumab", "no therapy"]
    result = compare_runs(files[:2], tmp_path / "c.png", labels=["low", "high"], dpi=20)
    assert [r.label for r in result.rows] == ["low", "high"]


def test_different_grids_are_compared_with_a_warning(tmp_path, capsys):
    a = write_run(tmp_path / "a" / "sim.h5", [0.0, DAY], [100, 90])
    b = write_run(tmp_path / "b" / "sim.h5", [0.0, DAY], [100, 90], shape=(8, 8))
    rc = main(["compare", str(a), str(b), "-o", str(tmp_path / "c.png"), "--dpi", "20"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "warning: the runs have different grids" in captured.err and "8x8" in captured.err
    assert "skipped tcell_effector" in captured.out and "wrote" in captured.out


def test_cli_json_and_labels(tmp_path, capsys):
    a = write_run(tmp_path / "a" / "sim.h5", [0.0, DAY, 2 * DAY], [100, 60, 50], therapy_toml=NIVO,
                  doses_nivolumab=[0, 1, 1])
    out = tmp_path / "c.png"
    assert main(["compare", str(a), "-o", str(out), "--labels", "treated", "--dpi", "20", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["runs"][0]["label"] == "treated" and info["runs"][0]["best_response"] == "PR"
    assert info["runs"][0]["doses"] == {"nivolumab": 2} and info["baseline_time_days"] == 0.0
    assert out.stat().st_size > 0


@pytest.mark.parametrize("case", ["missing", "truncated", "foreign", "labels", "disjoint"])
def test_cli_user_errors_exit_2_with_one_message(tmp_path, capsys, case):
    good = write_run(tmp_path / "good" / "sim.h5", [0.0, DAY], [100, 90])
    other = tmp_path / "other" / "sim.h5"
    extra = []
    if case == "missing":
        expected = "no such file"
    elif case == "truncated":
        other.parent.mkdir()
        other.write_bytes(good.read_bytes()[:200])
        expected = "truncated or damaged"
    elif case == "foreign":
        import h5py

        other.parent.mkdir()
        with h5py.File(other, "w") as f:
            f["x"] = 1
        expected = "not a tme-abm run"
    elif case == "labels":
        other = write_run(other, [0.0, DAY], [100, 90])
        extra = ["--labels", "only-one"]
        expected = "1 label(s) for 2 run file(s)"
    else:
        other = write_run(other, [2 * DAY, 3 * DAY], [100, 90])
        expected = "share no time"
    out = tmp_path / "c.png"
    rc = main(["compare", str(good), str(other), "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("tme: error: ") and expected in err and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()


def test_cli_needs_a_file(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "-o", "c.png"])
    assert exc.value.code == 2 and "FILE" in capsys.readouterr().err


def test_real_runs(tmp_path, capsys, monkeypatch):
    from abm.config import parse_config
    from abm.io.run import RunFile
    from abm.runner import run_simulation

    files = []
    for name, seed in (("seed1", 1), ("seed2", 2)):
        config = parse_config({"backend": "numpy", "seed": seed, "grid": {"shape": [30, 30]},
                               "time": {"duration_min": 120.0}, "output": {"summary_plot": False}})
        files.append(run_simulation(config, tmp_path / name, progress=False).h5_path)
    out = tmp_path / "compare.png"

    def no_snapshot(*_args, **_kw):
        raise AssertionError("compare read a snapshot")

    monkeypatch.setattr(RunFile, "_group", no_snapshot)  # every snapshot read goes through it
    assert main(["compare", *map(str, files), "-o", str(out), "--dpi", "30"]) == 0
    text = capsys.readouterr().out
    assert png_size(out)[0] == round(15.6 * 30)
    assert "seed1" in text and "seed2" in text  # both "no therapy": labelled by their directories
    assert "skipped tcell_effector" in text and "skipped drug_plasma" in text
    result = compare_runs(files, out, dpi=30)
    assert result.baseline_time_min == 0.0
    assert all(r.final_time_days == pytest.approx(120.0 / DAY) and r.doses == {} for r in result.rows)
    assert all(r.best_response in {"CR", "PR", "SD", "PD"} for r in result.rows)
