"""The in-memory ensemble API (abm.ensemble.simulate): members equal file runs, executors agree, failures are rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import quickstart_scene

from abm.cohort.batch import final_readouts
from abm.cohort.executors import ExecutorSpec
from abm.config import ConfigError
from abm.ensemble import simulate
from abm.runner import run_simulation

TINY = ["grid.shape=[32,32]", "time.dt_min=30.0", "time.duration_min=2880.0", "initial.tumour.radius_um=80.0",
        "output.summary_plot=false"]
PARAMS = [{"immune.priming_initial": 0.2}, {"immune.priming_initial": 0.8},
          {"immune.priming_initial": 0.5, "immune.initial_tcells": 100000}]  # valid, but the model refuses it
READOUTS = ["tumour_cells", "tumour_diameter_um", "cd8_core", "tcell_effector", "macrophage_m2"]


@pytest.fixture(scope="module")
def base():
    return quickstart_scene(TINY, immune=True)


@pytest.fixture(scope="module")
def serial(base):
    return simulate(base, PARAMS, seeds=[5, 6, 7], executor=ExecutorSpec("serial"), progress=False)


def test_each_member_equals_the_same_config_run_to_a_file(serial, base, tmp_path):
    assert list(serial["status"]) == ["done", "done", "failed"]
    assert list(serial["seed"]) == [5, 6, 7]
    assert list(serial["immune.priming_initial"]) == [0.2, 0.8, 0.5]
    config = quickstart_scene([*TINY, "immune.priming_initial=0.8", "seed=6"], immune=True)
    result = run_simulation(config, tmp_path / "run", progress=False)
    on_file = final_readouts(result.h5_path)
    for name in READOUTS:
        assert serial.loc[1, name] == on_file[name], name
    assert serial.loc[0, "tcell_effector"] < serial.loc[1, "tcell_effector"]  # more priming, more effectors


def test_a_failing_member_is_a_row_with_its_error(serial):
    failed = serial.loc[2]
    assert failed["status"] == "failed" and "immune.initial_tcells = 100000" in failed["error"]
    assert np.isnan(failed["tumour_cells"]) and np.isnan(failed["wall_s"])
    assert serial.loc[:1, "error"].isna().all() and (serial.loc[:1, "wall_s"] > 0).all()


def test_a_process_pool_gives_the_same_rows(serial, base):
    pooled = simulate(base, PARAMS, seeds=[5, 6, 7], executor=ExecutorSpec("local", workers=2), progress=False)
    columns = ["immune.priming_initial", "seed", "status", *READOUTS]
    pd.testing.assert_frame_equal(pooled[columns], serial[columns])


def tumour_growth(frame: pd.DataFrame) -> dict[str, float]:
    """Summary statistics of one time series: fold change of the tumour and the CD8 peak."""
    cells = frame["tumour_cells"]
    return {"fold_change": cells.iloc[-1] / cells.iloc[0], "cd8_peak": frame["cd8_core"].max()}


def test_summaries_by_name_or_function(base):
    rows = [{"immune.priming_initial": 0.8}]
    named = simulate(base, rows, seeds=[6], summaries=["tumour_cells", "cd8_core"], progress=False)
    assert [c for c in named.columns if c not in ("immune.priming_initial", "seed", "status", "error",
                                                   "wall_s")] == ["tumour_cells", "cd8_core"]
    custom = simulate(base, pd.DataFrame(rows), seeds=[6], summaries=tumour_growth, progress=False)
    assert custom.loc[0, "fold_change"] > 0 and custom.loc[0, "cd8_peak"] >= named.loc[0, "cd8_core"]


def test_bad_input_is_refused_before_anything_runs(base):
    with pytest.raises(ConfigError, match=r"member 1 .*immune\.priming_initial = -1"):
        simulate(base, [{"immune.priming_initial": 0.5}, {"immune.priming_initial": -1.0}], progress=False)
    with pytest.raises(ConfigError, match="unknown readout 'tumour_cell'; did you mean 'tumour_cells'"):
        simulate(base, [{}], summaries=["tumour_cell"], progress=False)
    with pytest.raises(ValueError, match="2 given for 1 parameter sets"):
        simulate(base, [{}], seeds=[1, 2], progress=False)


def test_a_root_seed_spawns_distinct_reproducible_member_seeds():
    from abm.ensemble import _member_seeds

    seeds = _member_seeds(99, 4, default=1)
    assert len(set(seeds)) == 4 and seeds == _member_seeds(99, 4, default=1) != _member_seeds(98, 4, default=1)
    assert _member_seeds(None, 3, default=1) == [1, 1, 1]
