"""Golden summaries: 50 NumPy steps of every ``configs/*.toml`` at its own seed, reduced to a small JSON.

A golden holds, per config, exact SHA-256 digests of the integer and boolean state (agent columns of integer or
boolean dtype, lattice masks) and float summaries (sum, min, max, sum of squares) of every field and float agent
column, plus the readouts at the last step. Integer state is compared exactly; float summaries and readouts to a
relative 1e-6, which absorbs last-bit differences between CPUs but no change of behaviour.

Regenerate after an intended change of results (and say so in the commit)::

    python tests/golden_tool.py --update            # all configs
    python tests/golden_tool.py --update quickstart # one config
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
STEPS = 50

sys.path.insert(0, str(REPO))


def config_paths() -> list[Path]:
    """Every bundled config, sorted by name."""
    return sorted((REPO / "configs").glob("*.toml"))


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


def _floats(a: np.ndarray) -> list[float]:
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return [0.0, 0.0, 0.0, 0.0, 0.0]
    return [float(a.size), float(a.sum()), float(a.min()), float(a.max()), float((a * a).sum())]


def _summarise_tree(tree: dict, prefix: str, exact: dict, approx: dict) -> None:
    for key, value in sorted(tree.items()):
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            _summarise_tree(value, name, exact, approx)
            continue
        a = np.asarray(value)
        if a.dtype.kind in "USO":
            exact[name] = str(value)
        elif a.dtype.kind in "biu":
            exact[name] = _digest(a)
        else:
            approx[name] = _floats(a)


def summarise(config_path: Path, steps: int = STEPS) -> dict:
    """Run ``config_path`` for ``steps`` NumPy steps and reduce state and readouts to a JSON-able dict."""
    from abm.config import load_config
    from abm.model import Simulation

    config = load_config(config_path, ["backend=\"numpy\""])
    sim = Simulation(config)
    for _ in range(steps):
        sim.step()
    state = sim.state()
    exact: dict = {}
    approx: dict = {}
    _summarise_tree(state, "", exact, approx)
    exact.pop("/state/step", None)
    readouts = {k: float(v) for k, v in sorted(sim.readouts().items())}
    return {"config": config_path.name, "seed": config.seed, "steps": steps, "exact": exact, "approx": approx,
            "readouts": readouts}


def golden_path(config_path: Path) -> Path:
    """Where the golden of ``config_path`` is stored."""
    return GOLDEN_DIR / f"{config_path.stem}.json"


def compare(expected: dict, actual: dict, rtol: float = 1e-6) -> list[str]:
    """Differences between two summaries, as readable lines (empty when they agree)."""
    problems = []
    for section in ("exact", "approx", "readouts"):
        e, a = expected[section], actual[section]
        for key in sorted(set(e) | set(a)):
            if key not in a:
                problems.append(f"{section} {key}: missing now")
            elif key not in e:
                problems.append(f"{section} {key}: new (not in the golden)")
            elif section == "exact":
                if e[key] != a[key]:
                    problems.append(f"{section} {key}: digest {a[key]} != golden {e[key]}")
            elif not np.allclose(np.asarray(a[key], float), np.asarray(e[key], float), rtol=rtol, atol=1e-9,
                                 equal_nan=True):
                problems.append(f"{section} {key}: {a[key]} != golden {e[key]}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite the goldens instead of comparing")
    parser.add_argument("names", nargs="*", help="config stems (default: all)")
    args = parser.parse_args(argv)
    paths = [p for p in config_paths() if not args.names or p.stem in args.names]
    GOLDEN_DIR.mkdir(exist_ok=True)
    failed = 0
    for path in paths:
        summary = summarise(path)
        target = golden_path(path)
        if args.update:
            target.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            print(f"wrote {target.relative_to(REPO)}")
            continue
        problems = compare(json.loads(target.read_text(encoding="utf-8")), summary)
        print(f"{path.stem}: {'ok' if not problems else f'{len(problems)} difference(s)'}")
        for line in problems:
            print(f"  {line}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
