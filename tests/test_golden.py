"""Golden summaries: every bundled config, 50 NumPy steps, against ``tests/golden/<config>.json``.

A change of results must be intended: regenerate with ``python tests/golden_tool.py --update`` and say why in
the commit.
"""

from __future__ import annotations

import json

import pytest
from golden_tool import compare, config_paths, golden_path, summarise


@pytest.mark.parametrize("path", config_paths(), ids=lambda p: p.stem)
def test_config_matches_its_golden_summary(path):
    target = golden_path(path)
    assert target.exists(), f"no golden for {path.name}: python tests/golden_tool.py --update {path.stem}"
    problems = compare(json.loads(target.read_text(encoding="utf-8")), summarise(path))
    assert not problems, "\n".join(problems)


def _summary(oxygen_sum=1000.0, residual=3e-4, digest="abc", readout=8.25):
    return {"exact": {"/agents/tumour/cell_id": digest},
            "approx": {"/fields/oxygen": [100.0, oxygen_sum, 2.5, 38.0, 5.0e5]},
            "readouts": {"oxygen_tumour_mean_mmHg": readout, "oxygen_solver_residual": residual,
                         "oxygen_solver_iterations": 12.0}}


def test_compare_absorbs_cpu_round_off_but_flags_behaviour():
    golden = _summary()
    # What differs between an AMD and an Intel CPU: float32 field sums ~3e-6 relative, the residual ~0.6 %.
    assert compare(golden, _summary(oxygen_sum=1000.0 * (1 + 3e-6), residual=3e-4 * 1.006,
                                    readout=8.25 * (1 + 1e-6))) == []
    # A change of behaviour: a field total 0.1 % off, a readout 0.05 % off, one cell's integer state changed.
    assert any("/fields/oxygen" in p for p in compare(golden, _summary(oxygen_sum=1001.0)))
    assert any("oxygen_tumour_mean_mmHg" in p for p in compare(golden, _summary(readout=8.25 * 1.0005)))
    assert any("digest" in p for p in compare(golden, _summary(digest="abd")))
    # Solver diagnostics are compared loosely, but not ignored.
    assert compare(golden, _summary(residual=4.5e-4)) == []
    assert any("solver diagnostic" in p for p in compare(golden, _summary(residual=3e-3)))
