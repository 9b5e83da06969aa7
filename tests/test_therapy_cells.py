"""Cellular and immunising therapies: CAR-T against TCR recognition, PD-1 sensitivity of a product, epigenetic
antigen restoration, vaccine priming, restart with infusions and doses pending, and bad tables."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_tree_equal
from immune_helpers import merge

from abm.cli import main as cli_main
from abm.config import parse_config
from abm.model import Simulation
from abm.modules.therapy.cytotoxic import cycling_weight

#: A static antigen-low nodule without vessels: tumour cells die only by T-cell killing; no endogenous recruitment.
ANTIGEN_LOW = {
    "backend": "numpy",
    "seed": 4,
    "grid": {"shape": [40, 40]},
    "vessels": {"pattern": "none"},
    "initial": {"tumour": {"radius_um": 240.0}},
    "tumour": {"rules": ["oxygen_uptake", "pdl1_expression", "secretion"], "antigenicity_initial": 0.05,
               "antigenicity_spread": 0.0, "pdl1_baseline": 0.0},
    "resistance": {"adaptive_pdl1": False},
    "immune": {"enabled": True, "tcell": {"rules": ["tcell_secretion", "tcell_kill", "tcell_move"], "max_kills": 1000},
               "macrophage": {"rules": []}, "caf": {"rules": [], "stroma_density": 0.0}},
}

#: A static nodule threaded with vessels (drugs reach every cell, pO2 high: every cell cycles); no immune cells.
PERFUSED = {
    "backend": "numpy",
    "seed": 5,
    "grid": {"shape": [30, 30]},
    "vessels": {"pattern": "random", "density": 0.05, "exclude_tumour": False},
    "initial": {"tumour": {"radius_um": 240.0}},
    "tumour": {"rules": [], "antigenicity_initial": 0.1, "antigenicity_spread": 0.0},
    "immune": {"enabled": True, "priming_initial": 0.1, "tcell": {"rules": []}, "macrophage": {"rules": []},
               "caf": {"rules": []}},
}


def _product(kind: str, **over) -> dict:
    """150 cells injected at t = 0 anywhere on the lattice."""
    return {"kind": kind, "cells": 150, "start_day": 0.0, "site": "region", **over}


def _demethylating(**over) -> dict:
    """A DNMT1 binder held at a constant plasma level (negligible clearance) from a bolus at t = 0."""
    return merge({"kind": "small_molecule", "molecular_weight_kda": 0.228,
                  "targets": [{"target": "DNMT1", "kd_nM": 50.0}],
                  "schedule": {"start_day": 0.0, "dose_mg": 20.0},
                  "pk": {"model": "one_compartment", "clearance_L_per_day": 1e-6, "central_volume_L": 20.0}}, over)


def _kills_by(config: dict, name: str, steps: int):
    sim = Simulation(parse_config(config))
    sim.step()
    placed = np.asarray(sim.agents["tcell"]["voxel"]).copy()
    kills = sim.readouts()[f"tumour_killed_by_{name}"]
    for _ in range(steps - 1):
        sim.step()
        kills += sim.readouts()[f"tumour_killed_by_{name}"]
    return sim, placed, kills


# ----------------------------------------------------------------------------------------------------------
# Adoptive transfer
def test_car_t_kill_antigen_low_cells_that_tcr_recognition_misses():
    # The same cells placed at the same voxels, one product recognising through the CAR, one through MHC-I.
    car, car_placed, car_kills = _kills_by(merge(ANTIGEN_LOW, {"cell_therapy": {"p": _product("car_t")}}), "p", 40)
    til, til_placed, til_kills = _kills_by(merge(ANTIGEN_LOW, {"cell_therapy": {"p": _product("til")}}), "p", 40)
    np.testing.assert_array_equal(car_placed, til_placed)
    assert car_placed.shape[0] == 150 and (np.asarray(car.agents["tcell"]["product"]) == 1).all()
    assert car_kills >= 20 and car_kills > 5 * til_kills, (car_kills, til_kills)
    r = car.readouts()
    assert r["transferred_p_alive"] == r["transferred_alive"] == len(car.agents["tcell"])
    # Every kill is by the product: the per-cell kill counts add up to the readout.
    assert int(np.asarray(car.agents["tcell"]["kills"]).sum()) == car_kills


def test_a_pd1_knockout_product_escapes_pd_l1_and_anti_pd1_lifts_a_competent_one():
    # Full PD-L1 on every tumour cell, vessels for the antibody to enter by; the same cells in all three arms.
    arena = merge(ANTIGEN_LOW, {"tumour": {"pdl1_baseline": 1.0},
                                "vessels": {"pattern": "random", "density": 0.05, "exclude_tumour": False}})
    nivolumab = {"therapy": {"nivolumab": {"preset": "nivolumab", "schedule": {"start_day": 0.0, "infusion_min": 0.0}}}}
    competent = {"cell_therapy": {"p": _product("car_t")}}
    knockout = {"cell_therapy": {"p": _product("car_t", pd1_sensitivity=0.0)}}
    kills = {label: _kills_by(merge(arena, extra), "p", 40)[2] for label, extra in [
        ("competent", competent), ("knockout", knockout), ("blocked", merge(competent, nivolumab))]}
    # PD-L1 1 removes 90 % of a competent cell's killing; a knockout ignores it; nivolumab lifts it off the competent.
    assert kills["knockout"] > 3 * kills["competent"], kills
    assert kills["blocked"] > 3 * kills["competent"], kills


def test_transferred_cells_contract_at_their_product_rate():
    config = merge(ANTIGEN_LOW, {"tumour": {"rules": []}, "immune": {"tcell": {"rules": ["tcell_death"]}},
                                 "cell_therapy": {"p": _product("til", cells=400, death_per_day=20.0)}})
    sim = Simulation(parse_config(config))
    sim.step()
    alive = [len(sim.agents["tcell"])]
    for _ in range(10):
        sim.step()
        alive.append(len(sim.agents["tcell"]))
    assert alive[0] == 400
    expected = 400 * np.exp(-20.0 / 1440.0 * 6.0 * 10)
    assert abs(alive[-1] - expected) < 4.0 * np.sqrt(expected), (alive[-1], expected)


# ----------------------------------------------------------------------------------------------------------
# Epigenetic therapy
def test_demethylation_raises_antigenicity_of_cycling_cells_by_the_restoration_law():
    treated = Simulation(parse_config(merge(PERFUSED, {"therapy": {"dac": _demethylating()}})))
    untreated = Simulation(parse_config(merge(PERFUSED, {"therapy": {"dac": _demethylating()},
                                                         "effects": {"epigenetic": {"restoration_per_day": 0.0}}})))
    law = treated.config.effects.epigenetic
    for _ in range(20):
        q0 = np.asarray(treated.agents["tumour"]["antigenicity"], dtype=np.float64).copy()
        treated.step()
        untreated.step()
    cells = treated.agents["tumour"]
    theta = np.asarray(treated.layers["occupancy_dnmt1"], dtype=np.float64).reshape(-1)[np.asarray(cells["voxel"])]
    w = np.asarray(cycling_weight(treated.world, treated.config.tumour, cells))
    rate = law.restoration_per_day / 1440.0 * theta * w
    expected = q0 + (law.antigenicity_restored - q0) * -np.expm1(-rate * 6.0)
    np.testing.assert_allclose(np.asarray(cells["antigenicity"]), expected, rtol=1e-6)
    assert theta.min() > 0.9 and w.min() > 0.9
    assert treated.readouts()["antigenicity_mean"] > 0.3
    assert untreated.readouts()["antigenicity_mean"] == pytest.approx(0.1)


def test_demethylation_spares_cells_that_do_not_cycle():
    # Without vessels and with O2 uptake the nodule's core is anoxic: no replication, no demethylation there.
    sim = Simulation(parse_config(merge(PERFUSED, {
        "grid": {"shape": [50, 50]}, "initial": {"tumour": {"radius_um": 450.0}},
        "vessels": {"pattern": "none"}, "tumour": {"rules": ["oxygen_uptake"]},
        "therapy": {"dac": merge(_demethylating(), {"tissue": {"vascular_permeability_um_per_min": 6.0}})}})))
    for _ in range(10):
        sim.step()
    cells = sim.agents["tumour"]
    w = np.asarray(cycling_weight(sim.world, sim.config.tumour, cells))
    q = np.asarray(cells["antigenicity"])
    assert (w == 0).sum() > 50
    assert np.all(q[w == 0] == np.float32(0.1))


# ----------------------------------------------------------------------------------------------------------
# Vaccine
@pytest.mark.parametrize("release_day", [0.0, 0.5])
def test_vaccine_antigen_raises_priming_by_the_priming_law(release_day):
    vaccine = {"vaccine": {"vax": {"antigen_dose": 20.0, "times_day": [0.0, 0.1], "release_day": release_day}}}
    plain = Simulation(parse_config(PERFUSED))
    vaccinated = Simulation(parse_config(merge(PERFUSED, vaccine)))
    immune = vaccinated.config.immune
    p = immune.priming_initial
    delivered = 0.0
    for _ in range(48):
        plain.step()
        vaccinated.step()
        r = vaccinated.readouts()
        delivered += r["vaccine_antigen"]
        p += immune.priming_per_antigen * r["vaccine_antigen"] * (1.0 - p)  # no tumour cell dies here
        p -= immune.priming_decay_per_min * 6.0 * p
        assert r["priming"] == pytest.approx(p, rel=1e-9)
    span = 48 * 6.0
    due = 20.0 * (2 if release_day == 0 else sum(1 - np.exp(-(span - t) / (release_day * 1440)) for t in (0, 144)))
    assert delivered == pytest.approx(due, rel=1e-9)
    assert vaccinated.readouts()["priming"] > plain.readouts()["priming"] + 0.05


# ----------------------------------------------------------------------------------------------------------
# Antibody-drug conjugate
def _adc(dose_mg: float) -> dict:
    """A TROP2-binding ADC held at a constant plasma level (negligible clearance) from a bolus at t = 0."""
    return {"kind": "antibody_drug_conjugate", "molecular_weight_kda": 160.0,
            "targets": [{"target": "TROP2", "kd_nM": 1.0}], "payload": {"kill_max_per_day": 20.0},
            "schedule": {"start_day": 0.0, "dose_mg": dose_mg},
            "pk": {"model": "one_compartment", "clearance_L_per_day": 1e-6, "central_volume_L": 3.0}}


def _adc_run(dose_mg: float, steps: int = 30):
    """Kills of a static nodule under the ADC, and the law's expected kills (sum of p over the exposed cells)."""
    sim = Simulation(parse_config(merge(PERFUSED, {"therapy": {"adc": _adc(dose_mg)}})))
    code = sim.world.code("tumour")
    killed, expected, var = 0, 0.0, 0.0
    for _ in range(steps):
        vox = np.asarray(sim.agents["tumour"]["voxel"]).copy()
        w = np.asarray(cycling_weight(sim.world, sim.config.tumour, sim.agents["tumour"]))
        sim.step()
        c = np.asarray(sim.fields["adc"].data, dtype=np.float64).reshape(-1)[vox]
        theta = c / (c + 1.0)  # the only TROP2 binder, Kd 1 nM
        p = 1.0 - np.exp(-20.0 / 1440.0 * theta * w * 6.0)
        expected += p.sum()
        var += (p * (1.0 - p)).sum()
        killed += int((np.asarray(sim.world.tissue).reshape(-1)[vox] != code).sum())
        assert sim.readouts()["tumour_killed_by_adc"] == int((np.asarray(sim.world.tissue).reshape(-1)[vox]
                                                                != code).sum())
    occupancy = sim.readouts()["occupancy_trop2_core"]
    return killed, expected, var, occupancy


def test_adc_kills_target_positive_cells_by_its_occupancy_and_more_at_higher_occupancy():
    low, high = _adc_run(0.05), _adc_run(50.0)
    for killed, expected, var, _ in (low, high):
        assert abs(killed - expected) <= 4.0 * np.sqrt(var) + 1.0, (killed, expected)
    assert low[3] < 0.5 < 0.9 < high[3], (low[3], high[3])
    assert high[0] > 2 * low[0] and high[0] > 50, (low[0], high[0])


# ----------------------------------------------------------------------------------------------------------
# Restart and bad tables
def test_restart_with_infusions_and_vaccine_doses_pending_is_bit_identical():
    cfg = parse_config({
        "backend": "numpy", "seed": 9, "grid": {"shape": [30, 30]},
        "vessels": {"pattern": "random", "density": 0.04},
        "initial": {"tumour": {"radius_um": 200.0}},
        "tumour": {"antigenicity_initial": 0.2},
        "immune": {"enabled": True, "tcell": {"recruitment_per_min": 1e-3}},
        "cell_therapy": {"cart": {"kind": "car_t", "cells": 40, "start_day": 0.05, "every_day": 0.05,
                                  "infusions": 3, "pd1_sensitivity": 0.5},
                         "til": {"kind": "til", "cells": 30, "times_day": [0.1], "site": "region",
                                 "region": {"shape": "sphere", "radius_um": 150.0}}},
        "vaccine": {"vax": {"antigen_dose": 5.0, "start_day": 0.04, "every_day": 0.08, "doses": 3}},
        "therapy": {"dac": {"preset": "decitabine", "schedule": {"start_day": 0.02, "every_day": 0.1, "doses": 3}},
                    "adc": {"preset": "sacituzumab_govitecan", "schedule": {"times_day": [0.03, 0.1]}}},
    })
    straight = Simulation(cfg)
    for _ in range(40):
        straight.step()
    first = Simulation(cfg)
    for _ in range(17):  # one infusion of cart given, two pending; til pending
        first.step()
    state = first.state()
    assert state["state"]["therapy"]["cart"]["infusions_given"] == 1
    np.testing.assert_allclose(state["state"]["therapy"]["cart"]["pending_infusion_times_min"], [144.0, 216.0])
    resumed = Simulation.from_state(cfg, state)
    for _ in range(23):
        resumed.step()
    assert_tree_equal(straight.state(), resumed.state())
    assert straight.readouts() == resumed.readouts()
    products = np.asarray(straight.agents["tcell"]["product"])
    assert (products == 1).sum() > 0 and (products == 2).sum() > 0
    assert straight.readouts()["antigenicity_mean"] > 0.2
    assert straight.module("therapy").params.drugs["adc"].doses_given == 2


def test_a_run_file_with_cell_therapy_and_vaccine_restarts_from_the_file(tmp_path):
    from abm.io import open_run
    from abm.replay import replay_run
    from abm.runner import run_simulation

    data = merge(ANTIGEN_LOW, {"name": "parent", "time": {"duration_min": 360.0},
                               "output": {"snapshot_interval_min": 120.0, "summary_plot": False},
                               "cell_therapy": {"cart": _product("car_t", cells=50, times_day=[0.0, 0.2])},
                               "vaccine": {"vax": {"antigen_dose": 5.0, "times_day": [0.0, 0.2]}}})
    del data["cell_therapy"]["cart"]["start_day"]
    parent = run_simulation(parse_config(data), tmp_path / "parent", progress=False)
    resumed = replay_run(parent.h5_path, 240.0, out_dir=tmp_path / "resumed", progress=False)
    with open_run(parent.h5_path) as p, open_run(resumed.h5_path) as r:
        assert p.state(240.0)["state"]["therapy"]["cart"]["infusions_given"] == 1
        assert_tree_equal(p.state(360.0), r.state(360.0))  # the infusion and dose at 288 min, restored from the file
        ts = p.timeseries()
        assert ts["doses_cart"].sum() == 2 and ts["doses_vax"].sum() == 2 and ts["cart_infused"].sum() > 90
        assert [(t["name"], t["kind"]) for t in p.therapies()] == [("cart", "car_t"), ("vax", "vaccine")]


@pytest.mark.parametrize("extra, expected", [
    ({"cell_therapy": {"cart": {"kind": "car_t", "cells": -5}}}, "cell_therapy.cart.cells"),
    ({"cell_therapy": {"cart": {"kind": "car_t", "cells": 10, "region": {"shape": "sphere", "radius": 50.0}}}},
     "cell_therapy.cart.region.radius"),
    ({"cell_therapy": {"cart": {"kind": "car_t", "cells": 10, "infusions": 2}}}, "need every_day"),
    ({"cell_therapy": {"cart": {"kind": "til", "cells": 10, "car_recognition": 0.5}}}, "car_recognition is for"),
    ({"cell_therapy": {"cart": {"kind": "nk", "cells": 10}}}, "cell_therapy.cart.kind"),
    ({"cell_therapy": {"cart": {"kind": "car_t", "cells": 10, "region": {"shape": "box", "lower_um": [0.0],
                                                                         "upper_um": [10.0]}}}},
     "cell_therapy.cart.region.lower_um has 1 coordinates"),
    ({"vaccine": {"vax": {"antigen_dose": -1.0}}}, "vaccine.vax.antigen_dose"),
    ({"vaccine": {"vax": {"antigen_dose": 1.0, "doses": 0}}}, "doses must be at least 1"),
    ({"immune": {"enabled": False}, "vaccine": {"vax": {"antigen_dose": 1.0}}}, "needs the immune layer"),
    ({"cell_therapy": {"transferred": {"kind": "car_t", "cells": 10}}}, "'transferred' is reserved"),
    ({"therapy": {"adc": {k: v for k, v in _adc(1.0).items() if k != "payload"}}},
     "needs one target and a payload table"),
    ({"therapy": {"x": {"preset": "nivolumab", "payload": {"kill_max_per_day": 1.0}}}}, "payload is for kind"),
])
def test_bad_cell_therapies_and_vaccines_are_config_errors_naming_the_key(tmp_path, capsys, extra, expected):
    import tomli_w

    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(merge(ANTIGEN_LOW, extra)), encoding="utf-8")
    assert cli_main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
