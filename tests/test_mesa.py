"""The Mesa adapter: TMEModel under DataCollector and batch_run, seeding, overrides, field and agent views.

Mesa is part of the ``test`` extra, so these tests run (never skip) wherever the suite does.
"""

import inspect
import subprocess
import sys
from pathlib import Path

import mesa
import numpy as np
import pandas as pd
import pytest

from abm.adapters.mesa_model import HAS_PROPERTY_LAYERS, TMEModel, resolve_config, root_seed
from abm.config import ConfigError, parse_config
from abm.model import Simulation

REPO = Path(__file__).resolve().parents[1]

# 30 x 30 voxels, 10 steps of 6 min; T cells recruited fast enough that immune counts change within 10 steps.
TINY = {
    "backend": "numpy",
    "grid": {"shape": [30, 30]},
    "time": {"duration_min": 60.0},
    "immune": {"enabled": True, "tcell": {"recruitment_per_min": 0.5}},
}


def _engine_series(config: dict, seed: int, steps: int) -> pd.DataFrame:
    sim = Simulation(parse_config({**config, "seed": seed}))
    rows = [sim.readouts()]
    for _ in range(steps):
        sim.step()
        rows.append(sim.readouts())
    return pd.DataFrame(rows)


def test_datacollector_series_equal_the_engine_readouts():
    model = TMEModel(TINY, rng=5)
    collector = mesa.DataCollector(model_reporters=model.model_reporters())
    collector.collect(model)
    for _ in range(10):
        model.step()
        collector.collect(model)
    collected = collector.get_model_vars_dataframe()
    expected = _engine_series(TINY, seed=5, steps=10)

    assert list(collected.columns) == ["time_min", *model.readout_declarations()]
    assert len(collected) == 11
    pd.testing.assert_frame_equal(collected, expected[collected.columns], check_exact=True)
    # the ready-made collector gathered the same series, and the comparison is not of constants
    pd.testing.assert_frame_equal(model.datacollector.get_model_vars_dataframe(), collected, check_exact=True)
    assert collected["tcell_effector"].iloc[-1] > 0 and collected["tcell_effector"].iloc[0] == 0
    assert collected["time_min"].tolist() == [6.0 * k for k in range(11)]


def test_batch_run_sweeps_flat_parameters():
    parameters = {
        "config": [TINY],  # a one-element list: batch_run would iterate over a bare dict's keys
        "immune__tcell__kill_rate_per_day": [1.0, 3.0],
        "immune__tcell__recruitment_per_min": [0.1, 0.5],
    }
    # Mesa >= 3.4 deprecates iterations in favour of rng=[...]; both give two unseeded replicates per set.
    repeat = {"rng": [None, None]} if "rng" in inspect.signature(mesa.batch_run).parameters else {"iterations": 2}
    rows = mesa.batch_run(TMEModel, parameters=parameters, max_steps=1000, data_collection_period=5,
                          display_progress=False, **repeat)
    frame = pd.DataFrame(rows)

    assert frame["RunId"].nunique() == 8
    assert sorted(frame["iteration"].unique()) == [0, 1]
    # 10 steps (the configured end comes before max_steps), reported at steps 0, 5 and the last: Mesa 3.3 reads
    # up to index steps - 1 (9), Mesa 3.5 reads the collection steps it recorded (10)
    steps = sorted(frame["Step"].unique())
    assert steps[:2] == [0, 5] and steps[2] in (9, 10) and len(steps) == 3
    assert len(frame) == 8 * 3
    combos = frame.groupby(["immune__tcell__kill_rate_per_day", "immune__tcell__recruitment_per_min"])["RunId"]
    assert combos.nunique().to_dict() == {(k, r): 2 for k in (1.0, 3.0) for r in (0.1, 0.5)}
    model = TMEModel(TINY)
    reporters = ["time_min", *model.readout_declarations()]
    assert set(reporters) <= set(frame.columns)
    # each row's Step labels the state after that many steps
    np.testing.assert_array_equal(frame["time_min"], frame["Step"] * 6.0)
    # no seed given: every replicate runs on the config's seed, so replicates agree
    last = frame[frame["Step"] == steps[-1]].sort_values(["immune__tcell__kill_rate_per_day",
                                                 "immune__tcell__recruitment_per_min", "iteration"])
    first, second = last[last["iteration"] == 0], last[last["iteration"] == 1]
    np.testing.assert_array_equal(first[reporters].to_numpy(), second[reporters].to_numpy())
    # the swept recruitment rate reaches the engine
    recruited = last.groupby("immune__tcell__recruitment_per_min")["tcell_effector"].mean()
    assert recruited[0.5] > recruited[0.1]


def test_seeding_follows_mesa_keywords_onto_the_root_seed():
    def series(**kwargs):
        model = TMEModel(TINY, **kwargs)
        model.run_model()
        return model.datacollector.get_model_vars_dataframe()

    pd.testing.assert_frame_equal(series(rng=11), series(rng=11), check_exact=True)
    pd.testing.assert_frame_equal(series(rng=11), series(seed=11), check_exact=True)
    assert not series(rng=11).equals(series(rng=12))
    assert TMEModel(TINY, rng=11).config.seed == 11
    assert TMEModel({**TINY, "seed": 4}).config.seed == 4  # no rng: the config's seed
    assert TMEModel(TINY, rng=np.random.SeedSequence(3)).config.seed == root_seed(np.random.SeedSequence(3))
    assert root_seed(np.random.default_rng(1)) == root_seed(np.random.default_rng(1))
    assert 0 <= root_seed([1, 2, 3]) < 2**63
    assert root_seed(7.0) == 7 and root_seed(None) is None
    model = TMEModel(TINY, rng=9)
    assert model.random.random() == TMEModel(TINY, rng=9).random.random()  # Mesa's own generators share the root
    with pytest.raises(ValueError, match="either rng or seed"):
        TMEModel(TINY, rng=1, seed=2)
    with pytest.raises(ValueError, match="whole number"):
        root_seed(1.5)
    with pytest.raises(ConfigError, match="seed"):
        TMEModel(TINY, rng=-1)


def test_running_turns_false_at_the_configured_end():
    model = TMEModel(TINY)
    assert model.running and model.config.n_steps == 10
    model.run_model()
    assert not model.running
    assert model.steps == model.step_index == 10
    assert model.time_min == 60.0 == model.readout("time_min")


def test_overrides_apply_in_every_spelling():
    key = "immune.tcell.kill_rate_per_day"
    for model in (TMEModel(TINY, **{key: 2.5}), TMEModel(TINY, immune__tcell__kill_rate_per_day=2.5),
                  TMEModel(TINY, overrides={key: 2.5}), TMEModel(parse_config(TINY), overrides={key: 2.5})):
        assert model.config.immune.tcell.kill_rate_per_day == 2.5
        assert model.simulation.module("immune").params.tcell.kill_rate_per_day == 2.5
        assert model.config.grid.shape == [30, 30]  # the rest of the config is kept
    assert TINY["immune"]["tcell"] == {"recruitment_per_min": 0.5}  # the caller's dict is not modified

    config = resolve_config(REPO / "configs" / "quickstart.toml", {key: 2.0, "grid__shape": [40, 40]})
    assert config.immune.tcell.kill_rate_per_day == 2.0 and config.grid.shape == [40, 40]
    assert config.seed == 1 and "nivolumab" in config.therapy  # what the file sets survives
    with pytest.raises(ConfigError, match="kill_rate_per_dya"):
        TMEModel(TINY, immune__tcell__kill_rate_per_dya=2.0)
    with pytest.raises(ConfigError, match="not a section"):
        TMEModel(TINY, **{"grid.shape.x": 1})


def test_field_views_and_property_layers_reflect_the_engine_and_are_read_only():
    model = TMEModel(TINY)
    world = model.simulation.world
    assert set(model.field_names()) == set(world.fields) | set(world.layers)
    oxygen = model.field("oxygen")
    assert np.shares_memory(oxygen, world.fields["oxygen"].data)
    assert oxygen.shape == (30, 30) and not oxygen.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        oxygen[0, 0] = 1.0
    assert world.fields["oxygen"].data.flags.writeable  # the engine's own buffer stays writable
    assert not model.field("vessels").flags.writeable and model.field("vessels").dtype == bool

    layer = model.property_layer("oxygen")
    if HAS_PROPERTY_LAYERS:
        from mesa.discrete_space import PropertyLayer

        assert isinstance(layer, PropertyLayer) and layer.name == "oxygen"
        with pytest.raises(ValueError, match="read-only"):
            layer.set_cells(0.0)
    data = layer.data if HAS_PROPERTY_LAYERS else layer
    np.testing.assert_array_equal(data, world.fields["oxygen"].data)
    assert not data.flags.writeable
    before = np.array(world.fields["oxygen"].data)
    model.step()
    assert not np.array_equal(world.fields["oxygen"].data, before)  # oxygen changes in the first step
    if HAS_PROPERTY_LAYERS:  # the layer handed out before the step was refreshed in place
        assert model.property_layer("oxygen") is layer
        np.testing.assert_array_equal(layer.data, world.fields["oxygen"].data)
    else:  # Mesa < 3.2: a view again
        np.testing.assert_array_equal(model.property_layer("oxygen"), world.fields["oxygen"].data)
    with pytest.raises(KeyError, match="oxygen"):
        model.field("oxygn")


def test_agents_frame_is_a_copy_of_one_table():
    model = TMEModel(TINY)
    for _ in range(5):
        model.step()
    assert model.agent_tables() == list(model.simulation.world.tables)
    for name in ("tumour", "tcell"):
        table = model.simulation.world.tables[name]
        frame = model.agents_frame(name)
        assert list(frame.columns) == list(table.schema) and len(frame) == len(table)
        for column, values in table.columns.items():
            np.testing.assert_array_equal(frame[column].to_numpy(), values)
            assert frame[column].dtype == values.dtype
        assert frame.attrs["units"] == {c: s.unit for c, s in table.schema.items()}
    assert len(model.agents_frame("tcell")) > 0
    with pytest.raises(KeyError, match="tumour"):
        model.agents_frame("tumor")


def test_reporters_select_by_name_and_kind():
    model = TMEModel(TINY, reporters=["tumour_cells", "tcell_effector"])
    model.step()
    frame = model.datacollector.get_model_vars_dataframe()
    assert list(frame.columns) == ["tumour_cells", "tcell_effector"] and len(frame) == 2
    counts = model.model_reporters(kinds=["count"])
    declared = model.readout_declarations()
    assert set(counts) == {"time_min"} | {n for n, (_, kind) in declared.items() if kind == "count"}
    assert counts["tumour_cells"](model) == model.readouts()["tumour_cells"]
    with pytest.raises(KeyError, match="no readout"):
        model.model_reporters(["tumour_cels"])
    with pytest.raises(KeyError, match="no readout"):
        model.readout("tumour_cels")


def test_importing_the_adapters_package_needs_no_mesa():
    code = "import sys, abm.adapters, abm.model; assert 'mesa' not in sys.modules, 'mesa imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
