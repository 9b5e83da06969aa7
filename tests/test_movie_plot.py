"""``tme movie`` and ``tme plot`` on 2-D and 3-D runs, and survival of a killed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import quickstart_scene

from abm.cli import main
from abm.config import load_config
from abm.io import open_run
from abm.runner import run_simulation

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.toml"


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def run_file(request, tmp_path_factory):
    shape = "[24,24]" if request.param == 2 else "[16,16,16]"
    # The quickstart's tumour and oxygen only (no immune layer, no therapy): one field, known panels.
    cfg = quickstart_scene([f"grid.shape={shape}", "time.duration_min=60", "output.snapshot_interval_min=12",
                            "backend=numpy", "initial.tumour.radius_um=100"])
    out = tmp_path_factory.mktemp(f"movie{request.param}d") / "run"
    return run_simulation(cfg, out, progress=False).h5_path


def read_video(path: Path) -> np.ndarray:
    import imageio.v2 as iio

    if path.suffix == ".gif":
        return np.asarray(iio.mimread(path))
    with iio.get_reader(path, format="FFMPEG") as reader:
        return np.stack([frame for frame in reader])  # list(reader) would trust an unknown (inf) length


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_movie_frames_and_size(run_file, ext, tmp_path, capsys):
    out = tmp_path / f"run{ext}"
    assert main(["movie", str(run_file), "-o", str(out), "--quiet"]) == 0
    frames = read_video(out)
    with open_run(run_file) as run:
        n_snapshots, ndim = len(run), run.ndim
    assert n_snapshots == 6
    # Default: a cell panel and one panel per field (oxygen), 432 px each.
    assert frames.shape[0] == n_snapshots and frames.shape[1:3] == (432, 864)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary left behind
    assert f"{n_snapshots} frames" in capsys.readouterr().out

    # A time range, chosen layers and an explicit size (3-D: maximum projection along x).
    out2 = tmp_path / f"part{ext}"
    extra = ["--projection", "--axis", "x"] if ndim == 3 else []
    assert main(["movie", str(run_file), "-o", str(out2), "--layers", "tumour,necrotic", "--layers", "oxygen",
                 "--start", "12", "--end", "48", "--size", "320x160", "--fps", "10", "--quiet", *extra]) == 0
    frames = read_video(out2)
    assert frames.shape[:3] == (4, 160, 320)


def test_movie_fixed_colour_limits_and_slices(run_file, tmp_path):
    """Colour limits span every frame; a 3-D slice index outside the grid is a user error."""
    from abm.movie import _colour_limits
    from abm.plots import snapshot_planes

    class Bar:
        def update(self, n):
            pass

    with open_run(run_file) as run:
        indices = list(range(len(run)))
        limits = _colour_limits(run, indices, ["oxygen"], "slice", 2, None, Bar())
        lows = [snapshot_planes(run, i, ["oxygen"])["oxygen"].min() for i in indices]
        highs = [snapshot_planes(run, i, ["oxygen"])["oxygen"].max() for i in indices]
        assert limits["oxygen"] == (float(min(lows)), float(max(highs)))
        ndim = run.ndim
    if ndim == 3:
        assert main(["movie", str(run_file), "-o", str(tmp_path / "m.gif"), "--index", "99", "--quiet"]) == 2


def test_movie_cancel_leaves_no_file(run_file, tmp_path, monkeypatch):
    from abm import movie

    calls = {"n": 0}
    real = movie.snapshot_planes

    def interrupt_on_third_frame(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6 + 3:  # after the scan pass over 6 snapshots
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(movie, "snapshot_planes", interrupt_on_third_frame)
    assert main(["movie", str(run_file), "-o", str(tmp_path / "m.mp4"), "--quiet"]) == 130
    assert list(tmp_path.iterdir()) == []


def test_plot_writes_pngs_and_names_missing_panels(run_file, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["plot", str(run_file), "--out", str(out), "--times", "0", "50"]) == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["burden.png", "fields_t0.png", "fields_t48.png", "hypoxia.png", "populations.png"]
    assert "skipped immune: not available" in printed and "skipped drugs: not available" in printed
    assert all((out / n).stat().st_size > 1000 for n in names)
    assert (run_file.parent / "summary.png").stat().st_size > 1000  # tme run draws with the same panels


def test_immune_run_plots_its_readouts(tmp_path, capsys):
    from PIL import Image

    cfg = load_config(REPO / "configs" / "immune_inflamed.toml", ["grid.shape=[40,40]", "time.duration_min=240",
                                                                   "output.snapshot_interval_min=120"])
    h5 = run_simulation(cfg, tmp_path / "run", progress=False).h5_path
    out = tmp_path / "plots"
    assert main(["plot", str(h5), "--out", str(out)]) == 0
    assert "skipped immune" not in capsys.readouterr().out
    assert (out / "immune.png").stat().st_size > 1000
    with Image.open(h5.parent / "summary.png") as summary:  # a second row of immune panels
        width, height = summary.size
    assert height > 0.4 * width


def test_recist_categories():
    from abm.analysis import recist_categories

    d = [100, 90, 69, 70, 82, 83, 0]  # PD from 1.2 x nadir 69 = 82.8
    assert recist_categories(d).tolist() == ["SD", "SD", "PR", "PR", "SD", "PD", "CR"]
    assert recist_categories([100, 80, 97], pd_min_increase_um=50).tolist() == ["SD", "SD", "SD"]


def test_killed_run_is_readable_and_can_be_continued(tmp_path):
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")  # h5py reads it when a file is opened
    out = tmp_path / "killed"
    h5 = out / "sim.h5"
    cmd = [sys.executable, "-m", "abm.cli", "run", str(QUICKSTART), "--set", "grid.shape=[64,64]",
           "--set", "time.duration_min=1000000", "--set", "output.snapshot_interval_min=12", "--backend", "numpy",
           "--out", str(out), "--quiet"]
    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline and child.poll() is None:
            try:  # the file is being written: it may be momentarily unreadable
                with h5py.File(h5, "r", locking=False) as f:
                    n = len(f["snapshots"])
            except (OSError, KeyError):
                n = 0
            if n >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()
        assert n >= 3, "the run wrote fewer than 3 snapshots within 60 s"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert main(["inspect", str(h5), "--json"]) == 0
    with open_run(h5) as run:
        assert not run.complete and len(run) >= 2
        last = float(run.times[-1])
    assert main(["plot", str(h5), "--out", str(tmp_path / "plots")]) == 0
    assert main(["replay", str(h5), "--from", str(last), "--until", str(last + 12), "--out",
                 str(tmp_path / "continued"), "--quiet"]) == 0
    with open_run(tmp_path / "continued" / "sim.h5") as cont:
        assert cont.complete and cont.times.tolist() == [last, last + 12]
