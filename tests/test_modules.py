"""The engine and its modules: layering, one schedule, rule order, readouts at the same instant, branching."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_tree_equal

from abm.config import load_config, parse_config
from abm.engine import BuildError, Declaration, Readout, TableSpec, rule
from abm.engine import Simulation as EngineSimulation
from abm.engine.agents import Column
from abm.io import open_run
from abm.model import Simulation
from abm.modules.base import BaseModule, Params
from abm.replay import replay_run
from abm.runner import run_simulation

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_engine_imports_no_module_and_kernels_import_nothing_from_abm():
    for path in (REPO / "abm" / "engine").glob("*.py"):
        bad = {n for n in _imports(path) if n.startswith(("abm.modules", "abm.model", "abm.io", "abm.cli"))}
        assert not bad, f"{path.name} imports {bad}"
    for path in (REPO / "kernels").glob("*.py"):
        bad = {n for n in _imports(path) if n == "abm" or n.startswith("abm.")}
        assert not bad, f"{path.name} imports {bad}"
    for path in (REPO / "abm").rglob("*.py"):
        if "adapters" in path.parts:
            continue
        bad = {n for n in _imports(path)
               if n.split(".")[0] in ("mesa", "solara", "dask", "distributed", "dask_jobqueue")}
        assert not bad, f"{path} imports {bad}"


def _small_immune(extra: dict | None = None) -> dict:
    data = load_config(REPO / "configs" / "immune_inflamed.toml").model_dump(mode="json")
    data.update(backend="numpy")
    data["grid"]["shape"] = [50, 50]
    data["initial"]["tumour"]["radius_um"] = 250.0
    data["immune"]["initial_macrophages"] = 0.2
    data["immune"]["caf"]["stroma_density"] = 0.2
    data["immune"]["tcell"]["recruitment_per_min"] = 5e-3
    for key, value in (extra or {}).items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return data


RULE_LISTS = ["tumour.rules", "immune.tcell.rules", "immune.macrophage.rules", "immune.caf.rules"]


def test_permuting_any_rule_list_gives_bit_identical_results():
    base = _small_immune()

    def run(data):
        sim = Simulation(parse_config(data))
        for _ in range(25):
            sim.step()
        return sim.state(), sim.readouts()

    ref_state, ref_readouts = run(base)
    assert ref_readouts["kills"] + ref_readouts["tcell_effector"] > 0  # the immune rules are busy
    for key in RULE_LISTS:
        node = base
        for part in key.split(".")[:-1]:
            node = node[part]
        names = list(node[key.split(".")[-1]])
        permuted = _small_immune({key: names[::-1]})
        state, readouts = run(permuted)
        assert_tree_equal(ref_state, state)
        assert readouts == ref_readouts, key


def test_readouts_equal_a_recount_from_the_tables_at_every_step():
    sim = Simulation(parse_config(_small_immune()))
    world = sim.world
    for _ in range(20):
        sim.step()
        r = sim.readouts()
        tum, t, m = world.tables["tumour"], world.tables["tcell"], world.tables["macrophage"]
        vox = np.asarray(tum["voxel"])
        assert r["tumour_cells"] == len(tum) == np.count_nonzero(world.tissue == world.code("tumour"))
        assert r["necrotic_voxels"] == np.count_nonzero(world.layers["necrotic"])
        assert r["tcell_effector"] + r["tcell_treg"] == len(t)
        assert r["macrophage_m0"] + r["macrophage_m1"] + r["macrophage_m2"] == len(m)
        assert r["caf_cells"] == len(world.tables["caf"])
        counts = np.bincount(np.concatenate([np.asarray(t["voxel"]), np.asarray(m["voxel"])]), minlength=world.size)
        np.testing.assert_array_equal(world.counts("immune"), counts)
        np.testing.assert_array_equal(np.nonzero(world.rows("tumour") >= 0)[0], np.sort(vox))
        # Regions rebuilt from the tumour table itself (not from the tissue index).
        lesion = np.zeros(world.size, bool)
        lesion[vox] = True
        lesion |= np.asarray(world.layers["necrotic"]).reshape(-1)
        core, margin, stroma = (np.asarray(x).reshape(-1) for x in sim.tumour_regions())
        assert not (lesion & stroma).any() and (core | margin | stroma).all()
        eff = np.asarray(t["voxel"])[~np.asarray(t["is_treg"])]
        assert r["cd8_core"] == np.count_nonzero(core[eff]) and r["cd8_stroma"] == np.count_nonzero(stroma[eff])
        o2 = np.asarray(world.fields["oxygen"].data).reshape(-1)[vox]
        assert r["tumour_hypoxic"] == np.count_nonzero(o2 < 10.0)


def test_every_readout_is_declared_with_a_unit_and_kind():
    sim = Simulation(parse_config(_small_immune()))
    sim.step()
    declared = sim.readout_declarations()
    assert set(sim.readouts()) - {"time_min"} == set(declared)
    for name, (unit, kind) in declared.items():
        assert unit and kind in ("count", "event", "level", "ratio", "code"), name
    assert sim.field_units()["oxygen"] == "mmHg" and sim.field_units()["ecm"] == "-"


# ----------------------------------------------------------------------------------------------------------
# Build checks
class _Toy(BaseModule):
    name = "toy"

    def __init__(self, rules, tables=()):
        super().__init__(Params(), [r.name for r in rules])
        self._rules, self._tables = rules, tables

    def declare(self):
        return Declaration(tables=list(self._tables), rules=list(self._rules),
                           readouts=[Readout("toy_level", "-", "level")])


def _noop(world, params, rng, intents):
    return None


def _toy_sim(*modules):
    cfg = parse_config({"backend": "numpy", "grid": {"shape": [8, 8]}})
    return EngineSimulation(cfg, list(modules))


def test_two_writers_of_one_column_are_refused_at_build():
    table = TableSpec("blob", {"voxel": Column("int64", "-", ""), "size": Column("float32", "-", "")})
    a = rule("grow", "update", writes=("blob.size",))(_noop)
    b = rule("shrink", "update", writes=("blob.size",))(_noop)
    with pytest.raises(BuildError, match="blob.size"):
        _toy_sim(_Toy([a, b], [table]))
    c = rule("typo", "update", writes=("blob.sise",))(_noop)
    with pytest.raises(BuildError, match="does not exist"):
        _toy_sim(_Toy([c], [table]))


def test_a_rule_whose_needs_are_missing_is_left_out_and_listed():
    r = rule("needs_ifng", "exchange", needs=("field:ifng",))(_noop)
    sim = _toy_sim(_Toy([r]))
    assert sim.rule_names() == [] and "toy/needs_ifng" in sim.inactive
    tumour_only = Simulation(parse_config({"backend": "numpy", "grid": {"shape": [10, 10]}}))
    assert "tumour/pdl1_expression" in tumour_only.inactive and "tumour/proliferation" in tumour_only.rule_names()


def test_rules_run_phase_by_phase_in_registry_order():
    sim = Simulation(parse_config(_small_immune()))
    names = sim.rule_names()
    phases = [r.phase for p in ("systemic", "exchange", "signal", "update", "behaviour")
              for _, r, _ in sim.schedule[p]]
    assert phases == sorted(phases, key=("systemic", "exchange", "signal", "update", "behaviour").index)
    assert names.index("vasculature/oxygen_supply") > names.index("immune/tcell_secretion")
    assert names.index("tumour/pdl1_expression") < names.index("immune/tcell_kill")


# ----------------------------------------------------------------------------------------------------------
# Branching that adds a module
def test_replay_that_switches_on_the_immune_layer_adds_its_modules_and_fields(tmp_path):
    data = {"name": "plain", "backend": "numpy", "seed": 4, "grid": {"shape": [40, 40]},
            "time": {"duration_min": 720.0}, "initial": {"tumour": {"radius_um": 200.0}},
            "output": {"snapshot_interval_min": 360.0, "summary_plot": False}}
    parent = run_simulation(parse_config(data), tmp_path / "parent", progress=False)
    branch = replay_run(parent.h5_path, 360.0, out_dir=tmp_path / "branch", progress=False,
                        overrides=["immune.enabled=true", "time.duration_min=1080.0"])
    with open_run(parent.h5_path) as p, open_run(branch.h5_path) as b:
        assert json.loads(b.attrs["branch_added_modules"]) == ["stroma", "immune"]
        assert set(json.loads(b.attrs["branch_added_fields"])) == {"chemokine", "ifng", "tgfb", "vegf", "cxcl12"}
        parent_state, branch_state = p.state(360.0), b.state(360.0)
        # Identical to the parent before (and at) the branch, for everything the parent had.
        for name, data_ in parent_state["fields"].items():
            np.testing.assert_array_equal(branch_state["fields"][name], data_)
        assert_tree_equal(parent_state["agents"]["tumour"], branch_state["agents"]["tumour"])
        assert_tree_equal(parent_state["state"]["tumour"], branch_state["state"]["tumour"])
        assert "immune" in branch_state["state"] and "ecm" in branch_state["fields"]
        ts = b.timeseries()
        assert ts["time_min"][-1] == 1080.0 and np.isfinite(ts["tcell_effector"]).all()


def test_initial_tcells_are_seeded_on_distinct_voxels_of_the_shell():
    data = {"backend": "numpy", "grid": {"shape": [40, 40]}, "vessels": {"pattern": "none"},
            "initial": {"tumour": {"radius_um": 200.0}},
            "immune": {"enabled": True, "initial_tcells": 150, "initial_tcell_gap_um": 30.0,
                       "initial_tcell_shell_um": 75.0}}
    sim = Simulation(parse_config(data))
    t = sim.agents["tcell"]
    vox = np.asarray(t["voxel"])
    assert len(t) == 150 and np.unique(vox).size == 150 and not np.asarray(t["is_treg"]).any()
    centre = np.array([400.0, 400.0])
    r = np.linalg.norm((np.stack(np.unravel_index(vox, (40, 40)), 1) + 0.5) * 20.0 - centre, axis=1)
    assert r.min() > 230.0 and r.max() <= 305.0
    data["immune"]["initial_tcells"] = 5000
    from abm.config import ConfigError

    with pytest.raises(ConfigError, match="initial_tcells"):
        Simulation(parse_config(data))
