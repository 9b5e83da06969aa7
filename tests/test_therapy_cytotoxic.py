"""Cytotoxic therapies: LQ survival and the oxygen effect of radiotherapy, chemotherapy of cycling cells,
immunogenic cell death, lymphotoxicity, restart with fractions pending, and bad courses."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_tree_equal
from immune_helpers import add_tcells, merge, tumour_voxels

from abm.cli import main as cli_main
from abm.config import parse_config
from abm.engine.world import FREE
from abm.model import Simulation
from kernels.lattice import box_sum

STEP_DAY = 6.0 / 1440.0

#: A solid nodule that neither grows nor dies on its own; the tumour rules are chosen per test.
NODULE = {
    "backend": "numpy",
    "seed": 5,
    "grid": {"shape": [40, 40]},
    "vessels": {"pattern": "none"},
    "initial": {"tumour": {"radius_um": 360.0}},
    "tumour": {"rules": []},
}


def _sim(extra: dict) -> Simulation:
    return Simulation(parse_config(merge(NODULE, extra)))


def _course(dose_gy: float, **over) -> dict:
    return {"rt": {"dose_Gy": dose_gy, "start_day": 0.0, **over}}


def _chemo(kill_max: float, ec50_nM: float = 1000.0, **cytotoxic) -> dict:
    """A chemotherapy held at a constant plasma level (negligible clearance) from a bolus at t = 0."""
    return {"kind": "chemotherapy", "molecular_weight_kda": 0.4,
            "schedule": {"start_day": 0.0, "dose_mg": 200.0},
            "pk": {"model": "one_compartment", "clearance_L_per_day": 1e-6, "central_volume_L": 20.0},
            "cytotoxic": {"kill_max_per_day": kill_max, "ec50_nM": ec50_nM, **cytotoxic}}


def _within_sampling_error(observed: float, probabilities) -> bool:
    """``observed`` successes against independent Bernoulli ``probabilities``: within 4 standard deviations."""
    p = np.asarray(probabilities, dtype=np.float64)
    return abs(observed - p.sum()) <= 4.0 * np.sqrt((p * (1.0 - p)).sum())


# ----------------------------------------------------------------------------------------------------------
# Radiotherapy
@pytest.mark.parametrize("dose_gy", [2.0, 6.0])
def test_one_fraction_survival_matches_the_linear_quadratic_law(dose_gy):
    # OER_max = 1 makes the dose independent of pO2: every cell survives with exp(-(αD + βD²)).
    sim = _sim({"radiotherapy": _course(dose_gy), "effects": {"radiation": {"oer_max": 1.0}}})
    n = len(sim.agents["tumour"])
    sim.step()
    survivors = len(sim.agents["tumour"])
    lq = sim.config.effects.radiation.tumour
    survival = np.exp(-(lq.alpha_per_Gy * dose_gy + lq.beta_per_Gy2 * dose_gy**2))
    assert n > 1000
    assert _within_sampling_error(survivors, np.full(n, survival)), (survivors, n * survival)
    assert sim.readouts()["tumour_killed_by_radiation"] == n - survivors


def test_hypoxic_cells_survive_more_as_the_oxygen_enhancement_ratio_says():
    # O2 uptake without vessels: a near-anoxic core and an oxygenated rim. The fraction falls in step 3.
    sim = _sim({"grid": {"shape": [60, 60]}, "initial": {"tumour": {"radius_um": 560.0}},
                "tumour": {"rules": ["oxygen_uptake"]}, "radiotherapy": _course(8.0, start_day=3 * STEP_DAY)})
    for _ in range(3):
        sim.step()
    voxels = np.asarray(sim.agents["tumour"]["voxel"]).copy()
    sim.step()
    assert sim.readouts()["doses_rt"] == 1.0
    o2 = np.asarray(sim.fields["oxygen"].data, dtype=np.float64).reshape(-1)[voxels]  # what the fraction read
    alive = np.asarray(sim.world.tissue).reshape(-1)[voxels] == sim.world.code("tumour")
    rad = sim.config.effects.radiation
    omf = (rad.oer_max * o2 + rad.oer_k_mmHg) / (rad.oer_max * (o2 + rad.oer_k_mmHg))
    dose = 8.0 * omf
    survival = np.exp(-(rad.tumour.alpha_per_Gy * dose + rad.tumour.beta_per_Gy2 * dose**2))
    hypoxic, oxic = o2 < 2.0, o2 > 15.0
    assert hypoxic.sum() > 100 and oxic.sum() > 100
    for group in (hypoxic, oxic):
        assert _within_sampling_error(alive[group].sum(), survival[group])
    assert alive[hypoxic].mean() > 3 * alive[oxic].mean()


def test_a_region_spares_the_cells_outside_it():
    sim = _sim({"radiotherapy": _course(6.0, region={"shape": "box", "lower_um": [0.0, 0.0],
                                                      "upper_um": [400.0, 800.0]})})
    before = np.asarray(sim.agents["tumour"]["voxel"]).copy()
    sim.step()
    x_um = (before // 40 + 0.5) * 20.0  # C order: the first axis is the slow one
    alive = np.asarray(sim.world.tissue).reshape(-1)[before] == sim.world.code("tumour")
    assert alive[x_um > 400.0].all() and not alive[x_um <= 400.0].all()


# ----------------------------------------------------------------------------------------------------------
# Chemotherapy
def test_chemotherapy_kills_cycling_cells_and_spares_quiescent_ones():
    # Proliferation at rate 0 keeps the contact-inhibition flag without divisions; O2 is high everywhere.
    sim = _sim({"tumour": {"rules": ["proliferation"], "proliferation_rate_per_min": 0.0},
                "vessels": {"pattern": "random", "density": 0.05, "exclude_tumour": False},
                "therapy": {"oxa": _chemo(kill_max=20.0)}})
    code = sim.world.code("tumour")
    killed = {True: 0, False: 0}
    exposed = {True: 0, False: 0}
    for _ in range(40):
        vox = np.asarray(sim.agents["tumour"]["voxel"]).copy()
        free = np.asarray(box_sum(sim.world.tissue == FREE, 1, dtype=np.uint8)).reshape(-1)[vox] > 0
        sim.step()
        dead = np.asarray(sim.world.tissue).reshape(-1)[vox] != code
        for cycling in (True, False):
            killed[cycling] += int(dead[free == cycling].sum())
            exposed[cycling] += int((free == cycling).sum())
    assert np.asarray(sim.fields["oxa"].data).min() > 100.0  # the drug reached every cell
    assert exposed[False] > 1000 and killed[False] == 0
    assert killed[True] > 50


def test_immunogenic_death_raises_priming_at_equal_kill():
    def run(icd: float):
        sim = _sim({"vessels": {"pattern": "random", "density": 0.05, "exclude_tumour": False},
                    "immune": {"enabled": True, "priming_initial": 0.1, "tcell": {"rules": []},
                               "macrophage": {"rules": []}, "caf": {"rules": []}},
                    "therapy": {"oxa": _chemo(kill_max=20.0, icd_strength=icd)}})
        trace = []
        for _ in range(30):
            sim.step()
            trace.append(sim.readouts())
        return trace, sim.config.immune

    (plain, immune), (immunogenic, _) = run(0.0), run(1.0)
    kills = [r["tumour_killed_by_oxa"] for r in plain]
    assert kills == [r["tumour_killed_by_oxa"] for r in immunogenic] and sum(kills) > 20
    assert sum(r["antigen_icd_released"] for r in plain) == 0.0
    # Every death is a chemotherapy kill: with strength 1 the extra antigen equals the ordinary antigen.
    for r in immunogenic:
        assert r["antigen_icd_released"] == pytest.approx(r["antigen_released"], rel=1e-12)
    # Priming follows P <- P + g (A + A_ICD)(1 - P) - δ dt P in both runs, so the immunogenic one primes more.
    for trace in (plain, immunogenic):
        p = 0.1
        for r in trace:
            p += immune.priming_per_antigen * (r["antigen_released"] + r["antigen_icd_released"]) * (1.0 - p)
            p -= immune.priming_decay_per_min * 6.0 * p
            assert r["priming"] == pytest.approx(p, rel=1e-9)
    assert immunogenic[4]["priming"] > plain[4]["priming"] + 0.01


@pytest.mark.parametrize("lymphotoxic", [True, False])
def test_lymphotoxicity_lowers_t_cells_only_when_on(lymphotoxic):
    sim = _sim({"vessels": {"pattern": "random", "density": 0.05, "exclude_tumour": False},
                "immune": {"enabled": True, "tcell": {"rules": []}, "macrophage": {"rules": []},
                           "caf": {"rules": []}},
                "therapy": {"oxa": _chemo(kill_max=0.0, tcell_kill_max_per_day=20.0 if lymphotoxic else 0.0)}})
    add_tcells(sim, tumour_voxels(sim, 200, seed=1))
    killed = 0.0
    for _ in range(30):
        sim.step()
        killed += sim.readouts()["tcell_killed_by_chemo"]
    left = len(sim.agents["tcell"])
    if lymphotoxic:
        assert killed > 20 and left == 200 - killed
    else:
        assert killed == 0 and left == 200


# ----------------------------------------------------------------------------------------------------------
# Restart and bad courses
def test_restart_with_fractions_and_doses_pending_is_bit_identical():
    cfg = parse_config(merge(NODULE, {
        "tumour": {"rules": ["oxygen_uptake", "proliferation", "apoptosis", "necrosis"]},
        "vessels": {"pattern": "random", "density": 0.04},
        "immune": {"enabled": True},
        "therapy": {"oxa": merge(_chemo(kill_max=10.0, icd_strength=1.0, tcell_kill_max_per_day=2.0),
                                 {"schedule": {"start_day": 0.1, "every_day": 0.1, "doses": 3}})},
        "radiotherapy": _course(2.0, start_day=12 * STEP_DAY, every_day=12 * STEP_DAY, fractions=4)}))
    straight = Simulation(cfg)
    for _ in range(50):
        straight.step()
    first = Simulation(cfg)
    for _ in range(23):  # one fraction given, three pending
        first.step()
    state = first.state()
    assert state["state"]["therapy"]["rt"]["fractions_given"] == 1
    np.testing.assert_allclose(state["state"]["therapy"]["rt"]["pending_fraction_times_min"], [144.0, 216.0, 288.0])
    resumed = Simulation.from_state(cfg, state)
    for _ in range(27):
        resumed.step()
    assert_tree_equal(straight.state(), resumed.state())
    assert straight.readouts() == resumed.readouts()
    assert straight.module("therapy").params.courses["rt"].fractions_given == 4


@pytest.mark.parametrize("course, expected", [
    ({"dose_Gy": -2.0}, "radiotherapy.rt.dose_Gy"),
    ({"dose_Gy": 2.0, "region": {"shape": "sphere", "radius": 100.0}}, "radiotherapy.rt.region.radius"),
    ({"dose_Gy": 2.0, "fractions": 0}, "at least one fraction"),
    ({"dose_Gy": 2.0, "region": {"shape": "sphere"}}, "a sphere needs radius_um"),
    ({"dose_Gy": 2.0, "region": {"shape": "box", "lower_um": [0.0], "upper_um": [10.0]}},
     "radiotherapy.rt.region.lower_um has 1 coordinates"),
])
def test_bad_courses_are_config_errors_naming_the_key(tmp_path, capsys, course, expected):
    import tomli_w

    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(merge(NODULE, {"radiotherapy": {"rt": course}})), encoding="utf-8")
    assert cli_main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_a_course_in_a_therapy_file_branches_and_restarts_from_the_file(tmp_path):
    from abm.io import open_run
    from abm.replay import replay_run
    from abm.runner import run_simulation

    data = merge(NODULE, {"name": "parent", "time": {"duration_min": 480.0}, "tumour": {"rules": ["oxygen_uptake"]},
                          "output": {"snapshot_interval_min": 120.0, "summary_plot": False},
                          "radiotherapy": _course(2.0, start_day=60.0 / 1440, every_day=240.0 / 1440, fractions=2)})
    parent = run_simulation(parse_config(data), tmp_path / "parent", progress=False)
    resumed = replay_run(parent.h5_path, 120.0, out_dir=tmp_path / "resumed", progress=False)
    arm = tmp_path / "arm.toml"
    arm.write_text('[radiotherapy.boost]\ndose_Gy = 8.0\ntimes_day = [0.25]\n'
                   'region = { shape = "sphere", radius_um = 100.0 }\n', encoding="utf-8")
    boosted = replay_run(parent.h5_path, 120.0, out_dir=tmp_path / "boost", progress=False, therapy_file=arm)
    with open_run(parent.h5_path) as p, open_run(resumed.h5_path) as r, open_run(boosted.h5_path) as b:
        assert p.state(120.0)["state"]["therapy"]["rt"]["fractions_given"] == 1
        assert_tree_equal(p.state(480.0), r.state(480.0))  # the pending fraction at 300 min, restored from the file
        ts = b.timeseries()
        assert ts["doses_rt"].sum() == 1 and ts["doses_boost"].sum() == 1 and ts["dose_boost_Gy"].sum() == 8.0
        assert [t["name"] for t in b.therapies()] == ["rt", "boost"] and b.therapies()[1]["kind"] == "radiotherapy"
        plain = p.timeseries()
        after = plain["time_min"] > 120.0
        assert ts["time_min"][0] >= 120.0  # the branch records from its start
        assert ts["tumour_killed_by_radiation"].sum() > plain["tumour_killed_by_radiation"][after].sum()
