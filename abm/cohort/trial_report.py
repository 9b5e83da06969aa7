"""The outputs of a virtual trial: the table (Parquet and CSV), ``summary.json``, the figures and ``report.html``.

The report is one self-contained HTML page (figures embedded as base64 PNG): the design, a table per arm (n,
responses, ORR with Wilson and Clopper-Pearson intervals, DCR, median PFS with its interval), the paired
comparisons with the reference arm (McNemar, log-rank), the best-response waterfall, the spider plots, the
Kaplan-Meier curves of progression-free survival, and the patients that failed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from abm.analysis import RECIST_PD_RISE, RECIST_PR_DROP
from abm.cohort.trial_stats import CI_LEVEL, arm_summary, compare_arms

__all__ = ["analysis_set", "format_summary", "trial_summary", "write_outputs"]

_RESPONSE_COLOURS = {"CR": "#1a9850", "PR": "#91cf60", "SD": "#fdae61", "PD": "#d73027", "NE": "#999999"}
_DPI = 100


def analysis_set(table):
    """The evaluable rows: patients whose every arm finished with a best response other than NE (paired design)."""
    if not len(table):
        return table
    ok = table["status"].eq("ok") & table["best_response"].ne("NE")
    return table[ok.groupby(table["patient"]).transform("all").astype(bool)]


def trial_summary(trial, table) -> dict:
    """Per-arm statistics over the analysis set and each arm's paired comparison with the reference arm."""
    data = analysis_set(table)
    arms = {}
    for name, arm in trial.arms.items():
        rows = data[data["arm"] == name].sort_values("patient")
        arms[name] = {"label": arm.label, "regimen": arm.regimen(), **arm_summary(rows)}
    ref = trial.spec.reference
    comparisons = {}
    ref_rows = data[data["arm"] == ref].sort_values("patient")
    for name in trial.arms:
        if name != ref:
            comparisons[name] = compare_arms(ref_rows, data[data["arm"] == name].sort_values("patient"))
    patients = table["patient"].unique().tolist() if len(table) else []
    failed = sorted(set(table.loc[table["status"] != "ok", "patient"])) if len(table) else []
    return {"trial": trial.spec.name, "patients": len(patients), "evaluable_patients": int(data["patient"].nunique()),
            "failed_patients": failed, "reference_arm": ref, "ci_level": CI_LEVEL, "arms": arms,
            "comparisons": comparisons}


def write_outputs(trial, out_dir: Path, table, series: dict) -> tuple[dict, Path]:
    """Write ``results.parquet``, ``results.csv``, ``summary.json``, ``figures/*.png`` and ``report.html``.

    Returns
    -------
    (dict, Path)
        The summary and the report's path.
    """
    out_dir = Path(out_dir)
    table.to_parquet(out_dir / "results.parquet", index=False)
    table.to_csv(out_dir / "results.csv", index=False)
    summary = trial_summary(trial, table)
    (out_dir / "summary.json").write_text(json.dumps(_plain(summary), indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    data = analysis_set(table)
    figures = {"waterfall": _waterfall(trial, data), "spider": _spider(trial, data, series),
               "pfs": _kaplan_meier(trial, data)}
    (out_dir / "figures").mkdir(exist_ok=True)
    for name, png in figures.items():
        (out_dir / "figures" / f"{name}.png").write_bytes(png)
    report = out_dir / "report.html"
    report.write_text(_html(trial, table, summary, figures), encoding="utf-8")
    return summary, report


def _plain(obj):
    """JSON-able values: tuples as lists, NaN and infinity as None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj


# --------------------------------------------------------------------------------------------------------------
# Figures
def _png(fig) -> bytes:
    from abm.plots import _pyplot

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=_DPI)
    finally:
        _pyplot().close(fig)
    return buf.getvalue()


def _arm_axes(n_arms: int, height: float = 3.4):
    from abm.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, n_arms, figsize=(4.6 * n_arms, height), squeeze=False, sharey=True,
                             constrained_layout=True)
    return fig, axes[0]


def _recist_lines(ax) -> None:
    ax.axhline(-100 * RECIST_PR_DROP, color="tab:green", lw=0.8, ls="--")
    ax.axhline(100 * RECIST_PD_RISE, color="tab:red", lw=0.8, ls="--")
    ax.axhline(0.0, color="0.4", lw=0.6)


def _waterfall(trial, data) -> bytes:
    """Best change in diameter from baseline per patient, sorted, one panel per arm, coloured by best response."""
    from matplotlib.patches import Patch

    fig, axes = _arm_axes(len(trial.arms))
    for ax, (name, arm) in zip(axes, trial.arms.items()):
        rows = data[data["arm"] == name].sort_values("best_pct_change", ascending=False)
        x = np.arange(len(rows))
        ax.bar(x, rows["best_pct_change"], color=[_RESPONSE_COLOURS[r] for r in rows["best_response"]], width=0.85)
        _recist_lines(ax)
        ax.set_title(arm.label, fontsize=10)
        ax.set_xlabel("patients")
        ax.set_xticks([])
    axes[0].set_ylabel("best change in diameter (%)")
    axes[-1].legend([Patch(color=c) for c in _RESPONSE_COLOURS.values()], list(_RESPONSE_COLOURS), fontsize=7,
                    loc="upper left", bbox_to_anchor=(1.01, 1.0), title="best response", title_fontsize=7)
    fig.suptitle("Best response (waterfall)", fontsize=11)
    return _png(fig)


def _spider(trial, data, series: dict) -> bytes:
    """Change in diameter from baseline over time per patient, one panel per arm, coloured by best response."""
    fig, axes = _arm_axes(len(trial.arms))
    for ax, (name, arm) in zip(axes, trial.arms.items()):
        for pid in data.loc[data["arm"] == name, "patient"]:
            s = series.get((pid, name))
            if s is None:
                continue
            colour = _RESPONSE_COLOURS[s["best_response"]]
            ax.plot(s["days"], s["pct_change"], color=colour, lw=0.7, alpha=0.6)
            ax.plot(s["assess_days"], s["assess_pct"], color=colour, ls="none", marker="o", ms=2.5)
        _recist_lines(ax)
        ax.set_title(arm.label, fontsize=10)
        ax.set_xlabel("days from treatment start")
    axes[0].set_ylabel("change in diameter (%)")
    fig.suptitle("Tumour burden over time (spider plot; dots: assessments)", fontsize=11)
    return _png(fig)


def _kaplan_meier(trial, data) -> bytes:
    """Kaplan-Meier curves of progression-free survival per arm with their pointwise confidence bands."""
    from lifelines import KaplanMeierFitter

    from abm.plots import _pyplot

    fig, ax = _pyplot().subplots(figsize=(6.4, 4.0), constrained_layout=True)
    for name, arm in trial.arms.items():
        rows = data[data["arm"] == name]
        if not len(rows):
            continue
        kmf = KaplanMeierFitter(alpha=1.0 - CI_LEVEL).fit(rows["pfs_days"], rows["pfs_event"].astype(bool),
                                                          label=f"{arm.label} (n = {len(rows)})")
        kmf.plot_survival_function(ax=ax, ci_show=True, show_censors=True, censor_styles={"ms": 4})
    ax.set_xlabel("days from treatment start")
    ax.set_ylabel("progression-free")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, trial.spec.follow_up_days * 1.02)
    ax.set_title("Progression-free survival (Kaplan-Meier)", fontsize=11)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


# --------------------------------------------------------------------------------------------------------------
# The page
def _pct(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.0f} %"


def _ci(pair) -> str:
    lo, hi = pair
    return "–" if not (math.isfinite(lo) and math.isfinite(hi)) else f"{100 * lo:.0f}–{100 * hi:.0f} %"


def _days(x) -> str:
    return "not reached" if x == math.inf else ("–" if not math.isfinite(x) else f"{x:.1f} d")


def _p(x) -> str:
    return "–" if not math.isfinite(x) else (f"{x:.3g}" if x >= 1e-4 else "< 1e-4")


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;
color:#222}h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.note{color:#555;font-size:.85em}"""


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join(out) + "</table>"


def _html(trial, table, summary: dict, figures: dict[str, bytes]) -> str:
    spec = trial.spec
    level = f"{100 * CI_LEVEL:g} %"
    arm_rows = []
    for s in summary["arms"].values():
        r = s["responses"]
        arm_rows.append([s["label"], s["regimen"], str(s["n"]),
                         " / ".join(str(r.get(c, 0)) for c in ("CR", "PR", "SD", "PD")),
                         _pct(s["orr"]), _ci(s["orr_wilson"]), _ci(s["orr_clopper_pearson"]),
                         _pct(s["dcr"]), _days(s["median_pfs_days"]),
                         f"{_days(s['median_pfs_ci_days'][0])} – {_days(s['median_pfs_ci_days'][1])}",
                         f"{s['pfs_events']}"])
    arm_table = _table(["arm", "regimen", "n", "CR / PR / SD / PD", "ORR", f"ORR {level} CI (Wilson)",
                        f"ORR {level} CI (Clopper–Pearson)", "DCR", "median PFS", f"median PFS {level} CI",
                        "progressions"], arm_rows)
    ref = summary["reference_arm"]
    cmp_rows = [[f"{summary['arms'][name]['label']} vs {summary['arms'][ref]['label']}", str(c["n_pairs"]),
                 f"{c['responders_only_other']} / {c['responders_only_reference']}", _p(c["mcnemar_p"]),
                 _p(c["logrank_p"]), "–" if not math.isfinite(c["median_diff_best_pct"])
                 else f"{c['median_diff_best_pct']:+.1f}"]
                for name, c in summary["comparisons"].items()]
    cmp_table = _table(["comparison", "paired patients", "responders only in this arm / only in reference",
                        "McNemar exact p", "log-rank p (PFS)", "median paired Δ best change (pp)"], cmp_rows) \
        if cmp_rows else "<p>One arm: nothing to compare.</p>"
    params = [[key, f"{d.dist}", ", ".join(f"{k} = {v:g}" for k, v in d.model_dump().items()
                                           if k != "dist" and v is not None),
               f"{np.nanmin(table[key]):.3g} – {np.nanmax(table[key]):.3g}" if len(table) else "–"]
              for key, d in spec.parameters.items()]
    param_table = _table(["config key", "law", "parameters", "sampled range"], params) if params else \
        "<p>No parameter varies between patients.</p>"
    failed = table[table["status"] != "ok"] if len(table) else table
    failed_html = _table(["patient", "arm", "status", "error"],
                         [[r.patient, r.arm, r.status, str(r.error)[:200]] for r in failed.itertuples()]) \
        if len(failed) else "<p>None.</p>"
    img = {k: base64.b64encode(v).decode("ascii") for k, v in figures.items()}
    floor = (f"and at least {spec.pd_min_increase_um:g} µm above it" if spec.pd_min_increase_um > 0
             else "no absolute minimum rise")
    times = ", ".join(f"{d:g}" for d in (trial.assessment_times_min() - trial.treatment_start_min) / 1440.0)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Virtual trial {html.escape(spec.name)}</title>
<style>{_CSS}</style></head><body>
<h1>Virtual trial: {html.escape(spec.name)}</h1>
{f"<p>{html.escape(spec.description)}</p>" if spec.description else ""}
<p>{summary['patients']} virtual patients ({summary['evaluable_patients']} evaluable in every arm), seed {spec.seed};
untreated for {spec.treatment_start_day:g} days, then each arm branched from the same state and followed for
{spec.follow_up_days:g} days. Assessments on days {html.escape(times)} from treatment start.</p>
<h2>Arms</h2>
{arm_table}
<p class="note">ORR: best response CR or PR; DCR: CR, PR or SD. RECIST 1.1 on the equivalent diameter of the lesion
(circle or sphere of its volume): PR at ≤ −{100 * RECIST_PR_DROP:g} % from baseline, PD at ≥ +{100 * RECIST_PD_RISE:g} %
over the nadir ({floor}), CR with no tumour cell left; SD counts as
best response only without progression within {spec.sd_min_days:g} days. PFS: time to the first assessment with PD,
censored at the last assessment. Medians by Kaplan–Meier; "not reached" where the curve stays above one half.</p>
<h2>Paired comparisons with {html.escape(summary['arms'][ref]['label'])}</h2>
{cmp_table}
<p class="note">Every patient is in every arm. McNemar: exact binomial test of the discordant pairs. The log-rank test
treats the arms as independent samples (conservative for paired data).</p>
<h2>Best response</h2>
<img alt="waterfall plot" src="data:image/png;base64,{img['waterfall']}">
<h2>Tumour burden over time</h2>
<img alt="spider plot" src="data:image/png;base64,{img['spider']}">
<h2>Progression-free survival</h2>
<img alt="Kaplan-Meier curves" src="data:image/png;base64,{img['pfs']}">
<h2>Patients</h2>
{param_table}
<h2>Failed or missing runs</h2>
{failed_html}
</body></html>
"""


def format_summary(result, trial) -> str:
    """What ``tme trial`` prints: the runs made, a line per arm and the comparisons."""
    s = result.summary
    lines = [f"trial '{trial.spec.name}': {s['patients']} patients x {len(trial.arms)} arms "
             f"({s['evaluable_patients']} evaluable in every arm); {result.ran} run(s) made in {result.wall_s:.1f} s"
             + ("" if result.ran else " (everything was already finished)")]
    head = f"  {'arm':<24} {'n':>4}  {'CR/PR/SD/PD':<13} {'ORR [95 % CI, Wilson]':<24} {'DCR':>5}  median PFS"
    lines.append(head)
    for a in s["arms"].values():
        r = a["responses"]
        counts = "/".join(str(r.get(c, 0)) for c in ("CR", "PR", "SD", "PD"))
        lines.append(f"  {a['label'][:24]:<24} {a['n']:>4}  {counts:<13} "
                     f"{_pct(a['orr']) + ' [' + _ci(a['orr_wilson']) + ']':<24} {_pct(a['dcr']):>5}  "
                     f"{_days(a['median_pfs_days'])}")
    ref = s["arms"][s["reference_arm"]]["label"]
    for name, c in s["comparisons"].items():
        lines.append(f"  {s['arms'][name]['label']} vs {ref}: McNemar p = {_p(c['mcnemar_p'])}, "
                     f"log-rank p = {_p(c['logrank_p'])} ({c['n_pairs']} pairs)")
    if s["failed_patients"]:
        lines.append(f"  failed or missing: {', '.join(s['failed_patients'])} (see patients/<pid>/error.txt)")
    lines.append(f"wrote {result.out_dir}/report.html, results.parquet, results.csv, summary.json")
    return "\n".join(lines)
