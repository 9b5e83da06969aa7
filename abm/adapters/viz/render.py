"""Figures of the interactive view: the lattice (cells beside a chosen field) and the population charts.

They are drawn with the plotting code of :mod:`abm.plots` (tissue colours, field maps, immune panel) on
``matplotlib.figure.Figure`` objects, never through pyplot, so a long-lived server keeps no figures around.
The same functions draw a live :class:`abm.adapters.mesa_model.TMEModel` and a snapshot of a run file.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from abm.io.run import CELL_LAYERS, RunFile
from abm.plots import _imshow_field, _imshow_tissue, _plot_present, draw_immune_cells, plane, snapshot_planes

__all__ = ["agent_masks", "lattice_figure", "live_planes", "population_figure", "run_planes", "snapshot_time_label"]

#: Exhaustion at and above which an effector T cell counts as exhausted (the immune module's readout rule).
EXHAUSTED_AT = 1.0

#: Series of the tumour chart, those present in a run.
TUMOUR_SERIES = ("tumour_cells", "tumour_hypoxic", "necrotic_voxels", "caf_cells")


def _mask(shape: tuple[int, ...], voxels) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask.reshape(-1)[np.asarray(voxels, dtype=np.int64)] = True
    return mask


def agent_masks(shape: tuple[int, ...], tables: Mapping[str, Mapping]) -> dict[str, np.ndarray]:
    """Voxel masks of the tumour, stromal and immune cells from agent tables.

    Parameters
    ----------
    shape : tuple of int
        Lattice shape (2 or 3 axes).
    tables : mapping of str to mapping of str to array
        Agent tables by type (``tumour``, ``caf``, ``tcell``, ``macrophage``), each a mapping of column name to
        host array: a snapshot's ``RunFile.agents`` or a ``TMEModel.agents_frame``. Absent types are skipped.

    Returns
    -------
    dict of str to ndarray of bool, each of ``shape``
        ``tumour``, ``caf``, ``cd8`` (effectors not exhausted), ``cd8_exhausted``, ``treg`` and
        ``macrophage_m0``/``m1``/``m2``, named as in :data:`abm.plots.LAYER_COLOURS`.
    """
    out = {}
    for name in ("tumour", "caf"):
        if name in tables:
            out[name] = _mask(shape, tables[name]["voxel"])
    if "tcell" in tables:
        t = tables["tcell"]
        voxel = np.asarray(t["voxel"], dtype=np.int64)
        treg = np.asarray(t["is_treg"], dtype=bool)
        exhausted = ~treg & (np.asarray(t["exhaustion"]) >= EXHAUSTED_AT)
        out["cd8"] = _mask(shape, voxel[~treg & ~exhausted])
        out["cd8_exhausted"] = _mask(shape, voxel[exhausted])
        out["treg"] = _mask(shape, voxel[treg])
    if "macrophage" in tables:
        m = tables["macrophage"]
        voxel, state = np.asarray(m["voxel"], dtype=np.int64), np.asarray(m["state"])
        for code in (0, 1, 2):  # M0, M1, M2 (abm.modules.immune)
            out[f"macrophage_m{code}"] = _mask(shape, voxel[state == code])
    return out


def live_planes(model, field: str, z: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """The cell masks and one field of a live model, in the plane ``z`` of a 3-D lattice.

    Parameters
    ----------
    model : abm.adapters.mesa_model.TMEModel
        The running model.
    field : str
        A diffusing field or a float layer (``oxygen``, ``chemokine``, ``ecm``, a drug, ...).
    z : int, optional
        Slice index along the third axis of a 3-D lattice (default the middle plane); ignored in 2-D.

    Returns
    -------
    masks : dict of str to 2-D bool ndarray
    field_plane : 2-D ndarray
    label : str
        Field name with its unit, for the colour bar.
    """
    world = model.simulation.world
    tables = {name: model.agents_frame(name) for name in model.agent_tables()}
    volumes = {name: np.asarray(model.field(name), dtype=bool) for name in ("necrotic", "vessels")
               if name in world.layers}
    volumes.update(agent_masks(world.shape, tables))
    masks = {name: plane(volume, "slice", 2, z) for name, volume in volumes.items()}
    spec = world.field_specs.get(field) or world.layer_specs.get(field)
    unit = getattr(spec, "unit", "") or ""
    return masks, plane(np.asarray(model.field(field)), "slice", 2, z), f"{field} ({unit})" if unit else field


def live_field_names(model) -> list[str]:
    """Fields and float layers of a live model that can be drawn as a map (masks are drawn as cells)."""
    world = model.simulation.world
    return [*world.fields, *(n for n, a in world.layers.items() if a.dtype != bool)]


def run_planes(run: RunFile, index: int, field: str, z: int | None = None
               ) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """The cell masks and one field of snapshot ``index`` of a run file (as :func:`live_planes`)."""
    planes = snapshot_planes(run, index, [*CELL_LAYERS, field], "slice", 2, z)
    time_min = float(run.times[index])
    tables = {name: run.agents(time_min, name) for name in run.agent_types(time_min) if name != "tumour"}
    masks = {name: planes[name] for name in CELL_LAYERS}
    masks.update({name: plane(volume, "slice", 2, z) for name, volume in agent_masks(run.shape, tables).items()})
    unit = run.field_units(time_min).get(field, "")
    return masks, planes[field], f"{field} ({unit})" if unit else field


def snapshot_time_label(time_min: float) -> str:
    """``t = 1440 min (1.00 d)``."""
    return f"t = {time_min:g} min ({time_min / 1440:.2f} d)"


def lattice_figure(masks: Mapping[str, np.ndarray], field_plane: np.ndarray, field_label: str,
                   limits: tuple[float, float] | None = None, title: str = ""):
    """Cells (left) and one field with its colour bar (right), as :func:`abm.plots.draw_field_maps` draws them.

    Parameters
    ----------
    masks : mapping of str to 2-D bool ndarray
        Cell masks named as in :data:`abm.plots.LAYER_COLOURS`; later names are drawn over earlier ones.
    field_plane : 2-D ndarray
        Field values in its unit.
    field_label : str
        Colour-bar label.
    limits : (float, float), optional
        Colour limits; default the plane's own range.
    title : str
        Figure title (e.g. the step and time).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    # A fixed layout: constrained layout would take a third of the drawing time of every step.
    fig = Figure(figsize=(10.0, 4.4), dpi=90)
    cells, field_ax = fig.add_axes((0.01, 0.04, 0.38, 0.84)), fig.add_axes((0.52, 0.04, 0.38, 0.84))
    _imshow_tissue(cells, dict(masks))
    cells.get_legend().set_loc("center left")  # beside the lattice: ten cell types would hide a corner of it
    cells.get_legend().set_bbox_to_anchor((1.0, 0.5))
    cells.set_title("cells", fontsize=10)
    lo, hi = limits if limits is not None else (None, None)
    image = _imshow_field(field_ax, field_plane, vmin=lo, vmax=hi)
    bar = make_axes_locatable(field_ax).append_axes("right", size="4%", pad=0.08)  # as tall as the image
    fig.colorbar(image, cax=bar, label=field_label)
    field_ax.set_title(field_label.split(" (")[0], fontsize=10)
    for ax in (cells, field_ax):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def population_figure(ts: Mapping[str, np.ndarray], now_min: float | None = None):
    """Tumour and stroma counts (left) and immune cells per state (right) over time.

    Parameters
    ----------
    ts : mapping of str to 1-D array
        Time series with ``time_min`` (a run file's ``timeseries()`` or a DataCollector frame as columns).
    now_min : float, optional
        Time (min) marked by a vertical line (the snapshot shown in a replay).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    ts = {name: np.asarray(values, dtype=float) for name, values in ts.items()}
    immune = "tcell_effector" in ts or "macrophage_m0" in ts
    fig = Figure(figsize=(10.0, 3.4), dpi=90)
    fig.subplots_adjust(left=0.07, right=0.92, bottom=0.14, top=0.91, wspace=0.3)  # fixed, as the lattice's
    axes = fig.subplots(1, 2 if immune else 1, squeeze=False)[0]
    _plot_present(axes[0], ts, TUMOUR_SERIES)
    axes[0].set_xlabel("time (days)")
    axes[0].set_ylabel("cells / voxels")
    axes[0].set_title("Tumour and stroma")
    axes[0].legend(loc="upper left", fontsize=7)
    if immune:
        draw_immune_cells(axes[1], ts)
    if now_min is not None:
        for ax in axes:
            ax.axvline(now_min / 1440.0, color="0.2", lw=0.8, ls="--")
    return fig
