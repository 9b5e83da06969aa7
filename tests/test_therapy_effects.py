"""Each therapy target moves its own pathway in the expected direction against the untreated run.

Every test is a paired comparison: the same arena and seed with and without the drug. The regimen (dose, timing)
is the experiment and is chosen to saturate the target early (``start_day = 0``, bolus); model parameters and
library values are never changed. Where the law acts deterministically given the seed the comparison is exact;
where the effect runs through stochastic agents, several seeds are compared. The last test runs every scenario in
``configs/therapies/`` briefly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from immune_helpers import add_tcells, merge, tumour_voxels

from abm.config import load_config, parse_config
from abm.model import Simulation

REPO = Path(__file__).resolve().parents[1]
THERAPY_CONFIGS = sorted((REPO / "configs" / "therapies").glob("*.toml"))


# ----------------------------------------------------------------------------------------------------------
# Arenas and helpers
def _drug(preset: str, **schedule) -> dict:
    """A library drug dosed at t = 0 as a bolus, unless ``schedule`` says otherwise."""
    return {"preset": preset, "schedule": {"start_day": 0.0, "infusion_min": 0.0, **schedule}}


_STATIC_TUMOUR = ["oxygen_uptake", "pdl1_expression", "secretion"]  # no growth or death besides immune killing

#: Hand-placed effectors in a nodule threaded with vessels (the drug reaches every cell): kills and exhaustion.
CHECKPOINT = {
    "backend": "numpy",
    "grid": {"shape": [30, 30]},
    "vessels": {"pattern": "random", "density": 0.05, "exclude_tumour": False},
    "initial": {"tumour": {"radius_um": 200.0}},
    "tumour": {"rules": _STATIC_TUMOUR, "antigenicity_spread": 0.0},
    "immune": {"enabled": True, "priming_initial": 0.3,
               "tcell": {"rules": ["tcell_secretion", "tcell_kill", "tcell_move"], "max_kills": 1000},
               "macrophage": {"rules": []}, "caf": {"rules": [], "stroma_density": 0.0}},
}
NO_PDL1 = {"tumour": {"pdl1_baseline": 0.0}, "resistance": {"adaptive_pdl1": False},
           "immune": {"macrophage": {"m2_pdl1": 0.0}}}  # no PD-L1 on tumour cells nor on M2 macrophages

#: A static hypoxic nodule in vessel-poor stroma (its hypoxic cells secrete VEGF); no immune cells.
VASCULAR = {
    "backend": "numpy",
    "grid": {"shape": [50, 50]},
    "vessels": {"pattern": "random", "density": 0.02, "exclude_tumour": True},
    "initial": {"tumour": {"radius_um": 450.0}},
    "tumour": {"rules": _STATIC_TUMOUR},
    "immune": {"enabled": True, "tcell": {"rules": []}, "macrophage": {"rules": []},
               "caf": {"rules": [], "stroma_density": 0.0}},
}

#: configs/immune_excluded.toml on a 30² lattice: a nodule in a CAF-rich, dense, cross-linked capsule, with
#: effectors placed just outside the capsule (where the vessels would recruit them) walking in on the chemokine.
EXCLUDED = {
    "backend": "numpy",
    "grid": {"shape": [30, 30]},
    "vessels": {"pattern": "random", "density": 0.04, "exclude_tumour": True},
    "initial": {"tumour": {"radius_um": 160.0}},
    "tumour": {"antigenicity_initial": 0.8},
    "immune": {"enabled": True, "priming_initial": 0.8, "initial_macrophages": 0.02,
               "tcell": {"rules": ["tcell_secretion", "tcell_kill", "tcell_move"], "max_kills": 1000},
               "caf": {"stroma_density": 0.6, "stroma_inner_um": 0.0, "stroma_width_um": 120.0,
                       "initial_activation": 0.8},
               "ecm": {"initial_stroma": 0.7, "initial_tumour": 0.0}},
}
CAPSULE_OUTER_UM = EXCLUDED["initial"]["tumour"]["radius_um"] + EXCLUDED["immune"]["caf"]["stroma_width_um"]


#: Macrophages around a static nodule (no T cells): recruitment and polarisation.
MYELOID = {
    "backend": "numpy",
    "grid": {"shape": [30, 30]},
    "vessels": {"pattern": "random", "density": 0.05, "exclude_tumour": True},
    "initial": {"tumour": {"radius_um": 200.0}},
    "tumour": {"rules": _STATIC_TUMOUR},
    "immune": {"enabled": True, "initial_macrophages": 0.1, "tcell": {"rules": []},
               "caf": {"stroma_density": 0.02}},
}


def _simulation(arena: dict, therapy: dict | None = None, seed: int = 1, extra: dict | None = None) -> Simulation:
    return Simulation(parse_config(merge(merge(arena, extra or {}), {"seed": seed, "therapy": therapy or {}})))


def _trace(sim: Simulation, steps: int) -> list[dict]:
    """Step ``sim`` and return the readouts of every step."""
    out = []
    for _ in range(steps):
        sim.step()
        out.append(sim.readouts())
    return out


_CONTROLS: dict = {}


def _control(key: str, arena: dict, seed: int, steps: int, setup=None) -> tuple[Simulation, list[dict]]:
    """The untreated run of ``arena`` (cached: several drugs are compared against the same control)."""
    if (key, seed, steps) not in _CONTROLS:
        sim = _simulation(arena, seed=seed)
        if setup is not None:
            setup(sim)
        _CONTROLS[key, seed, steps] = sim, _trace(sim, steps)
    return _CONTROLS[key, seed, steps]


def _total(trace: list[dict], key: str) -> float:
    return float(sum(r[key] for r in trace))


def _late_mean(trace: list[dict], key: str) -> float:
    """Mean of ``key`` over the second half of the run (averages out the walk of single cells)."""
    late = trace[len(trace) // 2:]
    return float(np.mean([r[key] for r in late]))


def _place_effectors(n: int):
    def setup(sim):
        add_tcells(sim, tumour_voxels(sim, n, seed=1))
    return setup


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: PD-1, LAG-3, TIGIT, CTLA-4
CHECKPOINT_STEPS = 120  # 12 h


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_anti_pd1_raises_kills_when_adaptive_pdl1_is_on(seed):
    _, plain = _control("checkpoint", CHECKPOINT, seed, CHECKPOINT_STEPS, _place_effectors(60))
    sim = _simulation(CHECKPOINT, {"nivolumab": _drug("nivolumab", dose_mg=480.0)}, seed)
    _place_effectors(60)(sim)
    treated = _trace(sim, CHECKPOINT_STEPS)
    before, after = _total(plain, "tumour_killed_by_tcell"), _total(treated, "tumour_killed_by_tcell")
    assert treated[-1]["pdl1_mean"] > 0.3  # the resistance the drug acts on is there
    assert treated[-1]["occupancy_pd1_core"] > 0.9
    assert after > 1.5 * before, f"kills {before:g} untreated, {after:g} with nivolumab"


@pytest.mark.parametrize("seed", [1, 2])
def test_anti_pd1_changes_nothing_without_pdl1(seed):
    """PD-L1 absent (no baseline, no induction, no M2 PD-L1): the PD-1 term is 0, so the drug cannot act."""
    runs = []
    for therapy in ({}, {"nivolumab": _drug("nivolumab", dose_mg=480.0)}):
        sim = _simulation(CHECKPOINT, therapy, seed, NO_PDL1)
        _place_effectors(60)(sim)
        trace = _trace(sim, CHECKPOINT_STEPS)
        runs.append(([r["tumour_killed_by_tcell"] for r in trace], np.asarray(sim.agents["tcell"]["exhaustion"])))
    (kills_plain, ex_plain), (kills_treated, ex_treated) = runs
    assert sum(kills_plain) > 0
    assert kills_plain == kills_treated  # bit-identical, step by step
    np.testing.assert_array_equal(ex_plain, ex_treated)


@pytest.mark.parametrize("preset, slug", [("relatlimab", "lag3"), ("tiragolumab", "tigit")])
def test_alternative_checkpoint_blockade_slows_exhaustion(preset, slug):
    for seed in (1, 2):
        plain_sim, _ = _control("checkpoint", CHECKPOINT, seed, CHECKPOINT_STEPS, _place_effectors(60))
        sim = _simulation(CHECKPOINT, {preset: _drug(preset, dose_mg=1000.0)}, seed)
        _place_effectors(60)(sim)
        treated = _trace(sim, CHECKPOINT_STEPS)
        assert treated[-1][f"occupancy_{slug}_core"] > 0.9
        ex_plain = float(np.mean(np.asarray(plain_sim.agents["tcell"]["exhaustion"])))
        ex_treated = float(np.mean(np.asarray(sim.agents["tcell"]["exhaustion"])))
        # Exhaustion gain per engagement falls by relief x occupancy (0.5 x ~1); kills gain only a little in 12 h,
        # while exhaustion (and with it the LAG-3/TIM-3 term) is still low, so they are not asserted.
        assert ex_treated < 0.8 * ex_plain, f"seed {seed}: mean exhaustion {ex_plain:.3f} -> {ex_treated:.3f}"


def test_anti_ctla4_depletes_tregs_and_raises_priming():
    """Tregs placed among the effectors are depleted; priming gains more per antigen (plasma occupancy)."""
    def setup(sim):
        add_tcells(sim, tumour_voxels(sim, 60, seed=1))
        add_tcells(sim, tumour_voxels(sim, 40, seed=2), is_treg=True)

    arena = merge(CHECKPOINT, {"immune": {"tcell": {"rules": ["tcell_secretion", "tcell_recruitment", "tcell_kill",
                                                             "tcell_move", "tcell_death"]}}})
    for seed in (1, 2):
        _, plain = _control("ctla4", arena, seed, 180, setup)
        sim = _simulation(arena, {"ipilimumab": _drug("ipilimumab", dose_mg_per_kg=10.0)}, seed)
        setup(sim)
        treated = _trace(sim, 180)
        assert treated[-1]["occupancy_ctla4_plasma"] > 0.95
        tregs = plain[-1]["tcell_treg"], treated[-1]["tcell_treg"]
        priming = plain[-1]["priming"], treated[-1]["priming"]
        assert tregs[1] < 0.85 * tregs[0], f"seed {seed}: Tregs {tregs}"
        assert priming[1] > priming[0], f"seed {seed}: priming {priming}"


# ----------------------------------------------------------------------------------------------------------
# VEGF: normalisation at moderate occupancy, pruning at sustained high occupancy
VASCULAR_STEPS = 720  # 3 days
NORMALISE_STEPS = 120  # 12 h: perfusion follows the occupancy within hours
#: Pruning reads the occupancy's running mean (effects.vegf.sustained_day, 3 days: pruning starts after ~7 days
#: of saturating blockade). The pruning test shortens that memory to half a day so the same law acts within its
#: 3 days; the normalisation tests keep the default.
SHORT_MEMORY = {"effects": {"vegf": {"sustained_day": 0.5}}}


def _vessel_state(sim):
    vessels = np.asarray(sim.world.indices["vessel_voxels"])
    theta = sim.layers.get("occupancy_vegf")
    theta = np.asarray(theta).reshape(-1)[vessels] if theta is not None else np.zeros(vessels.size)
    return vessels.size, theta


def test_low_dose_anti_vegf_normalises_vessels_and_raises_tumour_oxygen():
    """Below the pruning threshold VEGF blockade only raises perfusion: more O2, exactly (the nodule is static)."""
    _, plain = _control("vascular", VASCULAR, 1, VASCULAR_STEPS)
    plain = plain[:NORMALISE_STEPS]
    sim = _simulation(VASCULAR, {"bevacizumab": _drug("bevacizumab", dose_mg_per_kg=0.003)})
    treated = _trace(sim, NORMALISE_STEPS)
    n_vessels, theta = _vessel_state(sim)
    assert 0.2 < theta.mean() and theta.max() < 0.9  # inside the normalisation window
    assert _total(treated, "vessels_pruned") == 0 and n_vessels == plain[-1]["vessel_voxels"]
    o2 = plain[-1]["oxygen_tumour_mean_mmHg"], treated[-1]["oxygen_tumour_mean_mmHg"]
    assert o2[1] > o2[0], f"tumour O2 {o2[0]:.5f} -> {o2[1]:.5f} mmHg"


def test_saturating_anti_vegf_first_normalises_then_prunes():
    """The normalisation window in time: a clinical dose (15 mg/kg) saturates the occupancy at once, but over the
    first 3 days the sustained blockade stays under the pruning threshold: no vessel is lost and the tumour gets
    more O2 than untreated."""
    _, plain = _control("vascular", VASCULAR, 1, VASCULAR_STEPS)
    sim = _simulation(VASCULAR, {"bevacizumab": _drug("bevacizumab", dose_mg_per_kg=15.0)})
    treated = _trace(sim, VASCULAR_STEPS)
    _, theta = _vessel_state(sim)
    sustained = np.asarray(sim.layers["occupancy_vegf_sustained"]).reshape(-1)[sim.world.indices["vessel_voxels"]]
    assert theta.min() > 0.99 and sustained.max() < sim.config.effects.vegf.prune_threshold
    assert _total(treated, "vessels_pruned") == 0
    o2 = plain[-1]["oxygen_tumour_mean_mmHg"], treated[-1]["oxygen_tumour_mean_mmHg"]
    assert o2[1] > o2[0], f"tumour O2 {o2[0]:.5f} -> {o2[1]:.5f} mmHg"


def test_anti_vegf_slows_angiogenesis():
    """With sprouting on, VEGF blockade lowers the sprouting signal: fewer new vessel voxels (3 seeds, 1 day)."""
    # The tumour VEGF here is ~1 % of the sprouting half-max, so the rate is raised to see sprouts within a day.
    sprouting = {"vessels": {"angiogenesis": True, "angiogenesis_rate_per_min": 0.02}}
    plain, treated = [], []
    for seed in (1, 2, 3):
        plain.append(_total(_trace(_simulation(VASCULAR, None, seed, sprouting), 240), "vessels_sprouted"))
        sim = _simulation(VASCULAR, {"bevacizumab": _drug("bevacizumab", dose_mg_per_kg=15.0)}, seed, sprouting)
        treated.append(_total(_trace(sim, 240), "vessels_sprouted"))
    assert sum(plain) > 0 and all(t < p for p, t in zip(plain, treated)), f"sprouts {plain} -> {treated}"


def test_high_sustained_anti_vegf_prunes_vessels_and_lowers_tumour_oxygen():
    _, plain = _control("vascular", VASCULAR, 1, VASCULAR_STEPS)
    sim = _simulation(VASCULAR, {"bevacizumab": _drug("bevacizumab", dose_mg_per_kg=15.0)}, extra=SHORT_MEMORY)
    treated = _trace(sim, VASCULAR_STEPS)
    _, theta = _vessel_state(sim)
    assert theta.min() > 0.99
    vessels = plain[-1]["vessel_voxels"], treated[-1]["vessel_voxels"]
    o2 = plain[-1]["oxygen_tumour_mean_mmHg"], treated[-1]["oxygen_tumour_mean_mmHg"]
    assert vessels[1] < 0.85 * vessels[0], f"vessel voxels {vessels}"
    assert o2[1] < o2[0], f"tumour O2 {o2[0]:.4f} -> {o2[1]:.4f} mmHg"


# ----------------------------------------------------------------------------------------------------------
# Stroma: FAP, LOX, TGF-β, CXCR4 on the excluded nodule
EXCLUDED_STEPS = 240  # 1 day


def _radius_um(sim):
    """Distance of every voxel centre from the lattice centre (µm, flat)."""
    dx = sim.config.grid.spacing_um
    axes = [(np.arange(n) + 0.5) * dx - n * dx / 2 for n in sim.config.grid.shape]
    return np.sqrt(sum(a**2 for a in np.meshgrid(*axes, indexing="ij"))).reshape(-1)


def _place_outside_capsule(sim, n: int = 60):
    """``n`` effectors on random voxels of the band just outside the capsule (seeded, the same in both arms)."""
    r = _radius_um(sim)
    band = np.nonzero((r > CAPSULE_OUTER_UM) & (r <= CAPSULE_OUTER_UM + 80.0))[0]
    add_tcells(sim, np.random.default_rng(sim.config.seed).choice(band, size=n, replace=False))


def _excluded(therapy: dict, seed: int) -> tuple[Simulation, list[dict]]:
    sim = _simulation(EXCLUDED, therapy, seed)
    _place_outside_capsule(sim)
    return sim, _trace(sim, EXCLUDED_STEPS)


def _capsule_ecm(sim) -> float:
    """Mean ECM outside the seeded nodule (the capsule and beyond)."""
    ecm = np.asarray(sim.layers["ecm"], dtype=np.float64).reshape(-1)
    return float(ecm[_radius_um(sim) > sim.config.initial.tumour.radius_um].mean())


def test_fap_depletes_cafs_and_lowers_ecm():
    plain_sim, plain = _control("excluded", EXCLUDED, 1, EXCLUDED_STEPS, _place_outside_capsule)
    sim, treated = _excluded({"sibrotuzumab": _drug("sibrotuzumab", dose_mg=1000.0)}, 1)
    cafs = plain[-1]["caf_cells"], treated[-1]["caf_cells"]
    ecm = _capsule_ecm(plain_sim), _capsule_ecm(sim)
    assert cafs[1] < 0.8 * cafs[0], f"CAFs {cafs}"
    assert ecm[1] < ecm[0], f"ECM outside the nodule {ecm}"


def test_lox_inhibition_lowers_ecm():
    plain_sim, _ = _control("excluded", EXCLUDED, 1, EXCLUDED_STEPS, _place_outside_capsule)
    sim, _ = _excluded({"simtuzumab": _drug("simtuzumab", dose_mg=1400.0)}, 1)
    ecm = _capsule_ecm(plain_sim), _capsule_ecm(sim)
    assert ecm[1] < ecm[0] - 0.02, f"ECM outside the nodule {ecm}"


EXCLUDED_SEEDS = (1, 2, 3, 4)


def _core_cd8(therapy: dict) -> tuple[list[float], list[float]]:
    """CD8 density in the tumour core (per mm²) averaged over the second half of the run, per seed."""
    plain, treated = [], []
    for seed in EXCLUDED_SEEDS:
        _, control = _control("excluded", EXCLUDED, seed, EXCLUDED_STEPS, _place_outside_capsule)
        plain.append(_late_mean(control, "cd8_density_core"))
        treated.append(_late_mean(_excluded(therapy, seed)[1], "cd8_density_core"))
    return plain, treated


def _assert_core_cd8_rises(plain, treated, drug):
    ups = sum(t > p for p, t in zip(plain, treated))
    assert ups > len(plain) / 2 and np.mean(treated) > 1.1 * np.mean(plain), (
        f"{drug}: core CD8 per mm² (late mean per seed) untreated {np.round(plain, 1)}, treated {np.round(treated, 1)}")


GALUNISERTIB_Q6H = {"galunisertib": _drug("galunisertib", every_day=0.25, doses=4, dose_mg=300.0)}


def test_anti_tgfb_raises_core_cd8_in_the_excluded_nodule():
    """Blocked TGF-β signalling lets the CAFs drift toward quiescence, their CXCL12 retention fades, and more
    effectors reach the core (4 seeds, 1 day; untreated vs treated core CD8 per mm²)."""
    plain, treated = _core_cd8(GALUNISERTIB_Q6H)
    _assert_core_cd8_rises(plain, treated, "galunisertib")


def test_anti_tgfb_acts_at_caf_activation_and_tgfb_suppression():
    """TGF-β blockade acts at its read points: CAF activation and T-cell suppression use the free TGF-β."""
    from abm.modules.immune.tcell import suppression_components

    plain_sim, plain = _control("excluded", EXCLUDED, 1, EXCLUDED_STEPS, _place_outside_capsule)
    sim, treated = _excluded(GALUNISERTIB_Q6H, 1)
    assert treated[-1]["caf_activation_mean"] < plain[-1]["caf_activation_mean"]
    assert treated[-1]["occupancy_tgfb_core"] > 0.5
    voxels = np.asarray(sim.agents["tumour"]["voxel"])[:50]
    zeros = np.zeros(voxels.size)
    module = sim.module("immune")
    blocked = suppression_components(sim.world, module.params, voxels, zeros, zeros, voxels)["tgfb"]
    theta = np.asarray(sim.layers["occupancy_tgfb"], dtype=np.float64).reshape(-1)[voxels]
    tgfb = np.asarray(sim.fields["tgfb"].data, dtype=np.float64).reshape(-1)[voxels] * (1 - theta)
    p = sim.config.immune.tcell
    np.testing.assert_allclose(blocked, p.tgfb_suppression * tgfb / (tgfb + p.tgfb_half_max), rtol=1e-6)


def test_cxcr4_blockade_raises_core_cd8_in_the_excluded_nodule():
    # Plerixafor clears in hours: dosed every 6 h so the CXCL12 retention stays lifted.
    plain, treated = _core_cd8({"plerixafor": _drug("plerixafor", every_day=0.25, doses=4, dose_mg_per_kg=0.5)})
    _assert_core_cd8_rises(plain, treated, "plerixafor")


# ----------------------------------------------------------------------------------------------------------
# Myeloid: CSF-1R
def test_csf1r_inhibition_lowers_m2_macrophages():
    m2 = []
    for seed in (1, 2):
        _, plain = _control("myeloid", MYELOID, seed, 240)
        treated = _trace(_simulation(MYELOID, {"pexidartinib": _drug("pexidartinib", every_day=0.5, doses=2,
                                                                        dose_mg=1000.0)}, seed), 240)
        m2.append((_late_mean(plain, "macrophage_m2"), _late_mean(treated, "macrophage_m2")))
    assert all(t < p for p, t in m2), f"M2 (late mean, untreated vs treated) {m2}"


# ----------------------------------------------------------------------------------------------------------
# Delivery: antibody penetration from a line of vessels through ECM
def _penetration_half_um(ecm: float) -> float:
    """Distance from a vessel line at which the antibody falls to half its level at the vessels (µm)."""
    arena = {
        "backend": "numpy", "seed": 1,
        "grid": {"shape": [40, 12]},
        "vessels": {"pattern": "list", "positions": [[0, j] for j in range(12)]},
        "initial": {"tumour": {"radius_um": 0.0}},
        "resistance": {"stromal_exclusion": True},
        "immune": {"enabled": True, "tcell": {"rules": []}, "macrophage": {"rules": []},
                   "caf": {"rules": [], "stroma_density": 0.0},
                   "ecm": {"initial_stroma": ecm, "initial_tumour": ecm}},
        "therapy": {"nivolumab": _drug("nivolumab", dose_mg=480.0)},
    }
    sim = Simulation(parse_config(arena))
    _trace(sim, 240)  # 24 h: several tissue-clearance half-lives, the profile is quasi-steady
    profile = np.asarray(sim.fields["nivolumab"].data, dtype=np.float64).mean(axis=1)
    relative = profile / profile[0]
    i = int(np.argmax(relative < 0.5))
    assert i > 0, f"the drug never falls to half within the lattice: {np.round(relative, 3)}"
    frac = (relative[i - 1] - 0.5) / (relative[i - 1] - relative[i])  # linear interpolation between voxels
    return (i - 1 + frac) * sim.config.grid.spacing_um


def test_antibody_penetration_falls_as_ecm_density_rises():
    open_um, dense_um = _penetration_half_um(0.0), _penetration_half_um(0.8)
    # Hindrance 1 - 0.85 x 0.8 leaves 32 % of D; the penetration length scales as sqrt(D): about 0.57x.
    assert dense_um < 0.75 * open_um, f"half-distance {open_um:.1f} µm at ECM 0, {dense_um:.1f} µm at ECM 0.8"


# ----------------------------------------------------------------------------------------------------------
# Scenario configs
@pytest.mark.parametrize("path", THERAPY_CONFIGS, ids=lambda p: p.stem)
def test_therapy_scenario_validates_and_runs(path):
    cfg = load_config(path, ["backend=numpy"])
    assert cfg.therapy or cfg.cell_therapy or cfg.vaccine, f"{path.name} has no therapy table"
    sim = Simulation(cfg)
    for _ in range(5):
        sim.step()
    assert sim.readouts()["tumour_cells"] > 0


def test_every_therapy_scenario_is_found():
    assert len(THERAPY_CONFIGS) >= 12
