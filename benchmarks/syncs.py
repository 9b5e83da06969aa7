"""Host syncs per model step: what would make the host wait for the GPU on CuPy, counted on NumPy.

    python benchmarks/syncs.py [--steps 20] [--warmup 5] [--configs quickstart immune therapy physicell]
                               [--top 15] [--out benchmarks/results/syncs.json]

Each config runs on the audit backend of :mod:`abm.sync_audit` (NumPy arrays that record every ``float()``,
``int()``, ``bool()``, ``.item()``, host copy, ``nonzero``, boolean-mask read or write, ``unique``, ``bincount``...)
for ``--warmup`` steps, then ``--steps`` counted steps of ``Simulation.step``: what the runner does between
snapshot and time-series steps. A time-series step adds one ``Simulation.readouts()``, counted apart
(``readouts_syncs``). Reported per config: host syncs per step (total, by kind, the ``--top`` call sites, a site
being the innermost line in abm/ or kernels/), host-to-device uploads per step and the audited seconds per step
(several times NumPy's: the wrappers cost).

Configs (sizes named once, in CONFIGS): the quickstart (2-D, immune, anti-PD-1); immune_inflamed (2-D, immune
only); car_t_anti_pd1 with both treatments from t = 0 (2-D, CAR-T cells and an antibody in the counted steps);
the PhysiCell 3-D cancer-immune scene (75³ voxels, ~25k agents); and, each dosed from t = 0, oxaliplatin_anti_pd1
(cytotoxic), oncolytic_virus_anti_pd1 (virus), nanoparticle_codelivery (carrier) and
anti_pd1_high_dose_anti_vegf with angiogenesis on, fast sprouting and a short sustained-blockade time, so that
vessels both sprout and are pruned in the counted steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from abm.config import load_config  # noqa: E402
from abm.model import Simulation  # noqa: E402
from abm.sync_audit import audit_backend  # noqa: E402

#: name -> (config file, overrides)
CONFIGS = {
    "quickstart": ("configs/quickstart.toml", []),
    "immune": ("configs/immune_inflamed.toml", []),
    "therapy": ("configs/therapies/car_t_anti_pd1.toml",
                ["cell_therapy.cart.start_day=0", "therapy.nivolumab.schedule.start_day=0"]),
    "physicell": ("configs/physicell_cancer_immune_3d.toml", []),
    "cytotoxic": ("configs/therapies/oxaliplatin_anti_pd1.toml",
                  ["therapy.oxaliplatin.schedule.start_day=0", "therapy.nivolumab.schedule.start_day=0"]),
    "virus": ("configs/therapies/oncolytic_virus_anti_pd1.toml",
              ["virus.tvec.times_day=[0.0, 10.0]", "therapy.pembrolizumab.schedule.start_day=0"]),
    "nanoparticle": ("configs/therapies/nanoparticle_codelivery.toml", ["therapy.np.schedule.start_day=0"]),
    "anti_vegf": ("configs/therapies/anti_pd1_high_dose_anti_vegf.toml",
                  ["therapy.bevacizumab.schedule.start_day=0", "therapy.nivolumab.schedule.start_day=0",
                   "vessels.angiogenesis=true", "vessels.angiogenesis_rate_per_min=1.0",
                   "effects.vegf.sustained_day=0.01", "effects.vegf.prune_per_day=5"]),
}


def audit(name: str, steps: int, warmup: int, top: int) -> dict:
    """Host syncs per step of config ``name`` over ``steps`` steps after ``warmup`` steps."""
    path, overrides = CONFIGS[name]
    backend = audit_backend()
    ledger = backend.ledger
    cfg = load_config(REPO / path, ['backend="numpy"', *overrides])
    sim = Simulation(cfg, backend)
    setup_syncs = ledger.total
    for _ in range(warmup):
        sim.step()
    ledger.reset()
    t = time.perf_counter()
    for _ in range(steps):
        sim.step()
    seconds = (time.perf_counter() - t) / steps
    per_step = {"total": ledger.total / steps,
                "by_kind": {k: n / steps for k, n in ledger.by_kind().most_common()},
                "top_sites": [{"site": site, "kind": kind, "per_step": n / steps}
                              for (site, kind), n in ledger.by_site().most_common(top)],
                "uploads": sum(ledger.uploads.values()) / steps}
    ledger.reset()
    sim.readouts()
    readouts_syncs = ledger.total
    agents = {t: len(table) for t, table in sim.agents.items()}
    return {"config": path, "overrides": overrides, "grid": list(cfg.grid.shape), "warmup_steps": warmup,
            "steps": steps, "agents_at_end": agents, "setup_syncs": setup_syncs, "syncs_per_step": per_step,
            "readouts_syncs": readouts_syncs, "audited_seconds_per_step": seconds}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/syncs.json"))
    args = p.parse_args(argv)
    report = {name: audit(name, args.steps, args.warmup, args.top) for name in args.configs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for name, r in report.items():
        s = r["syncs_per_step"]
        print(f"{name}: {s['total']:.1f} host syncs per step ({r['readouts_syncs']} more on a time-series step), "
              f"{s['uploads']:.1f} uploads, {r['audited_seconds_per_step']:.3f} s per audited step")
        for site in s["top_sites"]:
            print(f"  {site['per_step']:6.2f}  {site['kind']:13s} {site['site']}")
    print(f"-> {out}")
    return report


if __name__ == "__main__":
    main()
