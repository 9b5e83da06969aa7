"""Immune and stromal layer: each resistance mechanism's direction, the biased walk, conservation, restart."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import assert_tree_equal
from immune_helpers import add_macrophages, add_tcells, arena, merge, run_kills, tumour_voxels

from abm.config import parse_config
from abm.model import Simulation
from abm.modules.immune.macrophage import M1, M2

KILL_ONLY = {"immune": {"tcell": {"rules": ["tcell_secretion", "tcell_kill"]}}}


def total_kills(extra: dict, n_tcells=60, steps=150, seeds=(0, 1, 2), setup=None) -> int:
    total = 0
    for seed in seeds:
        sim = arena(merge(KILL_ONLY, extra), seed)
        add_tcells(sim, tumour_voxels(sim, n_tcells, seed))
        if setup is not None:
            setup(sim, seed)
        total += run_kills(sim, steps)
    return total


def test_tumour_only_model_has_no_immune_layer():
    sim = Simulation(parse_config({"backend": "numpy", "grid": {"shape": [20, 20]}}))
    sim.step()
    assert list(sim.fields) == ["oxygen"] and list(sim.agents) == ["tumour"]
    assert "tcell_effector" not in sim.metrics() and "ecm" not in sim.state()["fields"]
    assert sorted(sim.state()["state"]) == ["step", "time_min", "tumour", "vasculature"]


def test_adaptive_pdl1_means_fewer_kills():
    on = total_kills({"resistance": {"adaptive_pdl1": True}})
    off = total_kills({"resistance": {"adaptive_pdl1": False}})
    assert on < 0.7 * off, (on, off)


def test_pdl1_rises_with_ifng_and_decays_with_its_half_life():
    sim = arena({"immune": {"tcell": {"rules": []}}, "fields": {"ifng": {"decay_per_min": 0.0,
                                                                         "boundary": {"default": "noflux"}}}})
    sim.fields["ifng"].data[...] = 0.11  # the half-max
    for _ in range(240):  # 10 PD-L1 half-lives
        sim.step()
    p = sim.config.tumour
    expected = p.pdl1_baseline + 0.5 * p.pdl1_ifng_induced
    assert np.allclose(np.asarray(sim.tumour["pdl1"]), expected, atol=2e-3)
    sim.fields["ifng"].data[...] = 0.0
    for _ in range(24):  # one half-life (144 min)
        sim.step()
    assert np.allclose(np.asarray(sim.tumour["pdl1"]), p.pdl1_baseline + 0.25 * p.pdl1_ifng_induced, atol=2e-3)


def test_exhaustion_stops_killing_and_raises_lag3_tim3():
    fast = {"immune": {"tcell": {"exhaustion_per_engagement": 0.02}}}
    on = total_kills(merge(fast, {"resistance": {"exhaustion": True}}))
    off = total_kills(merge(fast, {"resistance": {"exhaustion": False}}))
    assert on < 0.7 * off, (on, off)
    sim = arena(merge(KILL_ONLY, fast))
    add_tcells(sim, tumour_voxels(sim, 20))
    for _ in range(60):
        sim.step()
    t = sim.agents["tcell"]
    assert sim.metrics()["exhausted_fraction"] > 0.5
    assert np.allclose(t["lag3_tim3"], np.minimum(t["exhaustion"], 1.0))


@pytest.mark.parametrize("suppressor", ["treg", "m2"])
def test_suppressive_cells_lower_the_kill_rate(suppressor):
    def add_suppressors(sim, seed):
        vox = tumour_voxels(sim, 60, seed + 100)
        if suppressor == "treg":
            add_tcells(sim, vox, is_treg=True)
        else:
            add_macrophages(sim, vox, M2)

    quiet = {"resistance": {"adaptive_pdl1": False}}
    with_cells = total_kills(quiet, setup=add_suppressors, seeds=(0, 1))
    without = total_kills(quiet, seeds=(0, 1))
    switched_off = total_kills(merge(quiet, {"resistance": {"suppressive_cells": False}}), setup=add_suppressors,
                               seeds=(0, 1))
    assert with_cells < 0.7 * without, (with_cells, without)
    assert switched_off > 0.85 * without, (switched_off, without)


def test_hypoxia_suppresses_killing_in_hypoxic_regions():
    hypoxic = {"fields": {"oxygen": {"boundary": {"value": 3.0}, "initial_mmHg": 3.0}}}
    on = total_kills(merge(hypoxic, {"resistance": {"hypoxia": True, "adaptive_pdl1": False}}))
    off = total_kills(merge(hypoxic, {"resistance": {"hypoxia": False, "adaptive_pdl1": False}}))
    assert on < 0.6 * off, (on, off)


def test_antigen_mutation_under_immune_pressure_lowers_mean_antigenicity():
    grow = {
        "grid": {"shape": [30, 30]},
        "initial": {"tumour": {"radius_um": 150.0}},
        "tumour": {"rules": ["oxygen_uptake", "proliferation", "pdl1_expression", "secretion"],
                   "proliferation_rate_per_min": 2.0e-3, "antigen_mutation_prob": 0.5,
                   "antigen_mutation_step": 0.2},
        "resistance": {"adaptive_pdl1": False, "exhaustion": False, "hypoxia": False},
        "immune": {"immune_capacity": 4, "tcell": {"kill_rate_per_day": 40.0, "max_kills": 1000}},
    }
    means = {}
    for pressure in (True, False):
        vals = []
        for seed in (0, 1):
            sim = arena(grow, seed)
            if pressure:
                add_tcells(sim, np.arange(0, 900, 3))
            for _ in range(250):
                sim.step()
            vals.append(sim.metrics()["antigenicity_mean"])
        means[pressure] = float(np.mean(vals))
    assert means[True] < means[False] - 0.05, means
    # Without the mechanism, antigenicity never changes (the seeded spread is 0).
    sim = arena(merge(grow, {"resistance": {"antigen_loss": False}}))
    add_tcells(sim, np.arange(0, 900, 3))
    for _ in range(50):
        sim.step()
    assert np.all(np.asarray(sim.tumour["antigenicity"]) == np.float32(0.8))


def _infiltration(ecm_density: float, exclusion: bool) -> float:
    counts = []
    for seed in (0, 1, 2):
        sim = arena({
            "seed": seed,
            "resistance": {"stromal_exclusion": exclusion},
            "immune": {"immune_capacity": 2, "tcell": {"rules": ["tcell_move"]},
                       "ecm": {"initial_stroma": ecm_density}},
        }, seed)
        core, _, stroma = sim.tumour_regions()
        # Start T cells on a ring in the stroma around the nodule.
        r = np.hypot(*np.meshgrid(np.arange(40) - 19.5, np.arange(40) - 19.5, indexing="ij"))
        ring = np.nonzero(((r > 14) & (r < 16)).reshape(-1))[0]
        add_tcells(sim, ring)
        for _ in range(120):
            sim.step()
        lesion = (sim.tissue == sim.world.code("tumour")).reshape(-1)
        counts.append(np.count_nonzero(lesion[np.asarray(sim.agents["tcell"]["voxel"])]))
    return float(np.mean(counts))


def test_dense_ecm_keeps_t_cells_out_of_the_tumour():
    sparse = _infiltration(0.0, True)
    dense = _infiltration(1.0, True)
    assert dense < 0.5 * sparse, (dense, sparse)
    assert _infiltration(1.0, False) > 0.8 * sparse


def test_ecm_hinders_large_molecules_only():
    cfg = {"fields": {"vegf": {"large_molecule": True}}}
    sim = arena(merge(cfg, {"immune": {"ecm": {"initial_stroma": 1.0}}}))
    d = sim.fields["vegf"].diffusivity
    assert np.ndim(d) == sim.world.ndim and float(np.min(d)) < 0.2 * 6000.0
    assert np.isscalar(sim.fields["ifng"].diffusivity)
    off = arena(merge(cfg, {"resistance": {"stromal_exclusion": False}, "immune": {"ecm": {"initial_stroma": 1.0}}}))
    assert np.all(np.asarray(off.fields["vegf"].diffusivity) == 6000.0)


def test_caf_activation_and_ecm_deposition():
    sim = arena({"immune": {"caf": {"rules": ["caf_secretion", "caf_activation", "ecm_remodelling"],
                                    "stroma_density": 0.5}, "ecm": {"initial_stroma": 0.0}}})
    caf = sim.agents["caf"]
    assert len(caf) > 50
    a0 = float(np.mean(caf["activation"]))
    for _ in range(100):
        sim.step()
    m = sim.metrics()
    assert float(np.mean(caf["activation"])) > a0
    ecm = np.asarray(sim.ecm).reshape(-1)
    assert ecm[np.asarray(caf["voxel"])].mean() > 0.05 and float(sim.fields["cxcl12"].data.max()) > 0
    # MMPs keep the tumour's ECM below that around the CAFs.
    assert ecm[np.asarray(sim.tumour["voxel"])].mean() < 0.5 * ecm[np.asarray(caf["voxel"])].mean()
    assert m["caf_activation_mean"] > a0


def test_chemokine_loss_starves_recruitment():
    def recruited(loss_on: bool) -> int:
        total = 0
        for seed in (0, 1):
            sim = arena({
                "vessels": {"pattern": "random", "density": 0.05},
                "resistance": {"chemokine_loss": loss_on},
                "immune": {"chemokine_loss_fraction": 0.9, "priming_initial": 1.0,
                           "tcell": {"rules": ["tcell_recruitment"], "recruitment_per_min": 5e-3}},
            }, seed)
            for _ in range(100):
                sim.step()
                total += int(sim.metrics()["tcell_recruited"])
        return total

    on, off = recruited(True), recruited(False)
    assert on < 0.6 * off, (on, off)


def test_abnormal_vasculature_cuts_perfusion_oxygen_and_entry():
    base = {"vessels": {"pattern": "random", "density": 0.05},
            "fields": {"vegf": {"decay_per_min": 0.0, "boundary": {"default": "noflux"}, "initial": 2.0}},
            "immune": {"priming_initial": 1.0, "tcell": {"rules": ["tcell_recruitment"], "recruitment_per_min": 5e-3}}}
    out = {}
    for on in (True, False):
        sim = arena(merge(base, {"resistance": {"abnormal_vasculature": on}}))
        recruited = 0
        for _ in range(60):
            sim.step()
            recruited += int(sim.metrics()["tcell_recruited"])
        o2 = float(np.mean(np.asarray(sim.fields["oxygen"].data)[np.asarray(sim.vessels)]))
        out[on] = (recruited, o2, float(np.mean(sim.vessel_perfusion())))
    assert out[True][2] < 0.5 and out[False][2] == 1.0
    assert out[True][0] < 0.6 * out[False][0], out
    assert out[True][1] < out[False][1], out


def test_macrophage_polarisation_hypoxia_drives_m2():
    def m2_fraction(hypoxia_on: bool, o2: float) -> float:
        sim = arena({
            "fields": {"oxygen": {"boundary": {"value": o2}, "initial_mmHg": o2}},
            "tumour": {"rules": []},
            "resistance": {"hypoxia": hypoxia_on},
            "immune": {"immune_capacity": 4, "macrophage": {"rules": ["macrophage_polarisation"]}},
        })
        add_macrophages(sim, np.arange(0, 1600, 2), 0)
        for _ in range(100):
            sim.step()
        return float(np.mean(np.asarray(sim.agents["macrophage"]["state"]) == M2))

    assert m2_fraction(True, 2.0) > 2 * m2_fraction(True, 38.0)
    assert m2_fraction(False, 2.0) < 0.5 * m2_fraction(True, 2.0)


def test_m1_macrophages_kill_and_ifng_polarises_to_m1():
    sim = arena({"immune": {"tcell": {"rules": []}, "macrophage": {"rules": ["macrophage_kill"],
                                                                   "m1_kill_rate_per_day": 5.0}}})
    add_macrophages(sim, tumour_voxels(sim, 60), M1)
    killed = 0
    for _ in range(50):
        sim.step()
        killed += int(sim.metrics()["tumour_killed_by_macrophage"])
    assert killed > 10
    sim = arena({"immune": {"tcell": {"rules": []}, "macrophage": {"rules": ["macrophage_polarisation"]}},
                 "resistance": {"hypoxia": False},
                 "fields": {"ifng": {"decay_per_min": 0.0, "boundary": {"default": "noflux"}, "initial": 1.0}}})
    add_macrophages(sim, np.arange(0, 1600, 4), 0)
    for _ in range(200):
        sim.step()
    assert np.mean(np.asarray(sim.agents["macrophage"]["state"]) == M1) > 0.5


def _walk_drift(gradient: float, n_steps=20, seed=0) -> tuple[float, float]:
    sim = arena({
        "seed": seed,
        "initial": {"tumour": {"radius_um": 0.0}},
        "grid": {"shape": [80, 40]},
        "fields": {"chemokine": {"diffusivity_um2_per_min": 1e-9, "decay_per_min": 0.0,
                                 "boundary": {"default": "noflux"}}},
        "immune": {"immune_capacity": 64, "tcell": {"rules": ["tcell_move"]}},
        "tumour": {"rules": []},
    }, seed)
    x = np.arange(80, dtype=np.float32)[:, None] * np.ones((1, 40), dtype=np.float32)
    sim.fields["chemokine"].data[...] = 1.0 + gradient * x
    start = np.ravel_multi_index((np.full(800, 40), np.tile(np.arange(40), 20)), (80, 40))
    add_tcells(sim, start)
    for _ in range(n_steps):
        sim.step()
    dx = np.unravel_index(np.asarray(sim.agents["tcell"]["voxel"]), (80, 40))[0] - 40
    return float(dx.mean()), float(dx.std() / np.sqrt(dx.size))


def test_tcell_walk_drifts_up_a_chemokine_gradient_and_not_in_a_flat_field():
    up, se_up = _walk_drift(0.1)
    flat, se_flat = _walk_drift(0.0)
    assert up > 5 * se_up and up > 0.5, (up, se_up)
    assert abs(flat) < 3.5 * se_flat, (flat, se_flat)


def test_immune_capacity_is_never_exceeded():
    sim = arena({"vessels": {"pattern": "random", "density": 0.05},
                 "immune": {"immune_capacity": 1, "priming_initial": 1.0, "initial_macrophages": 0.3,
                            "tcell": {"rules": ["tcell_recruitment", "tcell_move", "tcell_kill"],
                                      "recruitment_per_min": 0.05},
                            "macrophage": {"rules": ["macrophage_recruitment", "macrophage_move"]}}})
    for _ in range(40):
        sim.step()
        vox = np.concatenate([np.asarray(sim.agents[k]["voxel"]) for k in ("tcell", "macrophage")])
        assert np.bincount(vox).max(initial=0) <= 1
    assert len(sim.agents["tcell"]) > 20


FULL = {
    "backend": "numpy",
    "grid": {"shape": [50, 50]},
    "vessels": {"density": 0.04},
    "initial": {"tumour": {"radius_um": 250.0}},
    "immune": {"enabled": True, "priming_initial": 1.0, "initial_macrophages": 0.05,
               "tcell": {"recruitment_per_min": 5e-3, "max_kills": 2, "lifespan_min": 600.0},
               "caf": {"stroma_density": 0.2}},
}


def test_conservation_events_account_for_every_count_change():
    sim = Simulation(parse_config(FULL))
    prev = sim.metrics()
    seen = {"kills": 0, "deaths": 0, "recruited": 0}
    for _ in range(80):
        sim.step()
        m = sim.metrics()
        tumour = (prev["tumour_cells"] + m["tumour_births"] - m["tumour_deaths_apoptosis"]
                  - m["tumour_deaths_necrosis"] - m["tumour_killed_by_tcell"] - m["tumour_killed_by_macrophage"])
        assert m["tumour_cells"] == tumour
        t_prev = prev["tcell_effector"] + prev["tcell_treg"]
        assert m["tcell_effector"] + m["tcell_treg"] == t_prev + m["tcell_recruited"] + m["treg_recruited"] - m[
            "tcell_deaths"]
        mac = lambda x: x["macrophage_m0"] + x["macrophage_m1"] + x["macrophage_m2"]  # noqa: E731
        assert mac(m) == mac(prev) + m["macrophage_recruited"] - m["macrophage_deaths"]
        seen["kills"] += m["kills"]
        seen["deaths"] += m["tcell_deaths"]
        seen["recruited"] += m["tcell_recruited"]
        prev = m
    assert all(v > 0 for v in seen.values()), seen


def test_restart_from_state_is_bit_identical_with_the_immune_layer():
    cfg = parse_config(merge(FULL, {"fields": {"vegf": {"large_molecule": True}},
                                    "immune": {"ecm": {"update_every_steps": 3}}}))
    sim = Simulation(cfg)
    for _ in range(31):
        sim.step()
    restarted = Simulation.from_state(cfg, copy.deepcopy(sim.state()))
    for _ in range(20):
        sim.step()
        restarted.step()
    assert_tree_equal(sim.state(), restarted.state())


@pytest.mark.parametrize("name, code", [("inflamed", 1), ("excluded", 2), ("desert", 3)])
def test_scenario_configs_reach_their_immune_phenotype(name, code):
    from pathlib import Path

    from abm.config import load_config
    from abm.model import PHENOTYPE_CODES

    assert PHENOTYPE_CODES[name] == code
    path = Path(__file__).resolve().parents[1] / "configs" / f"immune_{name}.toml"
    cfg = load_config(path, ["backend=numpy", "time.duration_min=1800"])  # 300 steps: the label has settled
    sim = Simulation(cfg)
    for _ in range(cfg.n_steps):
        sim.step()
    assert sim.metrics()["immune_phenotype_code"] == code
    if name == "excluded":  # removing stromal exclusion lets the T cells into the core
        open_cfg = load_config(path, ["backend=numpy", "time.duration_min=1800", "resistance.stromal_exclusion=false"])
        sim = Simulation(open_cfg)
        for _ in range(open_cfg.n_steps):
            sim.step()
        assert sim.metrics()["immune_phenotype_code"] == PHENOTYPE_CODES["inflamed"]


def test_angiogenesis_is_off_by_default_and_follows_vegf():
    base = {"vessels": {"pattern": "random", "density": 0.02},
            "fields": {"vegf": {"decay_per_min": 0.0, "boundary": {"default": "noflux"}}},
            "immune": {"tcell": {"rules": []}}}
    grown = {}
    for vegf, on in ((2.0, True), (0.0, True), (2.0, False)):
        sim = arena(merge(base, {"vessels": {"angiogenesis": on, "angiogenesis_rate_per_min": 1e-3},
                                 "fields": {"vegf": {"initial": vegf}}}))
        n0 = int(np.count_nonzero(np.asarray(sim.vessels)))
        total = 0
        for _ in range(50):
            sim.step()
            total += int(sim.metrics()["vessels_sprouted"])
        assert int(np.count_nonzero(np.asarray(sim.vessels))) == n0 + total
        assert not np.any(np.asarray(sim.vessels).reshape(-1)[np.asarray(sim.tumour["voxel"])])
        grown[(vegf, on)] = total
    assert grown[(2.0, True)] > 20 and grown[(0.0, True)] < 0.2 * grown[(2.0, True)] and grown[(2.0, False)] == 0
    assert parse_config({}).vessels.angiogenesis is False


def test_immune_layer_runs_and_conserves_on_every_backend(backend_name):
    sim = Simulation(parse_config(merge(FULL, {"backend": backend_name, "vessels": {"angiogenesis": True}})))
    prev = sim.metrics()
    for _ in range(20):
        sim.step()
        m = sim.metrics()
        t_prev = prev["tcell_effector"] + prev["tcell_treg"]
        assert m["tcell_effector"] + m["tcell_treg"] == t_prev + m["tcell_recruited"] + m["treg_recruited"] - m[
            "tcell_deaths"]
        prev = m
    assert m["tcell_effector"] > 0 and 0 <= m["immune_phenotype_code"] <= 3


def test_angiogenesis_needs_the_immune_layer():
    from abm.config import ConfigError

    with pytest.raises(ConfigError, match="angiogenesis needs the VEGF field"):
        parse_config({"vessels": {"angiogenesis": True}})


def test_restart_through_an_hdf5_snapshot_is_bit_identical(tmp_path):
    import h5py

    from abm.io.writer import RunWriter, read_snapshot_state

    cfg = parse_config(merge(FULL, {"fields": {"vegf": {"large_molecule": True}},
                                    "immune": {"ecm": {"update_every_steps": 4}}}))
    sim = Simulation(cfg)
    for _ in range(13):
        sim.step()
    writer = RunWriter(tmp_path / "sim.h5", "", cfg.seed, "numpy", sim.shape, sim.spacing_um,
                       readouts=sim.readout_declarations(), field_units=sim.field_units())
    writer.record(sim.metrics())
    writer.write_snapshot(sim.state())
    writer.close()
    with h5py.File(tmp_path / "sim.h5") as f:
        state = read_snapshot_state(f["snapshots/000000"])
        assert "tcell_effector" in f["timeseries"] and "immune_phenotype_code" in f["timeseries"]
    restarted = Simulation.from_state(cfg, state)
    for _ in range(12):
        sim.step()
        restarted.step()
    assert sim.metrics() == restarted.metrics()
    for kind in ("tumour", "tcell", "macrophage", "caf"):
        for col, arr in sim.state()["agents"][kind].items():
            assert np.array_equal(arr, restarted.state()["agents"][kind][col]), (kind, col)
