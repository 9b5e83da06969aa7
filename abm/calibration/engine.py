"""ABC-SMC calibration of a scene's free parameters against observed targets, with pyABC.

Each model evaluation ("member") is one in-memory run of the calibration's scene at the particle's parameter
values, through :func:`abm.ensemble.simulate`; its summary is the value of each target's readout at the target's
time. The distance is the Euclidean norm of the deviations in units of each target's standard deviation. pyABC
(Schaelte et al. 2022, Bioinformatics 38:3384) proposes, weighs and accepts the particles generation by
generation and keeps its history in ``abc.db`` (SQLite).

Where the members run follows the executors of ``tme batch``: ``serial`` in this process, ``local`` on pyABC's
multicore sampler with ``workers`` processes, ``dask``/``slurm`` on pyABC's Dask sampler with the client that
:mod:`abm.adapters.dask_runner` opens.

Resuming: every finished member is appended to ``members.jsonl`` (its parameters, seed and summary) as soon as
it returns, and each generation's history is in ``abc.db``. Running the same calibration again in the same
directory loads the history and continues after the last finished generation. A member's simulation seed is a
hash of the root seed and its parameter values, and on the serial path each generation's proposals come from a
generator seeded by ``(seed, generation)``: a generation interrupted by Ctrl-C proposes the same particles again
when resumed, and those already in the journal are read back instead of simulated. (pyABC's multicore and Dask
samplers reseed their workers from the operating system, so there a resumed generation draws new particles;
finished generations are never rerun.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyabc

from abm.calibration.spec import Calibration
from abm.cohort.executors import ExecutorSpec
from abm.config import ConfigError, config_to_toml, parse_config

__all__ = ["CalibrationResult", "Member", "run_calibration"]

log = logging.getLogger("tme")

JOURNAL = "members.jsonl"
DATABASE = "abc.db"
FINGERPRINT = "calibration.json"


def member_seed(root: int, values: dict[str, float]) -> int:
    """The simulation seed of a member: a hash of the root seed and its parameter values (63 bits)."""
    text = json.dumps({"seed": root, "values": {k: float(v).hex() for k, v in sorted(values.items())}})
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _key(values: dict[str, float], seed: int) -> str:
    return hashlib.sha256(json.dumps([sorted((k, float(v).hex()) for k, v in values.items()), seed]).encode()
                          ).hexdigest()[:24]


def read_journal(path: Path) -> dict[str, dict]:
    """The members already finished, by key; a last line cut off by a crash is ignored."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[record["key"]] = record
    return done


class Member:
    """One model evaluation: pyABC's parameters in, the targets' simulated values out (picklable).

    Parameters
    ----------
    calibration : Calibration
        What to run and what to summarise.
    journal : path
        The members journal (JSON lines), appended to after each member.
    """

    def __init__(self, calibration: Calibration, journal: Path):
        spec = calibration.spec
        self.base_toml = config_to_toml(calibration.base)
        self.priors = {name: (p.key, p.log_scale) for name, p in spec.parameters.items()}
        self.targets = {name: (t.readout, None if t.at_day is None else t.at_day * 1440.0)
                        for name, t in spec.targets.items()}
        self.root_seed = spec.seed
        self.journal = Path(journal)
        self.done = read_journal(self.journal)
        self.simulated = 0

    def values(self, particle) -> dict[str, float]:
        """Config values (natural scale) of a pyABC parameter set."""
        return {name: float(10.0 ** particle[name]) if log_scale else float(particle[name])
                for name, (_, log_scale) in self.priors.items()}

    def __call__(self, particle) -> dict[str, float]:
        """Simulate (or read back from the journal) the member at ``particle``; NaN summaries if it failed."""
        values = self.values(particle)
        seed = member_seed(self.root_seed, values)
        key = _key(values, seed)
        if key in self.done:
            return dict(self.done[key]["summary"])
        summary, error = self._simulate(values, seed)
        self.simulated += 1
        record = {"key": key, "values": values, "seed": seed, "summary": summary, "error": error}
        line = json.dumps(record, allow_nan=True) + "\n"
        with open(self.journal, "a", encoding="utf-8") as fh:  # one write per line: whole lines, also from workers
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return summary

    def _simulate(self, values: dict[str, float], seed: int) -> tuple[dict[str, float], str | None]:
        from abm.ensemble import simulate

        params = {self.priors[name][0]: value for name, value in values.items()}
        frame = simulate(parse_config(tomllib.loads(self.base_toml), "calibration member"), [params],
                         seeds=[seed], summaries=TargetSummary(self.targets), progress=False)
        row = frame.iloc[0]
        if row["status"] != "done":
            return {name: math.nan for name in self.targets}, str(row["error"])
        return {name: float(row[name]) for name in self.targets}, None


class TargetSummary:
    """The value of each target's readout at its time (linear interpolation; the end where none is given)."""

    def __init__(self, targets: dict[str, tuple[str, float | None]]):
        self.targets = dict(targets)

    def __call__(self, frame) -> dict[str, float]:
        t = frame.index.to_numpy(dtype=float)
        out = {}
        for name, (readout, at_min) in self.targets.items():
            y = frame[readout].to_numpy(dtype=float)
            out[name] = float(y[-1]) if at_min is None else float(np.interp(at_min, t, y))
        return out


class SeededSingleCoreSampler(pyabc.sampler.SingleCoreSampler):
    """The single-core sampler of pyABC, its proposals seeded per generation.

    Each generation's proposals come from NumPy's global generator seeded by ``(seed, generation)``, so that an
    interrupted generation proposes the same particles when resumed.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def sample_until_n_accepted(self, n, simulate_one, t, **kwargs):
        """The loop of pyABC, after seeding NumPy's global generator (which pyABC draws from) for generation t."""
        np.random.seed(  # noqa: NPY002 (pyABC draws from the global generator)
            np.random.SeedSequence([self.seed, t + 1]).generate_state(1)[0])
        return super().sample_until_n_accepted(n, simulate_one, t, **kwargs)


@dataclass
class CalibrationResult:
    """What a calibration produced.

    Attributes
    ----------
    out_dir : Path
    posterior : pandas.DataFrame
        The last generation's particles on the config scale, with ``weight``.
    summary : pandas.DataFrame
        Per parameter: prior, posterior mean, median, 5 and 95 % quantiles, and the truth where given.
    generations : pandas.DataFrame
        Per generation: epsilon, members simulated, accepted particles, acceptance rate.
    members : int
        Members in the journal (simulated in this and earlier runs).
    wall_s : float
        Seconds of this run.
    """

    out_dir: Path
    posterior: Any
    summary: Any
    generations: Any
    members: int
    wall_s: float


def _sampler(calibration: Calibration, executor: ExecutorSpec, stack):
    if executor.kind == "serial" or (executor.kind == "local" and executor.workers == 1):
        return SeededSingleCoreSampler(calibration.spec.seed)
    if executor.kind == "local":
        return pyabc.sampler.MulticoreEvalParallelSampler(n_procs=executor.workers)
    from abm.adapters.dask_runner import dask_client

    client, _ = stack.enter_context(dask_client(executor))
    return pyabc.sampler.DaskDistributedSampler(dask_client=client)


def _check_fingerprint(calibration: Calibration, out_dir: Path) -> bool:
    """True if ``out_dir`` holds this calibration's history (resume); a different one is refused."""
    path = out_dir / FINGERPRINT
    if not path.exists():
        if (out_dir / DATABASE).exists():
            raise ConfigError([f"{out_dir / DATABASE} exists but {path.name} does not: not a directory of "
                               "tme calibrate; choose another --out"], str(calibration.path))
        return False
    stored = json.loads(path.read_text(encoding="utf-8"))
    if stored.get("digest") != calibration.digest:
        raise ConfigError([f"{out_dir} holds a different calibration (fingerprint {stored.get('digest')} against "
                           f"{calibration.digest} now): the file, its scene or a --set changed; choose another --out "
                           "or remove that directory"], str(calibration.path))
    return (out_dir / DATABASE).exists()


def run_calibration(calibration: Calibration, out_dir, executor: ExecutorSpec | None = None,
                    progress: bool = True) -> CalibrationResult:
    """Run (or resume) ABC-SMC for ``calibration`` in ``out_dir`` and write its tables and figure.

    Raises
    ------
    ConfigError
        If ``out_dir`` holds another calibration.
    KeyboardInterrupt
        On Ctrl-C; finished generations and members are kept, and the same call continues from them.
    """
    import contextlib

    from abm.calibration.report import write_report

    spec = calibration.spec
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = _check_fingerprint(calibration, out_dir)
    (out_dir / FINGERPRINT).write_text(json.dumps({"digest": calibration.digest, "name": spec.name}, indent=1),
                                       encoding="utf-8")
    (out_dir / "calibration.toml").write_text(calibration.path.read_text(encoding="utf-8"), encoding="utf-8")
    abc_log = logging.getLogger("ABC")
    abc_log.setLevel(logging.INFO if progress else logging.WARNING)
    member = Member(calibration, out_dir / JOURNAL)
    prior = pyabc.Distribution(**{name: pyabc.RV(*p.scipy_rv()) for name, p in spec.parameters.items()})
    observed = {name: t.value for name, t in spec.targets.items()}
    weights = {name: 1.0 / t.sd for name, t in spec.targets.items()}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        abc = pyabc.ABCSMC(member, prior, distance_function=TargetDistance(weights),
                           population_size=spec.abc.population, sampler=_sampler(calibration, executor
                                                                                 or spec.executor.spec(), stack))
        db = f"sqlite:///{(out_dir / DATABASE).resolve()}"
        if resume:
            abc.load(db, 1)
            done = abc.history.max_t + 1
            log.info("resuming %s after %d finished generation(s)", spec.name, done)
        else:
            abc.new(db, observed)
            done = 0
        remaining = spec.abc.generations - done
        if remaining > 0:
            abc.run(minimum_epsilon=spec.abc.min_epsilon, max_nr_populations=remaining,
                    min_acceptance_rate=spec.abc.min_acceptance_rate,
                    max_total_nr_simulations=spec.abc.max_members or np.inf)
        history = abc.history
    posterior, summary, generations = write_report(calibration, history, out_dir)
    return CalibrationResult(out_dir=out_dir, posterior=posterior, summary=summary, generations=generations,
                             members=len(read_journal(out_dir / JOURNAL)), wall_s=time.perf_counter() - t0)


class TargetDistance(pyabc.PNormDistance):
    """Euclidean distance in units of each target's sd; a failed member (NaN summary) is infinitely far."""

    def __init__(self, weights: dict[str, float]):
        super().__init__(p=2, fixed_weights=dict(weights))
        self.names = tuple(weights)

    def __call__(self, x, x_0, t=None, par=None):
        """The distance of summary ``x`` from the observation ``x_0``."""
        if any(not math.isfinite(float(x[name])) for name in self.names):
            return math.inf
        return super().__call__(x, x_0, t, par)
