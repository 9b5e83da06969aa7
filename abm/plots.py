"""Plots of a run file, drawn headless (Agg).

One set of panel functions draws the populations, the tumour burden with RECIST thresholds, the hypoxic
fraction, immune metrics, drug levels and field maps. :func:`plot_summary` (the ``summary.png`` of
``tme run``) and :func:`plot_run` (``tme plot``) both assemble figures from them; ``tme movie`` reuses the
plane extraction and the tissue colours.

Panels whose time series are absent from a run (immune phenotype metrics, drug levels) are skipped and named
in the result, never drawn empty.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abm.analysis import recist_thresholds
from abm.io.run import CELL_LAYERS, RunFile, open_run

__all__ = ["PlotResult", "plane", "plot_run", "plot_summary", "snapshot_planes", "tissue_rgb"]

#: Colours of the cell layers (RGB in [0, 1]) on a white background: the tissue layers of a snapshot
#: (:data:`abm.io.CELL_LAYERS`), then the stromal and immune cells (``abm.adapters.viz.render.agent_masks``), which
#: are drawn over them.
LAYER_COLOURS = {"vessels": (0.15, 0.35, 0.85), "necrotic": (0.25, 0.25, 0.25), "tumour": (0.85, 0.15, 0.15),
                 "caf": (0.95, 0.6, 0.1), "macrophage_m0": (0.6, 0.45, 0.3), "macrophage_m1": (0.0, 0.7, 0.7),
                 "macrophage_m2": (0.9, 0.45, 0.75), "treg": (0.55, 0.2, 0.8), "cd8_exhausted": (0.6, 0.8, 0.55),
                 "cd8": (0.05, 0.6, 0.15)}

# Drug levels: level (or occupancy ratio) series named for a drug compartment, or in a concentration unit.
_DRUG_PREFIXES = ("drug_", "plasma_", "tumour_drug_", "pk_", "occupancy_")
_DRUG_UNITS = ("mg/L", "nM")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _days(ts) -> np.ndarray:
    return ts["time_min"] / 1440.0


def population_metrics(ts: dict, kinds: dict[str, str]) -> list[str]:
    """Names of the count series (cells and voxels per type and state), by their declared kind ``count``."""
    return [k for k in ts if k != "time_min" and kinds.get(k) == "count"]


def event_metrics(ts: dict, kinds: dict[str, str]) -> list[str]:
    """Names of the per-step event series (births, deaths, kills, clearance, recruitment): kind ``event``."""
    return [k for k in ts if k != "time_min" and kinds.get(k) == "event"]


def drug_metrics(ts: dict, kinds: dict[str, str], units: dict[str, str]) -> list[str]:
    """Names of drug level series (plasma PK, tissue concentration, target occupancy).

    A ``level`` or ``ratio`` series whose name starts with a drug prefix (``drug_``, ``plasma_``,
    ``tumour_drug_``, ``pk_``, ``occupancy_``) or whose unit is a concentration (mg/L, nM).
    """
    return [k for k in ts if k != "time_min" and kinds.get(k) in ("level", "ratio")
            and (k.startswith(_DRUG_PREFIXES) or units.get(k) in _DRUG_UNITS)]


# --------------------------------------------------------------------------------------------------------------
# Time-series panels
def draw_populations(ax, ts: dict, kinds: dict[str, str]) -> None:
    """Counts per type and state over time (log scale when they span decades); ``kinds`` as in the file."""
    t = _days(ts)
    names = population_metrics(ts, kinds)
    for name in names:
        ax.plot(t, ts[name], label=name.replace("_", " "))
    top = max((np.nanmax(ts[n]) for n in names if np.isfinite(ts[n]).any()), default=0)
    if top > 1000:
        ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("time (days)")
    ax.set_ylabel("count")
    ax.set_title("Populations")
    ax.legend(loc="best", fontsize=7)


def draw_events(ax, ts: dict, kinds: dict[str, str]) -> None:
    """Births, deaths and other events per recorded step; ``kinds`` as in the file."""
    t = _days(ts)
    for name in event_metrics(ts, kinds):
        ax.plot(t, ts[name], lw=0.8, label=name.replace("_", " "))
    ax.set_xlabel("time (days)")
    ax.set_ylabel("events per step")
    ax.set_title("Events")
    ax.legend(loc="best", fontsize=7)


def draw_burden(ax, ts: dict) -> None:
    """Lesion diameter with the RECIST PR (−30 % from baseline) and PD (+20 % over nadir) thresholds."""
    t = _days(ts)
    d = ts["tumour_diameter_um"]
    th = recist_thresholds(d)
    ax.plot(t, d, color="tab:red", lw=1.6, label="lesion diameter")
    ax.axhline(th["baseline"][0], color="0.3", lw=0.8, ls=":", label="baseline")
    ax.axhline(th["pr"][0], color="tab:green", lw=1.0, ls="--", label="PR: −30 % from baseline")
    ax.plot(t, th["pd"], color="tab:orange", lw=1.0, ls="--", label="PD: +20 % over nadir")
    ax.set_xlabel("time (days)")
    ax.set_ylabel("equivalent diameter (µm)")
    ax.set_title("Tumour burden (RECIST)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=7)


def draw_hypoxia(ax, ts: dict) -> None:
    """Fraction of live tumour cells below the hypoxia threshold."""
    ax.plot(_days(ts), ts["hypoxic_fraction"], color="tab:purple")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time (days)")
    ax.set_ylabel("fraction of live tumour cells")
    ax.set_title("Hypoxic fraction")


# Immune readouts (runs with the immune layer write ``immune_phenotype_code``)
_PHENOTYPE_LABELS = {0: "no tumour", 1: "inflamed", 2: "excluded", 3: "desert"}  # abm.model.PHENOTYPE_CODES


def has_immune_readouts(ts: dict) -> bool:
    """Whether a time series comes from a run with the immune layer."""
    return "immune_phenotype_code" in ts


def _plot_present(ax, ts: dict, names, **kwargs) -> None:
    t = _days(ts)
    for name in names:
        if name in ts:
            ax.plot(t, ts[name], label=name.replace("_", " "), **kwargs)


def draw_immune_cells(ax, ts: dict) -> None:
    """T cells and macrophages per state, with tumour cells killed per step on a second axis."""
    _plot_present(ax, ts, ("tcell_effector", "tcell_exhausted", "tcell_treg", "macrophage_m0", "macrophage_m1",
                           "macrophage_m2"))
    ax.set_xlabel("time (days)")
    ax.set_ylabel("cells")
    ax.set_title("Immune cells")
    ax.legend(loc="upper left", fontsize=7)
    kills = [n for n in ("tumour_killed_by_tcell", "tumour_killed_by_macrophage") if n in ts]
    if kills:
        twin = ax.twinx()
        for name, style in zip(kills, ("-", "--")):
            twin.plot(_days(ts), ts[name], color="0.45", lw=0.7, ls=style, label=name.replace("_", " "))
        twin.set_ylabel("tumour cells killed per step")
        twin.legend(loc="upper right", fontsize=7)


def draw_infiltration(ax, ts: dict) -> None:
    """CD8 density in the tumour core, the invasive margin and the stroma, with the phenotype label over time."""
    t = _days(ts)
    for region, colour in (("core", "tab:red"), ("margin", "tab:orange"), ("stroma", "tab:green")):
        name = f"cd8_density_{region}"
        if name in ts:
            ax.plot(t, ts[name], color=colour, label=f"CD8 {region}")
    ax.set_xlabel("time (days)")
    ax.set_ylabel("CD8 cells per mm²")
    code = np.asarray(ts["immune_phenotype_code"]).astype(int)
    last = _PHENOTYPE_LABELS.get(int(code[-1]), "?") if code.size else "?"
    ax.set_title(f"CD8 infiltration (phenotype now: {last})")
    ax.legend(loc="upper left", fontsize=7)
    twin = ax.twinx()
    twin.step(t, code, where="post", color="0.35", lw=0.8, ls=":")
    twin.set_yticks(list(_PHENOTYPE_LABELS), list(_PHENOTYPE_LABELS.values()), fontsize=7)
    twin.set_ylim(-0.3, 3.3)


def draw_immune_state(ax, ts: dict) -> None:
    """Fractions (exhausted, mean antigenicity, mean PD-L1, priming) and the effector:Treg and M1:M2 ratios."""
    _plot_present(ax, ts, ("exhausted_fraction", "antigenicity_mean", "pdl1_mean", "priming"))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time (days)")
    ax.set_ylabel("fraction / mean (0..1)")
    ax.set_title("Immune state")
    ax.legend(loc="upper left", fontsize=7)
    ratios = [n for n in ("effector_treg_ratio", "m1_m2_ratio") if n in ts]
    if ratios:
        twin = ax.twinx()
        for name, style in zip(ratios, ("-", "--")):
            values = np.asarray(ts[name], dtype=float)
            twin.plot(_days(ts), np.where(np.isfinite(values) & (values > 0), values, np.nan), color="0.3",
                      lw=0.8, ls=style, label=name.replace("_", " "))
        twin.set_yscale("log")
        twin.set_ylabel("ratio")
        twin.legend(loc="lower right", fontsize=7)


IMMUNE_PANELS = (draw_immune_cells, draw_infiltration, draw_immune_state)


def _draw_series(ax, ts: dict, names: list[str], title: str, ylabel: str) -> None:
    for name in names:
        ax.plot(_days(ts), ts[name], label=name.replace("_", " "))
    ax.set_xlabel("time (days)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=7)


# --------------------------------------------------------------------------------------------------------------
# Planes of 2-D and 3-D snapshots
def plane(volume: np.ndarray, view: str = "slice", axis: int = 2, index: int | None = None) -> np.ndarray:
    """A 2-D image of a grid-shaped array.

    Parameters
    ----------
    volume : ndarray, shape (nx, ny) or (nx, ny, nz)
        Field or mask. A 2-D array is returned as is.
    view : {"slice", "projection"}
        The plane at ``index`` across ``axis``, or the maximum along ``axis`` (for masks: any).
    axis : int
        Axis cut or projected (0, 1 or 2).
    index : int, optional
        Slice index; default the middle plane.

    Returns
    -------
    ndarray, 2-D
        Axes in grid order with ``axis`` removed.
    """
    if volume.ndim == 2:
        return volume
    if view == "projection":
        return volume.max(axis=axis)
    index = volume.shape[axis] // 2 if index is None else index
    return np.take(volume, index, axis=axis)


def snapshot_planes(run: RunFile, index: int, layers, view: str = "slice", axis: int = 2,
                    slice_index: int | None = None) -> dict[str, np.ndarray]:
    """Read the 2-D planes of ``layers`` from snapshot ``index``, one snapshot at a time.

    Cell layers (:data:`abm.io.CELL_LAYERS`) come back as bool, fields in their dtype. A 3-D slice reads only
    that plane of each field from the file.
    """
    g = run._group(index)
    out = {}
    for name in layers:
        if name in CELL_LAYERS:
            continue
        ds = g["fields"][name]
        if run.ndim == 3 and view == "slice":
            k = run.shape[axis] // 2 if slice_index is None else slice_index
            sel = tuple(k if a == axis else slice(None) for a in range(3))
            out[name] = run._dataset(ds, sel)
        else:
            out[name] = plane(run._dataset(ds), view, axis, slice_index)
    for name in layers:
        if name not in CELL_LAYERS:
            continue
        if name == "tumour":
            mask = np.zeros(run.shape, dtype=bool)
            if "tumour" in g["agents"]:
                mask.reshape(-1)[run._dataset(g["agents"]["tumour"]["voxel"])] = True
        else:
            ds = _state_layer(g["state"], name)
            mask = run._dataset(ds).astype(bool) if ds is not None else np.zeros(run.shape, dtype=bool)
        out[name] = plane(mask, view, axis, slice_index)
    return {name: out[name] for name in layers}


def _state_layer(state, name: str):
    """The mask ``name`` of a snapshot's state: ``state/<module>/<name>`` (version 2) or ``state/<name>`` (1)."""
    if name in state and not hasattr(state[name], "keys"):
        return state[name]
    for sub in state.values():
        if hasattr(sub, "keys") and name in sub:
            return sub[name]
    return None


def tissue_rgb(masks: dict[str, np.ndarray]) -> np.ndarray:
    """RGB image (float, shape (h, w, 3)) of cell-layer masks on white; later layers of ``LAYER_COLOURS`` win."""
    first = next(iter(masks.values()))
    rgb = np.ones((*first.shape, 3), dtype=np.float32)
    for name, colour in LAYER_COLOURS.items():
        if name in masks:
            rgb[masks[name]] = colour
    return rgb


def _imshow_field(ax, data, vmin=None, vmax=None, cmap="viridis"):
    # Transposed with origin lower so the first grid axis runs left to right, the second bottom to top.
    return ax.imshow(data.T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")


def _imshow_tissue(ax, masks):
    ax.imshow(np.transpose(tissue_rgb(masks), (1, 0, 2)), origin="lower", interpolation="nearest")
    from matplotlib.patches import Patch

    handles = [Patch(color=LAYER_COLOURS[n], label=n) for n in LAYER_COLOURS if n in masks]
    ax.legend(handles=handles, loc="upper right", fontsize=6, framealpha=0.7)


_AXIS_NAMES = "xyz"


def _view_label(run: RunFile, view: str, axis: int, index: int | None) -> str:
    if run.ndim == 2:
        return "full plane"
    if view == "projection":
        return f"max projection along {_AXIS_NAMES[axis]}"
    index = run.shape[axis] // 2 if index is None else index
    return f"slice {_AXIS_NAMES[axis]} = {index}"


def draw_field_maps(fig, run: RunFile, index: int, views) -> None:
    """One row per view (2-D: the plane; 3-D: mid-plane slice and maximum projection): tissue, then fields."""
    fields = run.field_names()
    units = run.field_units(run.times[index])
    layers = [*CELL_LAYERS, *fields]
    axes = fig.subplots(len(views), 1 + len(fields), squeeze=False)
    for row, (view, axis) in enumerate(views):
        planes = snapshot_planes(run, index, layers, view, axis)
        label = _view_label(run, view, axis, None)
        ax = axes[row][0]
        _imshow_tissue(ax, {n: planes[n] for n in CELL_LAYERS})
        ax.set_title(f"cells ({label})", fontsize=9)
        for col, name in enumerate(fields, start=1):
            ax = axes[row][col]
            im = _imshow_field(ax, planes[name])
            unit_label = f"{name} ({units[name]})" if units.get(name) else _field_unit(name)
            fig.colorbar(im, ax=ax, shrink=0.8, label=unit_label)
            ax.set_title(f"{name} ({label})", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])


def _field_unit(name: str) -> str:
    """Colour-bar label of a field in a version-1 file, which stores no units."""
    return {"oxygen": "oxygen (mmHg)"}.get(name, name)


# --------------------------------------------------------------------------------------------------------------
# Figures
def dose_times_days(ts: dict) -> dict[str, np.ndarray]:
    """Per drug, the times (days) of the rows whose step started a dose (from the ``doses_<drug>`` series)."""
    t = _days(ts)
    return {k[len("doses_"):]: t[np.nan_to_num(ts[k]) > 0] for k in ts if k.startswith("doses_")}


def mark_doses(ax, ts: dict) -> None:
    """Dose times as triangles along the bottom of ``ax``, one marker colour per drug."""
    for i, (drug, days) in enumerate(sorted(dose_times_days(ts).items())):
        if days.size:
            ax.plot(days, np.zeros_like(days), ls="none", marker="^", ms=7, color=f"C{(i + 4) % 10}",
                    clip_on=False, label=f"{drug} dose")
    if dose_times_days(ts):
        ax.legend(loc="best", fontsize=7)


def _draw_drug_series(ax, ts: dict, names: list[str], title: str, ylabel: str, log: bool) -> None:
    t = _days(ts)
    for name in names:
        y = ts[name]
        if np.isfinite(y).any():
            ax.plot(t, y, lw=1.3, label=name)
    if log and any(np.nanmax(np.where(ts[n] > 0, ts[n], np.nan), initial=0) > 0 for n in names):
        ax.set_yscale("log")
    ax.set_xlabel("time (days)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=7)


def drug_panels(ts: dict) -> list:
    """Drawers of the drug row of the summary: plasma (mg/L), tumour mean (nM), core occupancy; those present."""
    groups = [
        ([k for k in ts if k.startswith("plasma_") and k.endswith("_mg_per_L")], "Plasma level", "mg/L", True),
        ([k for k in ts if k.startswith("tumour_") and k.endswith("_nM")], "Tumour level (mean over cells)", "nM",
         True),
        ([k for k in ts if k.startswith("occupancy_") and k.endswith(("_core", "_plasma"))], "Target occupancy",
         "fraction bound", False),
    ]
    return [functools.partial(_draw_drug_series, names=names, title=title, ylabel=unit, log=log)
            for names, title, unit, log in groups if names]


def plot_summary(h5_path, png_path) -> Path:
    """Write ``summary.png``: populations, tumour burden with RECIST thresholds and hypoxic fraction.

    Runs with the immune layer get a second row: immune cells per state with kills per step, CD8 density per
    region with the phenotype label, and the immune state (exhausted fraction, antigenicity, PD-L1, priming,
    effector:Treg and M1:M2 ratios). Runs with therapies mark the doses on the burden panel and get a third row:
    plasma levels, tumour levels and target occupancy in the core.

    Parameters
    ----------
    h5_path : path-like
        Run file.
    png_path : path-like
        Output image.

    Returns
    -------
    Path
        ``png_path``.
    """
    plt = _pyplot()
    with open_run(h5_path) as run:
        ts = run.timeseries()
        kinds = run.timeseries_kinds()
    panels = [functools.partial(draw_populations, kinds=kinds)]
    if "tumour_diameter_um" in ts:
        panels.append(lambda ax, ts: (draw_burden(ax, ts), mark_doses(ax, ts)))
    if "hypoxic_fraction" in ts:
        panels.append(draw_hypoxia)
    rows = [panels]
    if has_immune_readouts(ts):
        rows.append(list(IMMUNE_PANELS))
    if drug_panels(ts):
        rows.append(drug_panels(ts))
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(5.2 * ncols, 3.8 * len(rows)), constrained_layout=True,
                             squeeze=False)
    for row, drawers in zip(axes, rows):
        for ax, draw in zip(row, drawers):
            draw(ax, ts)
        for ax in row[len(drawers):]:
            ax.set_visible(False)
    fig.suptitle(Path(h5_path).parent.name)
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


@dataclass
class PlotResult:
    """What :func:`plot_run` wrote and which panels it skipped (name -> reason)."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def plot_run(h5_path, out_dir, times=None, dpi: int = 110) -> PlotResult:
    """Write the PNGs of ``tme plot`` for a run file.

    Parameters
    ----------
    h5_path : path-like
        Run file.
    out_dir : path-like
        Directory for the PNGs (created).
    times : sequence of float, optional
        Times (min) of the field maps; each uses the snapshot at or just before it. Default: the first, middle
        and last snapshot.
    dpi : int
        Resolution of the PNGs.

    Returns
    -------
    PlotResult
        ``populations.png``, ``burden.png`` (when the diameter series exists), ``hypoxia.png``, ``immune.png``
        and ``drugs.png`` (when their series exist) and ``fields_t<T>.png`` per map time.

    Raises
    ------
    abm.io.RunFileError
        If the file is unusable or a time lies outside the run.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = PlotResult()

    def save(fig, name):
        path = out_dir / name
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        result.written.append(path)

    with open_run(h5_path) as run:
        ts = run.timeseries()
        kinds, units = run.timeseries_kinds(), run.timeseries_units()
        indices = _map_indices(run, times)
        title = run.config_dict().get("name") or Path(h5_path).parent.name
        if ts and "time_min" in ts:
            fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
            draw_populations(axes[0], ts, kinds)
            draw_events(axes[1], ts, kinds)
            fig.suptitle(f"{title}: populations")
            save(fig, "populations.png")
            for name, draw, needed in (("burden", draw_burden, "tumour_diameter_um"),
                                       ("hypoxia", draw_hypoxia, "hypoxic_fraction")):
                if needed in ts:
                    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
                    draw(ax, ts)
                    save(fig, f"{name}.png")
                else:
                    result.skipped[name] = f"no '{needed}' time series in this run"
            if has_immune_readouts(ts):
                fig, axes = plt.subplots(1, len(IMMUNE_PANELS), figsize=(5.4 * len(IMMUNE_PANELS), 4),
                                         constrained_layout=True)
                for ax, draw in zip(axes, IMMUNE_PANELS):
                    draw(ax, ts)
                fig.suptitle(f"{title}: immune readouts")
                save(fig, "immune.png")
            else:
                result.skipped["immune"] = "not available (the run has no immune layer)"
            for name, names, title_, ylabel in (
                ("drugs", drug_metrics(ts, kinds, units), "Drug levels", "concentration / occupancy"),
            ):
                if names:
                    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
                    _draw_series(ax, ts, names, title_, ylabel)
                    save(fig, f"{name}.png")
                else:
                    result.skipped[name] = "not available (no such time series in this run)"
        else:
            result.skipped["timeseries"] = "the file holds no time series"

        views = [("slice", 2)] if run.ndim == 2 else [("slice", 2), ("projection", 2)]
        n_fields = len(run.field_names()) if len(run) else 0
        for index in indices:
            fig = plt.figure(figsize=(3.6 * (1 + n_fields), 3.3 * len(views)), constrained_layout=True)
            draw_field_maps(fig, run, index, views)
            t = run.times[index]
            fig.suptitle(f"{title}: t = {t:g} min ({t / 1440:.2f} d)")
            save(fig, f"fields_t{t:g}.png")
    return result


def _map_indices(run: RunFile, times) -> list[int]:
    if not len(run):
        return []
    if times is None:
        return sorted({0, len(run) // 2, len(run) - 1})
    return list(dict.fromkeys(run.index_at(t) for t in times))
