"""The Solara page of ``tme viz``: a live simulation of a config, or the replay of a run file.

``tme viz CONFIG`` runs the config in a :class:`abm.adapters.mesa_model.TMEModel` with the controls of Mesa's
``SolaraViz`` in the sidebar: its ``ModelController`` (Reset, play/pause, Step; the play interval and the steps
per redraw) and its ``ModelCreator`` (the parameter sliders). The main column shows the step and simulated time,
the counts, the lattice (cells beside a chosen field, a z slider for 3-D grids) and the population charts.
Mesa's own ``SolaraViz`` page lays components out in a half-width draggable grid; the lattice and the charts
need the full width, so the page is put together here from the same parts.

Parameter sliders apply on Reset, which builds a new model from the config with the slider values (as every
Mesa model's parameters do); the running model is never changed mid-course. The sidebar shows each parameter's
running value and the value the next Reset applies.

``tme viz RUN.h5`` replays a run file (plain Solara components, no simulation): a slider over its snapshots,
the same lattice view with colour limits fixed over the run, and the run's time series with the shown time
marked.

Each browser tab gets its own model. The target comes from the environment that
:func:`abm.adapters.viz.server.serve` sets; start the page with ``tme viz``.
"""

from __future__ import annotations

import warnings

import numpy as np
import solara

with warnings.catch_warnings():
    # Mesa 3.3's ComponentsView trips Solara's rules-of-hooks check when imported; the warning is Mesa's own.
    warnings.simplefilter("ignore", UserWarning)
    from mesa.visualization import Slider
    from mesa.visualization.solara_viz import ModelController, ModelCreator
    from mesa.visualization.utils import update_counter

from abm.adapters.mesa_model import TMEModel
from abm.adapters.viz.render import (
    lattice_figure,
    live_field_names,
    live_planes,
    population_figure,
    run_planes,
    snapshot_time_label,
)
from abm.adapters.viz.server import VizTarget, target_from_env
from abm.config import Config, load_config
from abm.io.run import open_run
from abm.movie import _colour_limits

__all__ = ["Page", "config_value", "parameter_lines", "parameter_sliders", "pd1_dose_key"]

#: Config keys behind the parameter sliders (the dose key is found per config: :func:`pd1_dose_key`).
ANTIGENICITY_KEY = "tumour.antigenicity_initial"
ECM_KEY = "immune.ecm.initial_stroma"
DOSE_RANGE_MG_PER_KG = (0.5, 10.0)  # nivolumab: 3 mg/kg labelled, 10 mg/kg the highest dose in its trials
PREFERRED_FIELD = "oxygen"
PLAY_INTERVAL_MS = 50  # pause between steps while playing


def _keyword(key: str) -> str:
    """A dotted config key as a ``TMEModel`` keyword (``__`` for ``.``), the form Mesa passes on reset."""
    return key.replace(".", "__")


def pd1_dose_key(config: Config) -> str | None:
    """``therapy.<drug>.schedule.dose_mg_per_kg`` of the config's first anti-PD-1 drug dosed per kg, if any."""
    for name, drug in config.therapy.items():
        targets = {t.target for t in drug.targets}
        if "PD-1" in targets and drug.schedule.dose_mg_per_kg is not None:
            return f"therapy.{name}.schedule.dose_mg_per_kg"
    return None


def parameter_sliders(config: Config) -> dict[str, Slider]:
    """Mesa sliders, by ``TMEModel`` keyword, for tumour antigenicity, stromal ECM and the anti-PD-1 dose.

    Each starts at the config's value; the values are passed to ``TMEModel`` when Reset builds the next model.
    """
    sliders = {
        _keyword(ANTIGENICITY_KEY): Slider("tumour antigenicity q", float(config.tumour.antigenicity_initial),
                                           0.0, 1.0, 0.05),
        _keyword(ECM_KEY): Slider("stromal ECM density", float(config.immune.ecm.initial_stroma), 0.0, 1.0, 0.05),
    }
    dose_key = pd1_dose_key(config)
    if dose_key is not None:
        drug = dose_key.split(".")[1]
        value = float(config.therapy[drug].schedule.dose_mg_per_kg)
        lo, hi = DOSE_RANGE_MG_PER_KG
        sliders[_keyword(dose_key)] = Slider(f"{drug} dose (mg/kg)", value, min(lo, value), max(hi, value), 0.5)
    return sliders


def config_value(config: Config, key: str):
    """The value of a dotted (or ``__``-joined) key in a validated config."""
    node = config
    for part in key.replace("__", ".").split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def parameter_lines(config: Config, sliders: dict[str, Slider], pending: dict) -> list[str]:
    """One line per slider: the running model's value, and the value the next Reset applies where it differs."""
    lines = []
    for keyword, slider in sliders.items():
        running = config_value(config, keyword)
        line = f"{slider.label}: {running:g}"
        if keyword in pending and pending[keyword] != running:
            line += f" (on Reset: {pending[keyword]:g})"
        lines.append(line)
    return lines


def _default_field(names: list[str]) -> str:
    return PREFERRED_FIELD if PREFERRED_FIELD in names else names[0]


@solara.component
def FieldControls(names: list[str], field: solara.Reactive, shape: tuple[int, ...], z: solara.Reactive):
    """The field drop-down and, for a 3-D grid, the z slider of the slice."""
    with solara.Row():
        solara.Select("field", values=names, value=field)
        if len(shape) == 3:
            solara.SliderInt("z slice", value=z, min=0, max=shape[2] - 1)


def _plane_label(z: int | None) -> str:
    """Which plane of a 3-D grid is drawn (empty in 2-D)."""
    return "" if z is None else f"slice z = {z}"


def _population_line(readouts: dict) -> str:
    macrophages = sum(readouts.get(f"macrophage_m{k}", 0) for k in range(3))
    parts = [f"tumour cells {int(readouts.get('tumour_cells', 0))}"]
    if "tcell_effector" in readouts:
        parts += [f"CD8 {int(readouts['tcell_effector'])}", f"Treg {int(readouts.get('tcell_treg', 0))}",
                  f"macrophages {int(macrophages)}"]
    return " · ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Live simulation (Mesa's model controls)
@solara.component
def LatticePanel(model: TMEModel):
    """Step, time and counts, then the lattice: cells beside the chosen field."""
    update_counter.get()  # redraw after every step (Mesa's signal)
    world = model.simulation.world
    names = live_field_names(model)
    field = solara.use_reactive(_default_field(names))
    z = solara.use_reactive(world.shape[2] // 2 if world.ndim == 3 else 0)
    name = field.value if field.value in names else _default_field(names)
    with solara.Column():
        solara.Text(f"step {model.step_index} of {model.config.n_steps} · {snapshot_time_label(model.time_min)}",
                    classes=["tme-status"])
        solara.Text(_population_line(model.readouts()), classes=["tme-counts"])
        FieldControls(names, field, world.shape, z)
        slice_z = z.value if world.ndim == 3 else None
        masks, field_plane, label = live_planes(model, name, slice_z)
        solara.FigureMatplotlib(lattice_figure(masks, field_plane, label, title=_plane_label(slice_z)), format="png")


@solara.component
def ChartsPanel(model: TMEModel):
    """Tumour, stroma and immune counts since step 0, from the model's DataCollector."""
    update_counter.get()
    frame = model.datacollector.get_model_vars_dataframe()
    solara.FigureMatplotlib(population_figure({c: frame[c].to_numpy() for c in frame.columns}), format="png")


@solara.component
def LiveView(target: VizTarget):
    """Mesa's model controls and parameter sliders in the sidebar; the lattice and the charts beside them."""
    config = solara.use_memo(lambda: load_config(target.path, list(target.overrides)), [])
    model = solara.use_reactive(solara.use_memo(lambda: TMEModel(config), []))
    sliders = solara.use_memo(lambda: parameter_sliders(config), [])
    parameters = solara.use_reactive({})  # what Reset passes to TMEModel; ModelCreator fills it
    play_interval = solara.use_reactive(PLAY_INTERVAL_MS)
    steps_per_redraw = solara.use_reactive(1)
    use_threads = solara.use_reactive(False)  # Mesa's drawing in a second thread: off, a step draws before the next

    with solara.AppBar():
        solara.AppBarTitle(f"tme-abm: {config.name}")
    with solara.Sidebar(), solara.Column():
        with solara.Card("Controls"):
            ModelController(model, model_parameters=parameters, play_interval=play_interval,
                            render_interval=steps_per_redraw, use_threads=use_threads)
            solara.SliderInt("play interval (ms)", value=play_interval, min=0, max=1000, step=10)
            solara.SliderInt("steps per redraw", value=steps_per_redraw, min=1, max=50)
        with solara.Card("Parameters (apply on Reset)"):
            ModelCreator(model, {"config": config, **sliders}, model_parameters=parameters)
            with solara.Column(gap="2px"):
                for line in parameter_lines(model.value.config, sliders, parameters.value):
                    solara.Text(line, classes=["tme-parameter"])
    with solara.Column():
        with solara.Card("Lattice"):
            LatticePanel(model.value)
        with solara.Card("Populations"):
            ChartsPanel(model.value)


# ----------------------------------------------------------------------------------------------------------------
# Replay of a run file
def _run_info(path) -> dict:
    """What the replay needs once: snapshot times, fields, shape and the time series."""
    with open_run(path) as run:
        return {"times": np.asarray(run.times, dtype=float), "fields": run.field_names(), "shape": run.shape,
                "ts": run.timeseries(), "name": run.config_dict().get("name") or path.parent.name}


def _limits(path, field: str, z) -> tuple[float, float]:
    """Colour limits of ``field`` over every snapshot (the plane shown), so the scale holds along the slider."""
    from tqdm import tqdm

    with open_run(path) as run, tqdm(disable=True) as bar:
        return _colour_limits(run, range(len(run)), [field], "slice", 2, z, bar)[field]


@solara.component
def ReplayView(target: VizTarget):
    """A run file's snapshots under a time slider, with its time series."""
    info = solara.use_memo(lambda: _run_info(target.path), [])
    times, names, shape = info["times"], info["fields"], info["shape"]
    number = solara.use_reactive(1)  # snapshot number, 1-based as the page shows it
    field = solara.use_reactive(_default_field(names))
    z = solara.use_reactive(shape[2] // 2 if len(shape) == 3 else 0)
    slice_z = z.value if len(shape) == 3 else None
    limits = solara.use_memo(lambda: _limits(target.path, field.value, slice_z), [field.value, slice_z])
    k = min(number.value, len(times)) - 1

    with solara.AppBar():
        solara.AppBarTitle(f"tme-abm replay: {info['name']}")
    with solara.Sidebar(), solara.Column():
        with solara.Card("Snapshot"):
            solara.SliderInt("snapshot", value=number, min=1, max=len(times))
            solara.Text(f"snapshot {k + 1} of {len(times)} · {snapshot_time_label(times[k])}",
                        classes=["tme-status"])
        with solara.Card("Run file"), solara.Column(gap="4px"):
            solara.Text(str(target.path))
            solara.Text(f"{len(shape)}-D grid {' x '.join(map(str, shape))}, {len(times)} snapshots, "
                        f"t = {times[0]:g}-{times[-1]:g} min")
    with solara.Column():
        with solara.Card("Lattice"):
            FieldControls(names, field, shape, z)
            with open_run(target.path) as run:
                masks, field_plane, label = run_planes(run, k, field.value, slice_z)
            title = ", ".join(filter(None, [snapshot_time_label(times[k]), _plane_label(slice_z)]))
            solara.FigureMatplotlib(lattice_figure(masks, field_plane, label, limits, title), format="png")
        if info["ts"]:
            with solara.Card("Populations"):
                solara.FigureMatplotlib(population_figure(info["ts"], now_min=times[k]), format="png")


@solara.component
def Page():
    """The page ``tme viz`` serves: a live simulation of a config, or the replay of a run file."""
    target = target_from_env()
    if target.kind == "run":
        ReplayView(target)
    else:
        LiveView(target)
