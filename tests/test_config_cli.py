"""Config validation and the command line: messages, exit codes, overrides, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from abm.cli import main
from abm.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.toml"))


def test_defaults_are_valid_and_every_field_documents_unit_or_source():
    cfg = parse_config({})
    assert cfg.ndim == 2
    schema = cfg.model_json_schema()

    def walk(node, defs, path):
        for name, prop in node.get("properties", {}).items():
            ref = prop.get("$ref") or (prop.get("allOf") or [{}])[0].get("$ref")
            if ref:
                walk(defs[ref.split("/")[-1]], defs, f"{path}{name}.")
            else:
                assert prop.get("description"), f"{path}{name} has no description"

    walk(schema, schema["$defs"], "")


def test_errors_listed_at_once_with_key_path_value_and_suggestion():
    with pytest.raises(ConfigError) as err:
        parse_config({"grid": {"shape": [10], "spacing_um": -1}, "tumour": {"proliferaton_rate_per_min": 1}})
    msg = str(err.value)
    assert "grid.shape = [10]" in msg and "expected 2 or 3 axes" in msg
    assert "grid.spacing_um = -1" in msg and "greater than 0" in msg
    assert "tumour.proliferaton_rate_per_min: unknown key" in msg
    assert "did you mean 'tumour.proliferation_rate_per_min'" in msg
    assert len(err.value.problems) == 3


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="necrosis_max_mmHg"):
        parse_config({"tumour": {"necrosis_max_mmHg": 6.0}})
    with pytest.raises(ConfigError, match=r"vessels.positions\[0\]"):
        parse_config({"vessels": {"pattern": "list", "positions": [[200, 3]]}})
    with pytest.raises(ConfigError, match="unknown tumour rule 'necrosys'.*did you mean 'necrosis'"):
        parse_config({"tumour": {"rules": ["necrosys"]}})


def test_bad_config_exits_2_with_key_path_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[grid]\nshape = [64, 64]\nspacing_um = "wide"\n[time]\ndt_mins = 6\n')
    proc = subprocess.run([sys.executable, "-m", "abm.cli", "run", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "grid.spacing_um = 'wide'" in proc.stderr
    assert "time.dt_mins: unknown key; did you mean 'time.dt_min'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"),
    ("shape = [1, 2", "not valid TOML"),
])
def test_missing_or_malformed_file(tmp_path, capsys, content, needle):
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_text(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and needle in err


def test_overrides_and_validate(tmp_path, capsys):
    cfg = load_config(REPO / "configs/quickstart.toml", ["grid.shape=[64,64]", "backend=numpy", "seed=7"])
    assert cfg.grid.shape == [64, 64] and cfg.backend == "numpy" and cfg.seed == 7
    assert main(["validate", str(REPO / "configs/quickstart.toml"), "--set", "grid.shape=[32,32,32]"]) == 0
    assert "3-D grid [32, 32, 32]" in capsys.readouterr().out
    assert main(["validate", str(REPO / "configs/quickstart.toml"), "--set", "grid.shape"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_config_schema_is_json(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "grid" in schema["properties"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "tme-abm" in capsys.readouterr().out


def test_run_writes_outputs_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", str(REPO / "configs/quickstart.toml"), "--set", "grid.shape=[40,40]", "--set",
            "time.duration_min=600", "--set", "output.snapshot_interval_min=300", "--seed", "7",
            "--backend", "numpy", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "tumour cells" in printed
    for name in ("sim.h5", "config.resolved.toml", "run.log", "summary.png"):
        assert (out / name).stat().st_size > 0, name
    resolved = load_config(out / "config.resolved.toml")
    assert resolved.grid.shape == [40, 40] and resolved.seed == 7
    with h5py.File(out / "sim.h5") as f:
        for key in ("format", "format_version", "software_version", "created_utc", "seed", "backend", "random",
                    "config_toml", "complete"):
            assert key in f.attrs, key
        assert f.attrs["complete"] and f.attrs["seed"] == 7 and f.attrs["backend"] == "numpy"
        assert f.attrs["random"] == "pcg64"  # random = "auto" on numpy
        assert list(f["grid"].attrs["shape"]) == [40, 40]
        assert sorted(f["snapshots"]) == ["000000", "000001", "000002"]
        assert [f["snapshots"][k].attrs["time_min"] for k in sorted(f["snapshots"])] == [0, 300, 600]
        assert f["timeseries/time_min"].shape == (101,)
        snap = f["snapshots/000002"]
        assert snap["fields/oxygen"].shape == (40, 40) and snap["fields/oxygen"].dtype == "float32"
        assert snap["agents/tumour/voxel"].shape[0] == f["timeseries/tumour_cells"][-1]
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_bundled_config_validates_and_runs_a_few_steps(path, tmp_path):
    cfg = load_config(path, ["backend=numpy"])
    steps = 5
    cfg = cfg.model_copy(update={"time": cfg.time.model_copy(update={"duration_min": steps * cfg.time.dt_min})})
    from abm.runner import run_simulation

    result = run_simulation(cfg, tmp_path / path.stem, progress=False)
    assert result.steps == steps
    assert result.final["tumour_cells"] > 0
