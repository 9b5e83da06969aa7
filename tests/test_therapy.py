"""Therapy module: exact PK, delivery, competitive occupancy, restart and branching with doses, bad regimens."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_tree_equal

from abm.cli import main as cli_main
from abm.config import ConfigError, parse_config
from abm.model import Simulation
from kernels.pk import compartment_model, propagate


def _drug(**over) -> dict:
    d = {"kind": "antibody", "preset": "nivolumab",
         "schedule": {"start_day": 0.0, "dose_mg_per_kg": 3.0, "infusion_min": 0.0}}
    for key, value in over.items():
        node = d
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return d


def _config(therapy: dict, **extra) -> dict:
    base = {"backend": "numpy", "seed": 2, "grid": {"shape": [30, 30]}, "time": {"duration_min": 600.0},
            "vessels": {"density": 0.05}, "initial": {"tumour": {"radius_um": 150.0}}, "therapy": therapy}
    base.update(extra)
    return base


# ----------------------------------------------------------------------------------------------------------
# PK against analytic curves
def test_one_compartment_bolus_matches_the_exponential():
    sim = Simulation(parse_config(_config({"drug": _drug(pk__model="one_compartment", pk__clearance_L_per_day=0.5,
                                                         pk__central_volume_L=5.0)}, grid={"shape": [8, 8]},
                                          initial={"tumour": {"radius_um": 40.0}})))
    drug = sim.module("therapy").params.drugs["drug"]
    dose = 3.0 * 70.0
    for step in range(1, 200):
        sim.step()
        t_day = step * 6.0 / 1440.0
        exact = dose / 5.0 * np.exp(-0.5 / 5.0 * t_day)
        assert drug.plasma_mg_per_L == pytest.approx(exact, rel=1e-3)


def test_two_compartment_bolus_matches_the_biexponential():
    cl, v1, v2, q = 0.2, 3.6, 2.8, 0.77
    model = compartment_model("two_compartment", cl, v1, v2, q)
    k10, k12, k21 = cl / v1, q / v1, q / v2
    s = k10 + k12 + k21
    alpha = (s + np.sqrt(s * s - 4 * k10 * k21)) / 2
    beta = (s - np.sqrt(s * s - 4 * k10 * k21)) / 2
    dose = 240.0
    a_coef = dose / v1 * (alpha - k21) / (alpha - beta)
    b_coef = dose / v1 * (k21 - beta) / (alpha - beta)
    x = np.array([dose, 0.0])
    for h in (0.1, 0.37, 2.0, 7.5):  # uneven steps: the propagator is exact at any step
        x = propagate(model, x, h)
    t = 0.1 + 0.37 + 2.0 + 7.5
    exact = a_coef * np.exp(-alpha * t) + b_coef * np.exp(-beta * t)
    assert x[0] / v1 == pytest.approx(exact, rel=1e-9)


def test_repeated_dosing_reaches_the_accumulation_factor():
    cl, v, tau, n = 2.0, 4.0, 1.0, 12
    k = cl / v
    sim = Simulation(parse_config(_config(
        {"drug": _drug(pk__model="one_compartment", pk__clearance_L_per_day=cl, pk__central_volume_L=v,
                       schedule__every_day=tau, schedule__doses=n)},
        grid={"shape": [8, 8]}, initial={"tumour": {"radius_um": 40.0}}, time={"duration_min": 1440.0 * n})))
    drug = sim.module("therapy").params.drugs["drug"]
    peaks = []
    for _ in range(n):
        sim.step()  # the dose step: the bolus enters at its start and decays for one step
        peaks.append(drug.plasma_mg_per_L)
        for _ in range(int(tau * 1440 / 6) - 1):
            sim.step()
    # Peak after dose n over the first: (1 - e^{-n k tau}) / (1 - e^{-k tau}), the accumulation factor at n -> inf.
    expected = (1.0 - np.exp(-n * k * tau)) / (1.0 - np.exp(-k * tau))
    assert peaks[-1] / peaks[0] == pytest.approx(expected, rel=1e-3)
    assert expected > 0.99 / (1.0 - np.exp(-k * tau))  # close to the steady-state accumulation factor


def test_infusion_spreads_the_dose_and_conserves_it():
    sim = Simulation(parse_config(_config({"drug": _drug(pk__model="one_compartment", pk__clearance_L_per_day=1e-9,
                                                         pk__central_volume_L=5.0, schedule__infusion_min=60.0)})))
    drug = sim.module("therapy").params.drugs["drug"]
    levels = []
    for _ in range(12):
        sim.step()
        levels.append(drug.plasma_mg_per_L)
    assert levels[0] == pytest.approx(210.0 / 5.0 * 6 / 60, rel=1e-6)  # a tenth of the hour's infusion
    assert levels[-1] == pytest.approx(210.0 / 5.0, rel=1e-6) and levels[9] == pytest.approx(levels[-1])


# ----------------------------------------------------------------------------------------------------------
# Delivery and occupancy
def test_drug_enters_tissue_at_vessels_and_occupancy_follows_the_binding_law():
    sim = Simulation(parse_config(_config({"nivo": _drug()})))
    for _ in range(60):
        sim.step()
    c = np.asarray(sim.fields["nivo"].data, dtype=np.float64)
    vessels = np.asarray(sim.vessels)
    assert c[vessels].mean() > c[~vessels].mean() > 0  # supplied at vessels, spread by diffusion
    theta = np.asarray(sim.layers["occupancy_pd1"], dtype=np.float64)
    kd = parse_config(_config({"nivo": _drug()})).therapy["nivo"].targets[0].kd_nM
    np.testing.assert_allclose(theta, (c / kd) / (1 + c / kd), rtol=1e-5)


def test_two_drugs_on_one_target_share_it_and_a_bispecific_fills_both():
    therapy = {"nivo": _drug(), "pembro": _drug(preset="pembrolizumab"),
               "ivo": _drug(preset="ivonescimab")}
    sim = Simulation(parse_config(_config(therapy)))
    for _ in range(40):
        sim.step()
    pd1 = np.asarray(sim.layers["occupancy_pd1"], dtype=np.float64)
    assert pd1.max() <= 1.0 and pd1.max() > 0.5
    assert np.asarray(sim.layers["occupancy_vegf"]).max() > 0  # ivonescimab's second arm
    # The shared lattice equals the competitive law over all three PD-1 binders.
    cfg = sim.config
    s = sum(np.asarray(sim.fields[n].data, dtype=np.float64) / next(t.kd_nM for t in cfg.therapy[n].targets
                                                                   if t.target == "PD-1") for n in therapy)
    np.testing.assert_allclose(pd1, s / (1 + s), rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# Restart and branching
def test_restart_with_pending_doses_is_bit_identical():
    cfg = parse_config(_config({"nivo": _drug(schedule__start_day=0.1, schedule__every_day=0.2,
                                              schedule__doses=4, schedule__infusion_min=30.0)},
                               immune={"enabled": True}))
    straight = Simulation(cfg)
    for _ in range(50):
        straight.step()
    first = Simulation(cfg)
    for _ in range(23):  # mid-course, an infusion running
        first.step()
    resumed = Simulation.from_state(cfg, first.state())
    for _ in range(27):
        resumed.step()
    assert_tree_equal(straight.state(), resumed.state())
    assert straight.readouts() == resumed.readouts()


def test_a_therapy_added_at_a_branch_starts_there_and_may_not_dose_before_it():
    plain = parse_config(_config({}))
    parent = Simulation(plain)
    for _ in range(20):
        parent.step()
    state = parent.state()
    treated = parse_config(_config({"nivo": _drug(schedule__start_day=20 * 6 / 1440)}))
    branch = Simulation.from_state(treated, state)
    assert branch.added["modules"] == ["therapy"] and branch.added["fields"] == ["nivo"]
    branch.step()
    assert branch.readouts()["doses_nivo"] == 1.0
    too_early = parse_config(_config({"nivo": _drug(schedule__start_day=0.01)}))
    with pytest.raises(ConfigError, match="before the branch"):
        Simulation.from_state(too_early, state)


def test_a_drug_on_a_new_target_added_at_a_branch_of_a_treated_run():
    """The parent already runs the therapy module (anti-PD-1); the branch adds anti-CTLA-4: its drug field and
    occupancy lattice start empty at the branch, everything else continues from the parent."""
    start = 20 * 6 / 1440
    parent = Simulation(parse_config(_config({"nivo": _drug()})))
    for _ in range(20):
        parent.step()
    treated = parse_config(_config({"nivo": _drug(), "ipi": _drug(preset="ipilimumab", schedule__start_day=start)}))
    branch = Simulation.from_state(treated, parent.state())
    assert branch.added["modules"] == [] and sorted(branch.added["fields"]) == ["ipi", "occupancy_ctla4"]
    pd1 = np.asarray(branch.layers["occupancy_pd1"])
    np.testing.assert_array_equal(pd1, np.asarray(parent.layers["occupancy_pd1"]))
    for _ in range(5):
        branch.step()
    assert np.asarray(branch.layers["occupancy_ctla4"]).max() > 0


# ----------------------------------------------------------------------------------------------------------
# Bad regimens
@pytest.mark.parametrize("therapy, expected", [
    (_drug(preset="nivolumub"), "did you mean 'nivolumab'"),
    (_drug(targets=[{"target": "PD-2", "kd_nM": 1.0}]), "therapy.x.targets.0.target"),
    (_drug(pk__terminal_half_life_day=-3.0), "therapy.x.pk.terminal_half_life_day"),
    (_drug(schedule__doses=0), "at least one dose"),
    (_drug(schedule__times_day=[-1.0]), "therapy.x.schedule.times_day"),
])
def test_bad_regimens_are_config_errors_naming_the_key(tmp_path, capsys, therapy, expected):
    import tomli_w

    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(_config({"x": therapy})), encoding="utf-8")
    assert cli_main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_replay_with_a_therapy_file_branches_into_a_treated_arm(tmp_path, capsys):
    import json

    from abm.io import open_run
    from abm.runner import run_simulation

    data = _config({}, name="parent", time={"duration_min": 720.0}, immune={"enabled": True},
                   output={"snapshot_interval_min": 360.0, "summary_plot": False})
    parent = run_simulation(parse_config(data), tmp_path / "parent", progress=False)
    arm = tmp_path / "arm.toml"
    arm.write_text('[therapy.nivolumab]\nkind = "antibody"\npreset = "nivolumab"\n'
                   'schedule = { start_day = 0.25, dose_mg_per_kg = 3.0 }\n', encoding="utf-8")
    out = tmp_path / "arm"
    assert cli_main(["replay", str(parent.h5_path), "--from", "0.25d", "--until", "12h", "--therapy-file", str(arm),
                     "--out", str(out), "--quiet"]) == 0
    with open_run(parent.h5_path) as p, open_run(out / "sim.h5") as b:
        assert json.loads(b.attrs["branch_added_modules"]) == ["therapy"]
        assert b.attrs["branch_therapy_file"].endswith("arm.toml")
        before, at_branch = p.state(360.0), b.state(360.0)
        for name in before["fields"]:
            np.testing.assert_array_equal(before["fields"][name], at_branch["fields"][name])
        assert_tree_equal(before["agents"], at_branch["agents"])
        ts = b.timeseries()
        assert ts["doses_nivolumab"].sum() == 1 and ts["plasma_nivolumab_mg_per_L"][-1] > 10
        assert [t["name"] for t in b.therapies()] == ["nivolumab"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nshape = [10, 10]\n", encoding="utf-8")
    assert cli_main(["replay", str(parent.h5_path), "--from", "6h", "--therapy-file", str(bad),
                     "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "a therapy file holds only" in capsys.readouterr().err
