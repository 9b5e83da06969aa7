"""MDSCs (suppression, CCR2 and CXCR2 blockade) and the oncolytic virus (infection, lysis, spread, priming, restart).

Paired comparisons on small 2-D arenas: the same seed with and without the mechanism or the drug.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_tree_equal
from immune_helpers import add_tcells, merge, tumour_voxels

from abm.cli import main as cli_main
from abm.config import parse_config
from abm.model import Simulation

_STATIC_TUMOUR = ["oxygen_uptake", "pdl1_expression", "secretion"]

#: Hand-placed effectors that do not move (so MDSCs taking immune places cannot change where they are).
KILLING = {
    "backend": "numpy",
    "grid": {"shape": [30, 30]},
    "vessels": {"pattern": "random", "density": 0.05, "exclude_tumour": False},
    "initial": {"tumour": {"radius_um": 200.0}},
    "tumour": {"rules": _STATIC_TUMOUR, "antigenicity_spread": 0.0},
    "immune": {"enabled": True, "tcell": {"rules": ["tcell_secretion", "tcell_kill"], "max_kills": 1000},
               "macrophage": {"rules": []}, "caf": {"rules": [], "stroma_density": 0.0},
               "mdsc": {"rules": ["mdsc_ccl2_secretion"]}},
}

#: MDSCs recruited at vessels threaded through a static nodule (high CCL2 at the vessels); no T cells.
MYELOID = {
    "backend": "numpy",
    "grid": {"shape": [30, 30]},
    "vessels": {"pattern": "random", "density": 0.05, "exclude_tumour": False},
    "initial": {"tumour": {"radius_um": 200.0}},
    "tumour": {"rules": _STATIC_TUMOUR},
    "immune": {"enabled": True, "tcell": {"rules": []}, "caf": {"rules": [], "stroma_density": 0.0},
               "mdsc": {"enabled": True}},
}

#: A growing nodule; the virus is injected at its centre.
LESION = {
    "backend": "numpy",
    "grid": {"shape": [30, 30]},
    "vessels": {"pattern": "random", "density": 0.03, "exclude_tumour": False},
    "initial": {"tumour": {"radius_um": 240.0}},
    "immune": {"enabled": True, "tcell": {"rules": []}, "macrophage": {"rules": []},
               "caf": {"rules": [], "stroma_density": 0.0}},
}
INJECTION_UM = 60.0
TVEC = {"tvec": {"titre_pfu_per_mL": 1.0e8, "region": {"shape": "sphere", "radius_um": INJECTION_UM}}}


def _sim(arena: dict, seed: int = 1, **extra) -> Simulation:
    return Simulation(parse_config(merge(arena, {"seed": seed, **extra})))


def _trace(sim: Simulation, steps: int) -> list[dict]:
    out = []
    for _ in range(steps):
        sim.step()
        out.append(sim.readouts())
    return out


def _total(trace, key) -> float:
    return float(sum(r[key] for r in trace))


# ----------------------------------------------------------------------------------------------------------
# MDSCs
def _kills_with_mdscs(seed: int, enabled: bool, resistance: bool = True) -> float:
    sim = _sim(KILLING, seed, immune={"mdsc": {"enabled": enabled}}, resistance={"suppressive_cells": resistance})
    effectors = tumour_voxels(sim, 60, seed=1)
    add_tcells(sim, effectors)
    if enabled:
        free = np.setdiff1d(np.asarray(sim.tumour["voxel"]), effectors)
        mdsc = np.random.default_rng(2).choice(free, size=80, replace=False)
        sim.agents["mdsc"].append(voxel=mdsc, age_min=np.zeros(mdsc.size))
        sim.world.refresh_occupancy()
    return _total(_trace(sim, 90), "tumour_killed_by_tcell")


def test_mdscs_suppress_killing_only_with_the_suppressive_cells_switch():
    plain = _kills_with_mdscs(1, enabled=False)
    suppressed = _kills_with_mdscs(1, enabled=True)
    switched_off = _kills_with_mdscs(1, enabled=True, resistance=False)
    assert plain > 0 and suppressed < 0.8 * plain, f"kills {plain:g} without MDSCs, {suppressed:g} with"
    # Without the switch the MDSCs are inert: the same kills as with suppressive cells off and no MDSCs.
    assert switched_off == _kills_with_mdscs(1, enabled=False, resistance=False)


def test_mdsc_term_is_sigma_min_one_n_over_k():
    from abm.modules.immune.tcell import suppression_components

    sim = _sim(KILLING, immune={"mdsc": {"enabled": True}})
    centre = sim.world.size // 2 + sim.world.shape[1] // 2
    sim.agents["mdsc"].append(voxel=np.asarray([centre, centre + 1, centre + 2]), age_min=np.zeros(3))
    sim.world.refresh_occupancy()
    # Moore neighbourhoods (themselves included) holding 0, 1, 2 and 3 MDSCs.
    voxels = np.asarray([centre - 3, centre - 1, centre, centre + 1])
    zeros = np.zeros(voxels.size)
    term = suppression_components(sim.world, sim.module("immune").params, voxels, zeros, zeros)["mdsc"]
    p = sim.config.immune.mdsc
    np.testing.assert_allclose(term, p.suppression * np.minimum(1.0, np.asarray([0, 1, 2, 3]) / p.saturation_count))


def _drug(preset: str) -> dict:
    return {preset: {"preset": preset, "schedule": {"start_day": 0.0}}}


def test_ccr2_and_cxcr2_blockade_lower_mdsc_recruitment():
    """Each saturating antagonist removes its share of the recruitment (monocytic_fraction 0.5 each)."""
    counts = {}
    for arm, therapy in (("none", {}), ("ccr2", _drug("pf04136309")), ("cxcr2", _drug("navarixin"))):
        trace = _trace(_sim(MYELOID, therapy=therapy), 240)
        counts[arm] = (_total(trace, "mdsc_recruited"), trace[-1]["mdsc_cells"])
    recruited, present = counts["none"]
    assert recruited > 20, f"too few MDSCs recruited to compare: {recruited}"
    for arm in ("ccr2", "cxcr2"):
        assert counts[arm][0] < 0.75 * recruited and counts[arm][1] < present, f"MDSCs recruited, present {counts}"


def test_ccr2_blockade_lowers_monocyte_recruitment():
    """CCR2 is the monocytes' entry route too: macrophage (M0) recruitment falls under PF-04136309 (no MDSCs)."""
    arena = merge(MYELOID, {"immune": {"mdsc": {"enabled": False}, "macrophage": {"recruitment_per_min": 5.0e-3}}})
    plain = _total(_trace(_sim(arena), 120), "macrophage_recruited")
    treated = _total(_trace(_sim(arena, therapy=_drug("pf04136309")), 120), "macrophage_recruited")
    assert plain > 20 and treated < 0.5 * plain, f"macrophages recruited {plain:g} untreated, {treated:g} treated"


def test_mdscs_are_off_by_default_and_add_nothing():
    sim = _sim(MYELOID, immune={"mdsc": {"enabled": False}})
    assert "mdsc" not in sim.agents and "ccl2" not in sim.fields
    assert not any(k.startswith("mdsc") for k in sim.readouts())


# ----------------------------------------------------------------------------------------------------------
# Oncolytic virus
VIRUS_STEPS = 300  # 1.25 days: past the eclipse and the first lyses


def _distance_um(sim, voxels):
    """Distance of voxel centres from the lattice centre (the injection site), µm."""
    dx = sim.config.grid.spacing_um
    axes = [(np.arange(n) + 0.5) * dx - n * dx / 2 for n in sim.config.grid.shape]
    r = np.sqrt(sum(a**2 for a in np.meshgrid(*axes, indexing="ij"))).reshape(-1)
    return r[np.asarray(voxels)]


def _virus_run(virus: dict | None, seed: int = 1):
    sim = _sim(LESION, seed, virus=virus or {})
    ever, farthest = set(), 0.0
    trace = []
    for _ in range(VIRUS_STEPS):
        sim.step()
        trace.append(sim.readouts())
        if virus:
            cells = sim.tumour
            infected = np.asarray(cells["voxel"])[np.asarray(cells["infection_min"]) >= 0]
            ever.update(infected.tolist())
            if infected.size:
                farthest = max(farthest, float(_distance_um(sim, infected).max()))
    return sim, trace, ever, farthest


_RUNS: dict = {}


def _cached(key: str):
    if key not in _RUNS:
        virus = {"none": None, "tvec": TVEC, "no_burst": merge(TVEC, {"tvec": {"burst_pfu": 0.0}})}[key]
        _RUNS[key] = _virus_run(virus)
    return _RUNS[key]


def test_infected_cells_appear_and_lyse():
    sim, trace, ever, _ = _cached("tvec")
    assert max(r["infected_cells"] for r in trace) > 10
    assert _total(trace, "tumour_lysed_by_tvec") > 5
    clock = np.asarray(sim.tumour["infection_min"])
    assert clock.max() <= VIRUS_STEPS * sim.config.time.dt_min and set(np.unique(clock[clock < 0])) <= {-1.0}


def test_lysis_releases_virus_that_spreads_beyond_the_injection():
    """Paired with a virus that releases nothing on lysis: the burst infects more cells, farther out."""
    _, burst, ever, farthest = _cached("tvec")
    _, silent, ever_silent, farthest_silent = _cached("no_burst")
    assert _total(silent, "tumour_lysed_by_tvec") > 0  # lysis happens in both arms
    assert len(ever) > 2 * len(ever_silent), f"cells ever infected: {len(ever_silent)} without burst, {len(ever)}"
    assert farthest > farthest_silent + 40.0, f"farthest infected cell {farthest_silent:.0f} -> {farthest:.0f} µm"


def test_immunogenic_lysis_raises_priming():
    _, plain, _, _ = _cached("none")
    _, treated, _, _ = _cached("tvec")
    assert _total(treated, "antigen_icd_released") > 0
    assert treated[-1]["priming"] > plain[-1]["priming"] + 0.05, (plain[-1]["priming"], treated[-1]["priming"])


def test_virus_clock_never_appears_without_a_virus():
    sim, _, _, _ = _cached("none")
    assert "infection_min" not in sim.tumour.schema


def test_intravenous_virus_enters_at_vessels():
    sim = _sim(LESION, virus={"ov": {"route": "iv", "dose_pfu": 1.0e11}})
    trace = _trace(sim, 1)
    titre = np.asarray(sim.fields["ov"].data, dtype=np.float64).reshape(-1)
    vessels = np.asarray(sim.world.indices["vessel_voxels"])
    assert titre[vessels].mean() > 5 * titre.mean() > 0  # after one step it is still where it entered
    trace += _trace(sim, 29)
    blood = [r["blood_ov_pfu_per_mL"] for r in trace]
    assert blood[0] > blood[-1] > 0 and trace[-1]["tissue_ov_pfu"] > 0  # cleared from blood, some in tissue


def test_restart_with_virus_in_flight_is_bit_identical():
    cfg = parse_config(merge(LESION, {"seed": 3, "virus": merge(TVEC, {"tvec": {"times_day": [0.0, 0.5]}}),
                                      "immune": {"tcell": {"rules": ["tcell_secretion", "tcell_recruitment",
                                                                    "tcell_kill", "tcell_move", "tcell_death"]},
                                                 "mdsc": {"enabled": True}}}))
    straight = Simulation(cfg)
    for _ in range(150):
        straight.step()
    first = Simulation(cfg)
    for _ in range(100):  # infected cells lysing (eclipse 8 h), virus spreading, one dose pending
        first.step()
    state = first.state()
    assert (state["agents"]["tumour"]["infection_min"] >= 0).sum() > 0
    np.testing.assert_allclose(state["state"]["therapy"]["tvec"]["pending_dose_times_min"], [720.0])
    resumed = Simulation.from_state(cfg, state)
    for _ in range(50):
        resumed.step()
    assert_tree_equal(straight.state(), resumed.state())
    assert straight.readouts() == resumed.readouts()


def test_a_virus_added_at_a_branch_starts_with_no_cell_infected():
    parent = _sim(LESION, seed=2)
    for _ in range(10):
        parent.step()
    cfg = parse_config(merge(LESION, {"seed": 2, "virus": merge(TVEC, {"tvec": {"times_day": [0.05]}})}))
    branch = Simulation.from_state(cfg, parent.state())  # the snapshot has no infection clock
    assert "therapy" in branch.added["modules"]
    assert (np.asarray(branch.tumour["infection_min"]) == -1.0).all()
    assert max(r["infected_cells"] for r in _trace(branch, 30)) > 0


@pytest.mark.parametrize("extra, expected", [
    ({"virus": {"tvec": {"titre_pfu_per_mL": -1.0}}}, "virus.tvec.titre_pfu_per_mL"),
    ({"virus": {"tvec": {"route": "iv", "titre_pfu_per_mL": 1e8}}}, "route 'iv' takes dose_pfu"),
    ({"virus": {"tvec": {"titre_pfu_per_mL": 1e8, "burst_size": 50}}}, "virus.tvec.burst_size"),
    ({"virus": {"a": {"titre_pfu_per_mL": 1e8}, "b": {"titre_pfu_per_mL": 1e8}}}, "at most one [virus.<name>]"),
    ({"immune": {"mdsc": {"suppression": 1.5}}}, "immune.mdsc.suppression"),
    ({"immune": {"mdsc": {"rules": ["mdsc_walk"]}}}, "immune.mdsc.rules"),
    ({"therapy": {"x": {"preset": "navarixin", "targets": [{"target": "CCR5", "kd_nM": 1.0}]}}},
     "therapy.x.targets.0.target"),
])
def test_bad_mdsc_and_virus_input_exits_2_naming_the_key(tmp_path, capsys, extra, expected):
    import tomli_w

    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(merge(LESION, extra)), encoding="utf-8")
    assert cli_main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
