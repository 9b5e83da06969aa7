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
