"""``tme viz``: the page in headless Chromium (live run and replay), its figures, its errors and the import rule.

The browser tests (marker ``browser``) start ``tme viz`` in a subprocess on a free local port and drive Debian's
Chromium through Playwright (no browser download). They skip, with the reason, where Chromium is not installed or
cannot start; ``TME_CHROMIUM`` names another Chromium binary. Screenshots go to ``$TME_VIZ_ARTEFACTS`` (default:
the test's temporary directory) and their paths are printed.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import quickstart_scene

from abm.cli import main
from abm.io import open_run
from abm.runner import run_simulation

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.toml"
# The quickstart on a 40 x 40 grid with T cells recruited fast enough that CD8 counts change within a few steps.
SMALL_LIVE = ["--set", "grid.shape=[40,40]", "--set", 'backend="numpy"', "--set",
              "immune.tcell.recruitment_per_min=0.5"]
PAGE_TIMEOUT_MS = 60_000  # first page load: the server renders the first figures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _artefact_dir(tmp_path: Path) -> Path:
    where = Path(os.environ.get("TME_VIZ_ARTEFACTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


@contextmanager
def viz_server(args, tmp_path):
    """``tme viz ARGS`` in a subprocess; yields (url, process); stops it with SIGINT (Ctrl-C) on exit."""
    port = _free_port()
    stderr_path = tmp_path / f"viz-{port}.stderr"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "abm.cli", "viz", *map(str, args), "--port", str(port),
                                 "--no-browser"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        try:
            first = lines.get(timeout=90)
        except queue.Empty:
            first = ""
        match = re.search(r"at (http://\S+)", first)
        assert match, f"tme viz did not start: {first!r}\n{stderr_path.read_text()}"
        proc.lines, proc.stderr_path = lines, stderr_path
        yield match.group(1), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def assert_stopped_cleanly(proc) -> None:
    """Ctrl-C ends the server with status 0, a last line, and no traceback."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    out = []
    while not proc.lines.empty():
        out.append(proc.lines.get())
    err = proc.stderr_path.read_text()
    assert "tme viz: stopped" in "".join(out)
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium driven by Playwright, or a skip saying why there is none."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (test extra)")
    binary = os.environ.get("TME_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(binary).is_file():
        pytest.skip(f"Chromium is not installed ({binary} not found; apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=binary, args=[
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except Exception as exc:  # a broken install or a missing library
            pytest.skip(f"Chromium at {binary} cannot start: {str(exc).splitlines()[0]}")
        yield browser
        browser.close()


def _screenshot(page, tmp_path, name) -> Path:
    path = _artefact_dir(tmp_path) / name
    page.screenshot(path=str(path))
    print(f"tme viz screenshot: {path}")
    return path


def _counts(text: str) -> dict[str, int]:
    """``tumour cells 208 · CD8 3 · ...`` as {label: number}."""
    return {label: int(n) for label, n in (part.rsplit(" ", 1) for part in text.split(" · "))}


# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_live_page_steps_resets_with_slider_values(chromium, tmp_path):
    from playwright.sync_api import expect

    with viz_server([QUICKSTART, *SMALL_LIVE], tmp_path) as (url, proc):
        page = chromium.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        status, counts = page.locator(".tme-status"), page.locator(".tme-counts")
        expect(status).to_contain_text("step 0 of 3360 · t = 0 min", timeout=PAGE_TIMEOUT_MS)
        before = _counts(counts.inner_text())
        assert before["CD8"] == 0 and before["tumour cells"] > 100
        lattice = page.locator("img").first
        first_image = lattice.get_attribute("src")

        for k in range(1, 4):
            page.get_by_role("button", name="Step").click()
            expect(status).to_contain_text(f"step {k} of 3360 · t = {6 * k} min", timeout=20_000)
        after = _counts(counts.inner_text())
        assert after["CD8"] > 0  # recruited at vessels: the count on the page follows the model
        assert lattice.get_attribute("src") != first_image  # the lattice was redrawn
        _screenshot(page, tmp_path, "viz_live.png")

        # the antigenicity slider (third in the sidebar, after play interval and steps per redraw) applies on Reset
        antigenicity = page.locator(".tme-parameter").first
        expect(antigenicity).to_have_text("tumour antigenicity q: 0.8")
        slider = page.get_by_role("slider").nth(2)
        slider.focus()
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        expect(antigenicity).to_have_text("tumour antigenicity q: 0.8 (on Reset: 0.7)")
        expect(status).to_contain_text("step 3 ")  # the running model is not changed
        page.get_by_role("button", name="Reset").click()
        expect(status).to_contain_text("step 0 of 3360", timeout=20_000)
        expect(antigenicity).to_have_text("tumour antigenicity q: 0.7")
        assert _counts(counts.inner_text())["CD8"] == 0
        _screenshot(page, tmp_path, "viz_live_reset.png")

        page.get_by_role("button", name="▶").click()  # play, then Ctrl-C the server while it simulates
        expect(status).to_contain_text(re.compile(r"step [1-9]\d* of 3360"), timeout=20_000)
        assert_stopped_cleanly(proc)
        page.close()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Two hours of the quickstart scene (immune layer and nivolumab) on 30 x 30 voxels, snapshots every 30 min."""
    cfg = quickstart_scene(["grid.shape=[30,30]", "backend=numpy", "time.duration_min=120",
                            "output.snapshot_interval_min=30", "output.summary_plot=false",
                            "immune.tcell.recruitment_per_min=0.5"], immune=True, therapy=True)
    return run_simulation(cfg, tmp_path_factory.mktemp("viz") / "run", progress=False).h5_path


@pytest.mark.browser
def test_replay_page_shows_first_and_last_snapshot(chromium, small_run, tmp_path):
    from playwright.sync_api import expect

    with open_run(small_run) as run:
        times = list(run.times)
    assert times == [0.0, 30.0, 60.0, 90.0, 120.0]
    with viz_server([small_run], tmp_path) as (url, proc):
        page = chromium.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        status = page.locator(".tme-status")
        expect(status).to_have_text("snapshot 1 of 5 · t = 0 min (0.00 d)", timeout=PAGE_TIMEOUT_MS)
        lattice = page.locator("img").first
        first_image = lattice.get_attribute("src")
        _screenshot(page, tmp_path, "viz_replay_first.png")
        page.get_by_role("slider").first.focus()
        page.keyboard.press("End")
        expect(status).to_have_text("snapshot 5 of 5 · t = 120 min (0.08 d)", timeout=20_000)
        expect(lattice).not_to_have_attribute("src", first_image)
        _screenshot(page, tmp_path, "viz_replay_last.png")
        page.close()
        assert_stopped_cleanly(proc)


# ----------------------------------------------------------------------------------------------------------------
# Figures and parameters, without a browser
def test_agent_masks_mark_each_cell_type_and_state():
    from abm.adapters.viz.render import agent_masks

    shape = (4, 3)
    tables = {
        "tumour": {"voxel": np.array([0, 11])},
        "tcell": {"voxel": np.array([1, 2, 5]), "is_treg": np.array([False, True, False]),
                  "exhaustion": np.array([0.2, 0.0, 1.5], dtype=np.float32)},
        "macrophage": {"voxel": np.array([6, 7, 8, 9]), "state": np.array([0, 1, 2, 2], dtype=np.int8)},
    }
    masks = agent_masks(shape, tables)
    flat = {name: sorted(np.flatnonzero(mask).tolist()) for name, mask in masks.items()}
    assert flat == {"tumour": [0, 11], "cd8": [1], "cd8_exhausted": [5], "treg": [2], "macrophage_m0": [6],
                    "macrophage_m1": [7], "macrophage_m2": [8, 9]}
    assert all(mask.shape == shape for mask in masks.values())


def test_replay_planes_are_the_snapshot_slices(tmp_path):
    from abm.adapters.viz.render import lattice_figure, run_planes

    cfg = quickstart_scene(["grid.shape=[16,16,12]", "backend=numpy", "time.duration_min=12",
                            "output.snapshot_interval_min=6", "output.summary_plot=false",
                            "initial.tumour.radius_um=100"])
    h5 = run_simulation(cfg, tmp_path / "run3d", progress=False).h5_path
    with open_run(h5) as run:
        last = len(run) - 1
        t = run.times[last]
        masks, oxygen, label = run_planes(run, last, "oxygen", z=4)
        np.testing.assert_array_equal(oxygen, run.fields(t)["oxygen"][:, :, 4])
        tumour = np.zeros(run.shape, dtype=bool)
        tumour.reshape(-1)[run.agents(t, "tumour")["voxel"]] = True
        np.testing.assert_array_equal(masks["tumour"], tumour[:, :, 4])
        assert masks["tumour"].any() and oxygen.shape == (16, 16) and label == "oxygen (mmHg)"
        _, middle, _ = run_planes(run, last, "oxygen")  # default: the middle plane
        np.testing.assert_array_equal(middle, run.fields(t)["oxygen"][:, :, 6])
    fig = lattice_figure(masks, oxygen, label, limits=(0.0, 40.0))
    cells, field, bar = fig.axes
    assert bar.get_ylabel() == "oxygen (mmHg)" and field.images[0].get_clim() == (0.0, 40.0)
    assert {t.get_text() for t in cells.get_legend().get_texts()} >= {"tumour", "vessels", "necrotic"}


def test_live_planes_follow_the_model():
    from abm.adapters.mesa_model import TMEModel
    from abm.adapters.viz.render import live_field_names, live_planes, population_figure

    model = TMEModel(quickstart_scene(["grid.shape=[20,20,10]", "backend=numpy", "initial.tumour.radius_um=80",
                                       "immune.tcell.recruitment_per_min=0.5"], immune=True))
    for _ in range(2):
        model.step()
    names = live_field_names(model)
    assert "oxygen" in names and "ecm" in names and "vessels" not in names  # masks are drawn as cells
    shape = model.simulation.world.shape
    tcells = model.agents_frame("tcell")
    assert len(tcells) > 0
    x, y, z = np.unravel_index(tcells["voxel"].to_numpy(), shape)
    masks, oxygen, label = live_planes(model, "oxygen", z=int(z[0]))
    np.testing.assert_array_equal(oxygen, model.field("oxygen")[:, :, z[0]])
    np.testing.assert_array_equal(masks["vessels"], model.field("vessels")[:, :, z[0]])
    expected = np.zeros(shape[:2], dtype=bool)
    expected[x[z == z[0]], y[z == z[0]]] = True  # the T cells in that plane, whatever their state
    np.testing.assert_array_equal(masks["cd8"] | masks["cd8_exhausted"] | masks["treg"], expected)
    assert label == "oxygen (mmHg)"
    frame = model.datacollector.get_model_vars_dataframe()
    fig = population_figure({c: frame[c].to_numpy() for c in frame.columns})
    assert [ax.get_title() for ax in fig.axes[:2]] == ["Tumour and stroma", "Immune cells"]


def test_parameter_sliders_reach_the_model_on_reset():
    pytest.importorskip("solara", reason="the viz extra is not installed")
    from abm.adapters.mesa_model import TMEModel
    from abm.adapters.viz.app import config_value, parameter_lines, parameter_sliders, pd1_dose_key
    from abm.config import load_config

    config = load_config(QUICKSTART, ["grid.shape=[20,20]", 'backend="numpy"'])
    assert pd1_dose_key(config) == "therapy.nivolumab.schedule.dose_mg_per_kg"
    sliders = parameter_sliders(config)
    assert {k: s.value for k, s in sliders.items()} == {
        "tumour__antigenicity_initial": 0.8, "immune__ecm__initial_stroma": 0.1,
        "therapy__nivolumab__schedule__dose_mg_per_kg": 3.0}
    chosen = {"tumour__antigenicity_initial": 0.4, "immune__ecm__initial_stroma": 0.5,
              "therapy__nivolumab__schedule__dose_mg_per_kg": 10.0}
    model = TMEModel(config=config, **chosen)  # what Mesa's Reset does with the slider values
    assert {k: config_value(model.config, k) for k in chosen} == chosen
    assert model.config.grid.shape == [20, 20]  # the rest of the config is kept
    assert parameter_lines(config, sliders, {"tumour__antigenicity_initial": 0.4})[0] == \
        "tumour antigenicity q: 0.8 (on Reset: 0.4)"
    untreated = load_config(QUICKSTART, ["therapy={}"])
    assert pd1_dose_key(untreated) is None and len(parameter_sliders(untreated)) == 2


# ----------------------------------------------------------------------------------------------------------------
# Errors before any server starts
@pytest.mark.parametrize("name, expected", [("nothing.toml", "no such file"), ("nothing.h5", "nothing.h5")])
def test_missing_file_exits_2_with_a_message(tmp_path, capsys, name, expected):
    assert main(["viz", str(tmp_path / name), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tme: error:") and expected in err and str(tmp_path) in err
    assert "Traceback" not in err


def test_bad_arguments_exit_2(tmp_path, capsys, small_run):
    assert main(["viz", str(small_run), "--set", "seed=2", "--no-browser"]) == 2
    assert "--set changes a config" in capsys.readouterr().err
    assert main(["viz", str(QUICKSTART), "--set", "grid.shape=[0,0]", "--no-browser"]) == 2
    assert "grid.shape" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["viz", str(QUICKSTART), "--port", str(port), "--no-browser"]) == 2
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_targets_are_told_apart(small_run):
    from abm.adapters.viz.server import check_target, target_from_env

    run = check_target(small_run.parent)  # a run directory means its sim.h5
    assert (run.path, run.kind, run.overrides) == (small_run.resolve(), "run", ())
    config = check_target(QUICKSTART, ["grid.shape=[20,20]"])
    assert (config.kind, config.overrides) == ("config", ("grid.shape=[20,20]",))
    assert target_from_env(config.to_env()) == config and target_from_env(run.to_env()) == run


def test_missing_file_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "abm.cli", "viz", str(tmp_path / "absent.toml")], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"tme: error: {tmp_path / 'absent.toml'}" in result.stderr and "no such file" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_engine_imports_neither_mesa_nor_solara():
    code = ("import sys, abm, abm.engine, abm.modules, abm.model, abm.adapters, abm.cli, abm.plots, kernels; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mesa', 'solara', 'reacton', 'altair')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
