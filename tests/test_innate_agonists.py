"""Innate-immune agonists (STING, TLR7/8): one mechanism at three read points, intratumoral dosing, carriers, errors."""

from __future__ import annotations

import numpy as np
import pytest

from abm.cli import main
from abm.config import parse_config
from abm.model import Simulation

STATIC = ["oxygen_uptake", "pdl1_expression", "secretion"]  # a static nodule: identical in every arm
STING = {"preset": "adu_s100", "schedule": {"start_day": 0.0, "dose_mg": 0.4},
         "injection": {"region": {"shape": "whole"}}}  # macrophages sit around the nodule: inject everywhere
R848 = {"preset": "resiquimod", "pk": {"absorption_per_day": 0.0},  # intravenous, to saturate early
        "schedule": {"start_day": 0.0, "every_day": 0.25, "doses": 2, "dose_mg": 300.0}}


def _arena(therapy: dict, seed: int = 1, **extra) -> dict:
    """A static nodule of 160 µm in a 24² lattice, macrophages around it, weak priming (0.1), no T-cell rules."""
    base = {"backend": "numpy", "seed": seed, "grid": {"shape": [24, 24]}, "time": {"duration_min": 720.0},
            "vessels": {"density": 0.05, "exclude_tumour": True}, "initial": {"tumour": {"radius_um": 160.0}},
            "tumour": {"rules": STATIC},
            "immune": {"enabled": True, "initial_macrophages": 0.1, "priming_initial": 0.1, "tcell": {"rules": []},
                       "caf": {"stroma_density": 0.02}},
            "therapy": therapy}
    base.update(extra)
    return base


def _run(config: dict, steps: int = 120) -> list[dict]:
    sim = Simulation(parse_config(config))
    rows = []
    for _ in range(steps):
        sim.step()
        rows.append(sim.readouts())
    return rows


def _summary(rows: list[dict]) -> dict:
    """Final priming, peak chemokine and the late mean M1 fraction of macrophages."""
    late = rows[len(rows) // 2:]
    m1 = [r["macrophage_m1"] / max(r["macrophage_m0"] + r["macrophage_m1"] + r["macrophage_m2"], 1.0) for r in late]
    return {"priming": rows[-1]["priming"], "chemokine": max(r["chemokine_max"] for r in rows),
            "m1": float(np.mean(m1))}


def _zero(target: str) -> dict:
    return {"innate": {target: {"repolarisation": 0.0, "chemokine_boost": 0.0, "priming_per_day": 0.0}}}


@pytest.fixture(scope="module")
def untreated() -> dict:
    return _summary(_run(_arena({})))


def test_intratumoral_sting_agonist_raises_chemokine_priming_and_m1(untreated):
    rows = _run(_arena({"sting": STING}))
    assert max(r["occupancy_sting_core"] for r in rows) > 0.5  # the injected depot saturates STING for hours
    assert rows[-1]["occupancy_sting_core"] < 0.05  # and washes out within the half day
    treated = _summary(rows)
    assert treated["chemokine"] > 2.0 * untreated["chemokine"], (untreated, treated)
    assert treated["priming"] > untreated["priming"] + 0.02, (untreated, treated)
    assert treated["m1"] > untreated["m1"] + 0.1, (untreated, treated)


def test_zero_strengths_remove_every_innate_effect(untreated):
    """With the STING strengths at 0 the agonist reaches its target and changes nothing (same seed, same stream)."""
    rows = _run(_arena({"sting": STING}, effects=_zero("sting")))
    assert max(r["occupancy_sting_core"] for r in rows) > 0.5
    assert _summary(rows) == untreated


def test_tlr78_agonist_now_raises_chemokine_and_priming_too(untreated):
    treated = _summary(_run(_arena({"r848": R848})))
    assert treated["chemokine"] > 1.5 * untreated["chemokine"], (untreated, treated)
    assert treated["priming"] > untreated["priming"] + 0.01, (untreated, treated)
    assert treated["m1"] > untreated["m1"], (untreated, treated)
    # The gains are its own terms, not only the work of the extra M1 cells: without them it raises both less.
    m1_only = _summary(_run(_arena({"r848": R848}, effects={"innate": {"tlr78": {"chemokine_boost": 0.0,
                                                                                 "priming_per_day": 0.0}}})))
    assert m1_only["chemokine"] < treated["chemokine"] and m1_only["priming"] < treated["priming"], (m1_only, treated)


def test_sting_payload_in_a_nanoparticle_acts(untreated):
    carrier = {"kind": "nanoparticle", "payloads": [{"preset": "adu_s100", "loading_mg_per_mg": 0.1}],
               "schedule": {"start_day": 0.0, "dose_mg": 1000.0}}
    rows = _run(_arena({"np": carrier}, time={"duration_min": 1440.0}), 240)
    # 100 mg of payload, released slowly against an EC50 of 5 µM: a weak but real activation.
    assert max(r["occupancy_sting_margin"] for r in rows) > 1e-4
    base = _summary(_run(_arena({}, time={"duration_min": 1440.0}), 240))
    treated = _summary(rows)
    assert treated["priming"] > base["priming"] and treated["chemokine"] > base["chemokine"], (base, treated)
    off = _summary(_run(_arena({"np": carrier}, time={"duration_min": 1440.0}, effects=_zero("sting")), 240))
    assert off == base


def test_intratumoral_dose_enters_the_region_and_the_plasma_from_one_depot():
    """What leaves the depot over a step appears in the injected region at released/V_inj (before transport)."""
    sim = Simulation(parse_config(_arena({"sting": STING}, tumour={"rules": STATIC}, immune={"enabled": False})))
    d = sim.module("therapy").params.drugs["sting"]
    sim.step()
    k = d.cfg.pk.absorption_per_day / 1440.0
    released = 0.4 * -np.expm1(-k * sim.config.time.dt_min)
    assert d.released_mg == pytest.approx(released, rel=1e-9)
    assert sim.readouts()["plasma_sting_mg_per_L"] > 0.0
    c = np.asarray(sim.fields["sting"].data, dtype=np.float64)
    injected = released / d.cfg.injection.volume_mL * 1e3 * d.nM_per_mg_per_L  # nM, before clearance in the step
    assert 0.5 * injected < c.mean() < injected


@pytest.mark.parametrize(("setting", "key"), [
    ("effects.innate.sting.priming_per_day=-1", "effects.innate.sting.priming_per_day"),
    ("effects.innate.tlr78.repolarisation=1.5", "effects.innate.tlr78.repolarisation"),
    ("effects.innate.sting.strength=1", "effects.innate.sting.strength"),
    ("therapy.s.pk.absorption_per_day=0", "therapy.s"),
    ("therapy.s.injection.volume_mL=0", "therapy.s.injection.volume_mL"),
    ("therapy.s.injection.region.center_um=[1,2,3]", "therapy.s.injection.region.center_um"),
])
def test_config_errors_exit_2_naming_the_key(tmp_path, capsys, setting, key):
    path = tmp_path / "sting.toml"
    path.write_text('[grid]\nshape = [20, 20]\n[immune]\nenabled = true\n'
                    '[therapy.s]\npreset = "adu_s100"\n[therapy.s.injection.region]\nshape = "sphere"\n'
                    'radius_um = 60.0\n')
    assert main(["validate", str(path)]) == 0
    assert main(["validate", str(path), "--set", setting]) == 2
    assert key in capsys.readouterr().err
