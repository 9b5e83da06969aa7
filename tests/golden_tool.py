"""Golden summaries: 50 NumPy steps of every ``configs/*.toml`` at its own seed, reduced to a small JSON.

A golden holds, per config, exact SHA-256 digests of the integer and boolean state (agent columns of integer or
boolean dtype, lattice masks) and float summaries (size, sum, min, max, sum of squares) of every field and float agent
column, plus the readouts at the last step.

How they are compared (:func:`compare`):

- integer and boolean state exactly: any change of a cell's fate, position or state shows here;
- float summaries and readouts to a relative ``FLOAT_RTOL`` = 1e-4, with an absolute floor of 1e-6 of the
  quantity's own scale (its largest magnitude). The float32 fields come from iterative solves (conjugate gradients
  stopped at a relative error of 1e-3), whose last bits follow the SIMD summation order of the CPU's BLAS and
  NumPy kernels: between an AMD EPYC and an Intel Xeon the field sums differ by 1e-7 to 3e-6 relative. 1e-4 is
  30x that and still flags a 0.01 % change of any field total;
- solver diagnostics (``*_solver_residual``, ``*_solver_iterations``) loosely: the residual within a factor of
  ``DIAGNOSTIC_FACTOR`` of the golden's, the iteration count within 25 % (+2). They describe how the solve got
  there, not the result, and move by up to 0.6 % between those CPUs.

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


#: Relative tolerance of float summaries and readouts (see the module docstring for why this size).
FLOAT_RTOL = 1e-4
#: Absolute floor of a float comparison, relative to the quantity's own largest magnitude.
FLOAT_ATOL_OF_SCALE = 1e-6
#: Solver diagnostics may differ by this factor (residual) between CPUs.
DIAGNOSTIC_FACTOR = 2.0
DIAGNOSTIC_SUFFIXES = ("_solver_residual", "_solver_iterations")


def _is_diagnostic(key: str) -> bool:
    return key.endswith(DIAGNOSTIC_SUFFIXES)


def _diagnostic_agrees(key: str, actual: float, expected: float) -> bool:
    if key.endswith("_solver_iterations"):
        return abs(actual - expected) <= 0.25 * expected + 2
    if expected <= 0 or actual <= 0:
        return actual == expected
    return 1 / DIAGNOSTIC_FACTOR <= actual / expected <= DIAGNOSTIC_FACTOR


def _floats_agree(actual, expected, rtol: float) -> bool:
    a, e = np.asarray(actual, float), np.asarray(expected, float)
    if a.shape != e.shape:
        return False
    # A float summary is [size, sum, min, max, sum of squares]: its scale is the largest of |min| and |max|;
    # a readout is its own scale.
    scale = max(abs(e[2]), abs(e[3])) if e.shape == (5,) else abs(float(e))
    return bool(np.allclose(a, e, rtol=rtol, atol=max(FLOAT_ATOL_OF_SCALE * scale, 1e-12), equal_nan=True))


def compare(expected: dict, actual: dict, rtol: float = FLOAT_RTOL) -> list[str]:
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
            elif section == "readouts" and _is_diagnostic(key):
                if not _diagnostic_agrees(key, float(a[key]), float(e[key])):
                    problems.append(f"{section} {key}: {a[key]} != golden {e[key]} (solver diagnostic, compared "
                                    f"within a factor of {DIAGNOSTIC_FACTOR})")
            elif not _floats_agree(a[key], e[key], rtol):
                problems.append(f"{section} {key}: {a[key]} != golden {e[key]} (relative tolerance {rtol:g})")
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
