"""Several runs in one figure: tumour burden against a common baseline, immune readouts and drug levels.

``tme compare A.h5 B.h5 ... -o compare.png`` draws, one colour per run,

- the lesion diameter as % change from the common baseline with the RECIST 1.1 PR (−30 %) and PD (+20 %)
  thresholds and the dose times as ticks, and the tumour cell count;
- the immune readouts (effector T cells, CD8 density in the core and margin, mean PD-L1) where runs have them;
- the drug levels (plasma in mg/L on a log scale, tumour concentration in nM, target occupancy) where runs have
  them;

and returns a table per run: final time, final diameter change, best response (RECIST 1.1) and doses per drug.

The common baseline is the first time every run has reached: runs branched from one parent with ``tme replay``
start at the branch time, so it is the latest of the runs' first times, and each run's diameter is interpolated
there. Only the time series and attributes of the files are read, never a snapshot.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from abm.analysis import RECIST_PD_RISE, RECIST_PR_DROP, RECIST_SD_MIN_DAYS, best_response
from abm.io.run import open_run
from abm.plots import _days, _pyplot, drug_metrics

__all__ = ["RECIST_SD_MIN_DAYS", "CompareResult", "CompareRow", "RunSeries", "best_response", "compare_runs",
           "common_baseline_min", "default_labels", "format_table", "load_run_series", "parse_labels",
           "therapy_label"]

_TIME_TOL_MIN = 1e-6

# Immune panels: (panel name, title, series drawn with their line styles).
_IMMUNE_PANELS = (
    ("tcell_effector", "Effector T cells", (("tcell_effector", "-"),)),
    ("cd8_density", "CD8 density (core —, margin - -)", (("cd8_density_core", "-"), ("cd8_density_margin", "--"))),
    ("pdl1_mean", "Mean PD-L1 of tumour cells", (("pdl1_mean", "-"),)),
)
_DOSE_PREFIX = "doses_"
_DRUG_STYLES = ("-", "--", ":", "-.")
_DOSE_MARKERS = ("|", "^", "v", "d", "s")
_PANEL_SIZE_IN = (5.2, 3.8)


@dataclass
class RunSeries:
    """What :func:`compare_runs` reads from one run file: time series and attributes, no snapshot.

    Attributes
    ----------
    path : Path
        The run file.
    ts : dict of str to ndarray of float64, shape (T,)
        Time series, ``time_min`` first (min); series that are NaN throughout are left out.
    kinds, units : dict of str to str
        Kind and unit of each series, as the file stores them.
    therapies : list of dict
        The ``[therapy.<name>]`` tables of the run's config, each with ``name``.
    shape : tuple of int
        Lattice shape.
    spacing_um : float
        Voxel edge (µm).
    complete : bool
        Whether the writer closed the file (False: killed, or still running).
    """

    path: Path
    ts: dict
    kinds: dict
    units: dict
    therapies: list
    shape: tuple
    spacing_um: float
    complete: bool = True

    @property
    def t_min(self) -> np.ndarray:
        """Row times (min), shape (T,)."""
        return self.ts["time_min"]

    def doses(self) -> dict[str, np.ndarray]:
        """Dose times (min) per drug: the rows where ``doses_<drug>`` is > 0.

        A row's time is the end of the step during which the dose was given. The event series are told by their
        name, which is the therapy module's contract, not by their kind.
        """
        out = {}
        for name, values in self.ts.items():
            if name.startswith(_DOSE_PREFIX):
                out[name[len(_DOSE_PREFIX):]] = self.t_min[np.nan_to_num(values, nan=0.0) > 0]
        return out


@dataclass
class CompareRow:
    """One run in the table of :func:`compare_runs`.

    ``final_diameter_change_pct`` is ``None`` where the run has no diameter series or a zero baseline; the best
    response is then ``"NE"`` (not evaluable), as it is for a run with no time point after the baseline.
    """

    label: str
    file: str
    start_time_days: float
    final_time_days: float
    baseline_diameter_um: float | None
    final_diameter_change_pct: float | None
    best_response: str
    doses: dict[str, int]


@dataclass
class CompareResult:
    """What :func:`compare_runs` wrote and found.

    Attributes
    ----------
    figure : Path
        The image written.
    size_px : tuple of int
        Its width and height (pixels).
    baseline_time_min : float
        The common baseline time (min).
    rows : list of CompareRow
        One per run, in the order given.
    drugs : list of str
        Drugs with a dose series in any run (the columns of the dose counts).
    skipped : dict of str to str
        Panels not drawn, and why.
    partial : dict of str to list of str
        Panels drawn without some runs: the labels of the runs lacking their series.
    warnings : list of str
        Things the user should know (different grids).
    """

    figure: Path
    size_px: tuple[int, int]
    baseline_time_min: float
    rows: list[CompareRow] = field(default_factory=list)
    drugs: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    partial: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-able values (what ``tme compare --json`` prints)."""
        return {
            "figure": str(self.figure),
            "size_px": list(self.size_px),
            "baseline_time_days": self.baseline_time_min / 1440.0,
            "runs": [asdict(row) for row in self.rows],
            "drugs": list(self.drugs),
            "skipped": dict(self.skipped),
            "partial": {k: list(v) for k, v in self.partial.items()},
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------------------------------------------
# Reading and the table
def load_run_series(path) -> RunSeries:
    """Read the time series, their kinds and units, the therapies and the grid of a run file.

    Raises
    ------
    abm.io.RunFileError
        If the file is unusable or holds no time-series row.
    """
    from abm.io.reader import RunFileError

    with open_run(path) as run:
        ts = run.timeseries()
        if "time_min" not in ts or not len(ts["time_min"]):
            raise RunFileError(f"{run.path}: holds no time-series rows; nothing to compare")
        # Every declared metric has a dataset; one that never got a value (NaN throughout) is absent in effect.
        ts = {k: v for k, v in ts.items() if k == "time_min" or np.isfinite(v).any()}
        return RunSeries(path=run.path, ts=ts, kinds=run.timeseries_kinds(), units=run.timeseries_units(),
                         therapies=run.therapies(), shape=run.shape, spacing_um=run.spacing_um,
                         complete=run.complete)


def therapy_label(therapies: list[dict]) -> str:
    """``"nivolumab + ipilimumab"`` from the therapies' names; ``"no therapy"`` when there are none."""
    names = [str(t.get("name", "?")) for t in therapies]
    return " + ".join(names) if names else "no therapy"


def default_labels(runs: list[RunSeries]) -> list[str]:
    """A label per run: its therapies, or the file's directory name where two runs would share a label.

    Where directory names collide too, the file name is added (``dir/sim.h5``), and a number as a last resort.
    """
    labels = [therapy_label(r.therapies) for r in runs]
    counts = Counter(labels)
    labels = [r.path.resolve().parent.name if counts[label] > 1 else label for r, label in zip(runs, labels)]
    counts = Counter(labels)
    labels = [f"{r.path.resolve().parent.name}/{r.path.name}" if counts[label] > 1 else label
              for r, label in zip(runs, labels)]
    seen: Counter = Counter()
    out = []
    for label in labels:
        seen[label] += 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def parse_labels(text: str, n_runs: int) -> list[str]:
    """Split ``--labels a,b,c`` into one label per run.

    Raises
    ------
    ValueError
        If the number of labels differs from ``n_runs`` or a label is empty.
    """
    labels = [s.strip() for s in text.split(",")]
    if len(labels) != n_runs:
        raise ValueError(f"--labels {text!r}: {len(labels)} label(s) for {n_runs} run file(s)")
    if not all(labels):
        raise ValueError(f"--labels {text!r}: a label is empty")
    return labels


def common_baseline_min(runs: list[RunSeries]) -> float:
    """The first time all runs share (min): the latest of their first times.

    Raises
    ------
    ValueError
        If some run ends before another starts, so that they share no time.
    """
    start = max(float(r.t_min[0]) for r in runs)
    for r in runs:
        if float(r.t_min[-1]) < start - _TIME_TOL_MIN:
            raise ValueError(f"{r.path}: ends at t = {r.t_min[-1]:g} min, before another run starts "
                             f"(t = {start:g} min); the runs share no time to compare from")
    return start


def _at(t: np.ndarray, values: np.ndarray, time_min: float) -> float:
    """``values`` interpolated at ``time_min`` over its finite points; NaN where there is none."""
    ok = np.isfinite(values)
    if not ok.any():
        return float("nan")
    return float(np.interp(time_min, t[ok], values[ok]))


def _from_baseline(run: RunSeries, name: str, t0: float) -> np.ndarray:
    """Series ``name`` from the baseline on: its value interpolated at ``t0``, then every row after it."""
    t, values = run.t_min, np.asarray(run.ts[name], dtype=np.float64)
    after = t > t0 + _TIME_TOL_MIN
    return np.concatenate([[_at(t, values, t0)], values[after]])


def _row(run: RunSeries, label: str, t0: float, sd_min_days: float) -> CompareRow:
    baseline = change = None
    response = "NE"
    if "tumour_diameter_um" in run.ts:
        d = _from_baseline(run, "tumour_diameter_um", t0)
        cells = _from_baseline(run, "tumour_cells", t0) if "tumour_cells" in run.ts else None
        times = np.concatenate([[t0], run.t_min[run.t_min > t0 + _TIME_TOL_MIN]])
        response = best_response(times, d, cells, sd_min_days)
        finite = d[np.isfinite(d)]
        if np.isfinite(d[0]):
            baseline = float(d[0])
            if baseline > 0 and finite.size:
                change = 100.0 * (float(finite[-1]) / baseline - 1.0)
    return CompareRow(label=label, file=str(run.path), start_time_days=float(run.t_min[0]) / 1440.0,
                      final_time_days=float(run.t_min[-1]) / 1440.0, baseline_diameter_um=baseline,
                      final_diameter_change_pct=change, best_response=response,
                      doses={drug: int(times.size) for drug, times in run.doses().items()})


def _grid_warning(runs: list[RunSeries], labels: list[str]) -> str | None:
    grids = [(tuple(r.shape), r.spacing_um) for r in runs]
    if len(set(grids)) <= 1:
        return None
    text = ", ".join(f"{label}: {'x'.join(map(str, shape))} voxels of {dx:g} µm"
                     for label, (shape, dx) in zip(labels, grids))
    return f"the runs have different grids ({text}); their time series are compared as they are"


def format_table(result: CompareResult) -> str:
    """The table of :func:`compare_runs` as aligned text, one line per run."""
    head = ["run", "final (d)", "diameter vs baseline", "best response", *[f"doses {d}" for d in result.drugs]]
    lines = []
    for row in result.rows:
        change = "n/a" if row.final_diameter_change_pct is None else f"{row.final_diameter_change_pct:+.1f} %"
        lines.append([row.label, f"{row.final_time_days:.2f}", change, row.best_response,
                      *[str(row.doses.get(d, 0)) for d in result.drugs]])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    title = f"baseline: t = {result.baseline_time_min / 1440:.2f} d (the first time all runs share)"
    return "\n".join([title, fmt(head), *[fmt(cells) for cells in lines]])


# --------------------------------------------------------------------------------------------------------------
# Panels
def _colours(n: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _mark_baseline(ax, t0: float, runs: list[RunSeries]) -> None:
    if any(float(r.t_min[0]) < t0 - _TIME_TOL_MIN for r in runs):
        ax.axvline(t0 / 1440.0, color="0.5", lw=0.8, ls=":")


def _draw_burden(ax, runs, labels, colours, t0: float) -> tuple[list, list]:
    """Diameter change from the common baseline (%), RECIST thresholds, and dose ticks along the bottom.

    Returns the legend's handles and names (runs, thresholds, dose markers), drawn beside the panel.
    """
    from matplotlib.lines import Line2D

    drugs = sorted({drug for r in runs for drug in r.doses()})
    for i, (run, label, colour) in enumerate(zip(runs, labels, colours)):
        if "tumour_diameter_um" not in run.ts:
            continue
        d = np.asarray(run.ts["tumour_diameter_um"], dtype=np.float64)
        d0 = _at(run.t_min, d, t0)
        if np.isfinite(d0) and d0 > 0:
            ax.plot(_days(run.ts), 100.0 * (d / d0 - 1.0), color=colour, lw=1.5, label=label)
        # Ticks at the row times (the end of the step a dose was given in), one strip per run.
        y = 0.03 + 0.04 * i
        for drug, times in run.doses().items():
            if times.size:
                ax.plot(times / 1440.0, np.full(times.size, y), ls="none", color=colour, ms=9, mew=1.5,
                        marker=_DOSE_MARKERS[drugs.index(drug) % len(_DOSE_MARKERS)],
                        transform=ax.get_xaxis_transform())
    ax.axhline(0.0, color="0.3", lw=0.8, ls=":")
    ax.axhline(-100 * RECIST_PR_DROP, color="tab:green", lw=1.0, ls="--",
               label=f"PR: −{100 * RECIST_PR_DROP:g} %")
    ax.axhline(100 * RECIST_PD_RISE, color="tab:orange", lw=1.0, ls="--",
               label=f"PD: +{100 * RECIST_PD_RISE:g} % (RECIST: over the nadir)")
    _mark_baseline(ax, t0, runs)
    handles, names = ax.get_legend_handles_labels()
    dosed = {drug for r in runs for drug, times in r.doses().items() if times.size}
    for k, drug in enumerate(drugs):
        if drug not in dosed:
            continue
        handles.append(Line2D([], [], ls="none", color="0.3", ms=9, mew=1.5,
                              marker=_DOSE_MARKERS[k % len(_DOSE_MARKERS)]))
        names.append(f"dose: {drug}")
    ax.set_xlabel("time (days)")
    ax.set_ylabel("lesion diameter vs baseline (%)")
    ax.set_title(f"Tumour burden (baseline day {t0 / 1440:.2f})")
    return handles, names


def _draw_lines(ax, runs, colours, series, t0: float, title: str, ylabel: str, log: bool = False,
                legend_styles: bool = False) -> list[int]:
    """Series ``(name, style)`` of each run in its colour; returns the indices of runs that had none of them."""
    from matplotlib.lines import Line2D

    missing, styles_used, top = [], {}, 0.0
    for i, (run, colour) in enumerate(zip(runs, colours)):
        drawn = False
        for name, style in series:
            if name not in run.ts:
                continue
            values = np.asarray(run.ts[name], dtype=np.float64)
            if log:  # zeros (before the first dose) have no place on a log axis
                values = np.where(values > 0, values, np.nan)
            if np.isfinite(values).any():
                top = max(top, float(np.nanmax(values)))
            ax.plot(_days(run.ts), values, color=colour, ls=style, lw=1.2)
            styles_used[name] = style
            drawn = True
        if not drawn:
            missing.append(i)
    if log and top > 0:
        ax.set_yscale("log")
        # Six decades below the peak: a short-lived drug washing out would otherwise stretch the axis to 1e-300.
        ax.set_ylim(top * 1e-6, top * 2.0)
    _mark_baseline(ax, t0, runs)
    if legend_styles and styles_used:
        ax.legend([Line2D([], [], color="0.3", ls=s) for s in styles_used.values()],
                  [_drug_name(n) for n in styles_used], loc="best", fontsize=7)
    ax.set_xlabel("time (days)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return missing


def _drug_name(series: str) -> str:
    """The drug (or target) a series is about: ``plasma_nivolumab_mg_per_L`` gives ``nivolumab``."""
    name = series
    for prefix in ("plasma_", "tumour_drug_", "tumour_", "drug_", "pk_", "occupancy_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    for suffix in ("_mg_per_L", "_nM"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("_", " ")


def _drug_series(runs: list[RunSeries]) -> dict[str, list[str]]:
    """Drug series of all runs by panel: ``plasma`` (mg/L), ``tumour`` (nM) and ``occupancy`` (0..1).

    The stored unit decides where there is one; files that store none are sorted by name.
    """
    panels: dict[str, list[str]] = {"plasma": [], "tumour": [], "occupancy": []}
    for run in runs:
        names = set(drug_metrics(run.ts, run.kinds, run.units))
        # tumour_<drug>_nM carries no drug prefix of abm.plots: found by its name where its unit is missing.
        names |= {n for n in run.ts if n.startswith("tumour_") and n.endswith("_nM")
                  and run.kinds.get(n) in ("level", "ratio")}
        for name in sorted(names):
            unit = run.units.get(name, "")
            if name.startswith("occupancy_"):
                panel = "occupancy"
            elif unit == "mg/L" or (not unit and name.startswith("plasma_")):
                panel = "plasma"
            elif unit == "nM" or (not unit and name.endswith("_nM")):
                panel = "tumour"
            else:
                continue  # a drug level in another unit has no panel here (tme plot draws it)
            if name not in panels[panel]:
                panels[panel].append(name)
    return panels


# --------------------------------------------------------------------------------------------------------------
# The figure
def compare_runs(paths, out_path, labels=None, dpi: int = 110,
                 sd_min_days: float = RECIST_SD_MIN_DAYS) -> CompareResult:
    """Draw runs in one figure and tabulate their responses.

    Parameters
    ----------
    paths : sequence of path-like
        Run files (``sim.h5``), at least one. Their grids may differ (a warning is returned).
    out_path : path-like
        The image (PNG, or another format matplotlib writes, by its extension; ``.png`` is added to a name
        without one); its directory is created.
    labels : sequence of str, optional
        One label per run; default their therapies (:func:`default_labels`).
    dpi : int
        Resolution; the image is ``5.2 x 3.8`` inches per panel, three panels a row.
    sd_min_days : float
        Minimum time without progression for SD to be a run's best response (:func:`best_response`).

    Returns
    -------
    CompareResult
        The table, the panels skipped and the warnings.

    Raises
    ------
    abm.io.RunFileError
        If a file is missing, truncated, not a tme-abm run or holds no time series.
    ValueError
        If there is no file, the labels do not match the files, the runs share no time, ``dpi`` is not
        positive, the output is one of the inputs, or its format is unknown.
    """
    paths = [Path(p) for p in paths]
    out_path = Path(out_path)
    if not out_path.suffix:  # matplotlib would add it; the result names the file written
        out_path = out_path.with_name(out_path.name + ".png")
    if not paths:
        raise ValueError("compare needs at least one run file")
    if int(dpi) <= 0:
        raise ValueError(f"--dpi {dpi}: must be a positive number of dots per inch")
    if not sd_min_days >= 0:
        raise ValueError(f"--sd-min-days {sd_min_days}: must be a number of days, 0 or more")
    if any(p.exists() and out_path.exists() and p.resolve() == out_path.resolve() for p in paths):
        raise ValueError(f"{out_path}: is one of the run files; choose another output")
    _check_image_format(out_path)
    runs = [load_run_series(p) for p in paths]
    if labels is None:
        labels = default_labels(runs)
    else:
        labels = [str(label) for label in labels]
        if len(labels) != len(runs):
            raise ValueError(f"{len(labels)} label(s) for {len(runs)} run file(s)")
    t0 = common_baseline_min(runs)
    result = CompareResult(figure=out_path, size_px=(0, 0), baseline_time_min=t0)
    result.rows = [_row(run, label, t0, sd_min_days) for run, label in zip(runs, labels)]
    result.drugs = sorted({drug for r in runs for drug in r.doses()})
    for row in result.rows:  # every run lists every drug, 0 where it was not given
        row.doses = {drug: row.doses.get(drug, 0) for drug in result.drugs}
    warning = _grid_warning(runs, labels)
    if warning:
        result.warnings.append(warning)
    result.warnings += [f"{r.path}: the writer did not close this file (killed, or still running); it is "
                        f"compared up to t = {r.t_min[-1] / 1440:.2f} d" for r in runs if not r.complete]

    rows = _panel_rows(runs, labels, t0, result)
    plt = _pyplot()
    ncols = 3
    width, height = _PANEL_SIZE_IN[0] * ncols, _PANEL_SIZE_IN[1] * len(rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(width, height), constrained_layout=True, squeeze=False)
    try:
        for row_axes, drawers in zip(axes, rows):
            for ax, draw in zip(row_axes, drawers):
                draw(ax)
            for ax in row_axes[len(drawers):]:
                ax.set_visible(False)
        days = [r.t_min[[0, -1]] / 1440.0 for r in runs]
        lo, hi = min(d[0] for d in days), max(d[1] for d in days)
        for ax in axes.flat:
            if ax.get_visible() and ax.get_xlabel() == "time (days)" and hi > lo:
                ax.set_xlim(lo, hi)
        fig.suptitle(" vs ".join(labels) if len(labels) <= 4 else f"{len(labels)} runs")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=dpi)
        result.size_px = (round(width * dpi), round(height * dpi))
    finally:
        plt.close(fig)
    return result


def _check_image_format(out_path: Path) -> None:
    """Refuse an output whose extension matplotlib cannot write, before any file is read."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = out_path.suffix.lower().lstrip(".")
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise ValueError(f"{out_path}: cannot write images of type '.{suffix}'; use one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")


def _panel_rows(runs, labels, t0: float, result: CompareResult) -> list[list]:
    """The figure's rows of drawing functions (each takes an axis); records skipped and partial panels."""
    colours = _colours(len(runs))

    def lines(name, series, title, ylabel, drug=False, **kw):
        def draw(ax):
            missing = _draw_lines(ax, runs, colours, series, t0, title, ylabel, **kw)
            # A run without therapy has no drug levels: that needs no saying.
            missing = [labels[i] for i in missing if not (drug and not runs[i].therapies)]
            if missing:
                result.partial[name] = missing
        return draw

    def present(series) -> bool:
        return any(name in r.ts for r in runs for name, _ in series)

    burden, legend = [], {}

    def draw_burden(ax):
        legend["handles"], legend["names"] = _draw_burden(ax, runs, labels, colours, t0)

    if present([("tumour_diameter_um", "-")]):
        burden.append(draw_burden)
        lacking = [label for r, label in zip(runs, labels) if "tumour_diameter_um" not in r.ts]
        if lacking:
            result.partial["tumour_burden"] = lacking
    else:
        result.skipped["tumour_burden"] = "no run has a 'tumour_diameter_um' time series"
    if present([("tumour_cells", "-")]):
        burden.append(lines("tumour_cells", [("tumour_cells", "-")], "Tumour cells", "live tumour cells"))
    else:
        result.skipped["tumour_cells"] = "no run has a 'tumour_cells' time series"
    burden.append(lambda ax: _draw_table(ax, result, legend))

    immune = []
    for name, title, series in _IMMUNE_PANELS:
        if present(series):
            unit = next((r.units.get(n) for r in runs for n, _ in series if r.units.get(n)), "")
            immune.append(lines(name, series, title, f"{title.split(' (')[0]} ({unit})" if unit else title))
        else:
            result.skipped[name] = f"no run has {' or '.join(repr(n) for n, _ in series)}"

    drug_panels = (("plasma", "Plasma concentration", "concentration (mg/L)", True),
                   ("tumour", "Tumour concentration", "concentration (nM)", True),
                   ("occupancy", "Target occupancy", "fraction of target bound (0..1)", False))
    drugs = []
    found = _drug_series(runs)
    for panel, title, ylabel, log in drug_panels:
        names = found[panel]
        if names:
            series = [(n, _DRUG_STYLES[k % len(_DRUG_STYLES)]) for k, n in enumerate(names)]
            drugs.append(lines(f"drug_{panel}", series, title, ylabel, drug=True, log=log, legend_styles=True))
        else:
            result.skipped[f"drug_{panel}"] = "no run has such a drug series"
    return [row for row in (burden, immune, drugs) if row]


def _draw_table(ax, result: CompareResult, legend: dict) -> None:
    """The response table as a panel (label, final day, diameter change, best response).

    The legend of the burden panel (``legend["handles"]`` and ``legend["names"]``, where it was drawn) goes
    below it, off the curves.
    """
    ax.axis("off")
    cells = [[row.label, f"{row.final_time_days:.1f}",
              "n/a" if row.final_diameter_change_pct is None else f"{row.final_diameter_change_pct:+.0f} %",
              row.best_response] for row in result.rows]
    colours = _colours(len(result.rows))
    table = ax.table(cellText=cells, colLabels=["run", "final day", "diameter", "best"], loc="upper center",
                     cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(4)))
    for i in range(len(cells)):
        table[i + 1, 0].get_text().set_color(colours[i])
    ax.set_title("Best response (RECIST 1.1)")
    if legend.get("handles"):
        ax.legend(legend["handles"], legend["names"], loc="lower center", fontsize=7, ncols=2,
                  title="tumour burden", title_fontsize=7)
