"""The host-sync audit counts each kind of sync once, at its call site, and nothing for pure array work."""

import numpy as np
import pytest

from abm.backend import get_backend
from abm.sync_audit import DeviceArray, audit_backend
from kernels.lattice import resolve_capacity


@pytest.fixture
def audit():
    backend = audit_backend()
    return backend, backend.xp, backend.ledger


def _one_sync(ledger, kind):
    assert ledger.total == 1, dict(ledger.syncs)
    ((k, site),) = ledger.syncs
    assert k == kind
    assert site == "<outside the package>"  # sites are lines in abm/ or kernels/; these calls come from a test
    ledger.reset()


def test_array_work_counts_nothing(audit):
    _, xp, ledger = audit
    a = xp.arange(12, dtype=np.float64).reshape(3, 4)
    idx = xp.asarray([0, 2])
    b = (a * 2 + 1).sum(axis=0) / a.max()
    c = xp.where(a > 3, a, 0).take(idx, axis=0)
    a[0] = b
    a += 1
    xp.add.at(a.reshape(-1), idx, 1.0)
    xp.copyto(a, 0.5, where=a > 10)
    s = xp.count_nonzero(a > 2) + xp.any(a < 0)  # 0-d results stay on the device
    order = xp.argsort(xp.concatenate([b, c.reshape(-1)]))
    assert isinstance(s, DeviceArray) and s.shape == () and isinstance(order, DeviceArray)
    assert ledger.total == 0, dict(ledger.syncs)
    assert sum(ledger.uploads.values()) == 1  # the host list [0, 2]


@pytest.mark.parametrize("kind, op", [
    ("float", lambda xp, a: float(a.sum())),
    ("int", lambda xp, a: int(a.max())),
    ("bool", lambda xp, a: bool(xp.any(a > 1))),
    ("index", lambda xp, a: xp.zeros(a.argmax())),
    ("item", lambda xp, a: a[1].item()),
    ("tolist", lambda xp, a: a.tolist()),
    ("print", lambda xp, a: str(a)),
    ("to_host", lambda xp, a: np.asarray(a)),
    ("to_host", lambda xp, a: a.get()),
    ("nonzero", lambda xp, a: xp.nonzero(a > 1)),
    ("nonzero", lambda xp, a: (a > 1).nonzero()),
    ("flatnonzero", lambda xp, a: xp.flatnonzero(a)),
    ("argwhere", lambda xp, a: xp.argwhere(a)),
    ("where", lambda xp, a: xp.where(a > 1)),
    ("unique", lambda xp, a: xp.unique(a)),
    ("compress", lambda xp, a: a.compress(a > 1)),
    ("putmask", lambda xp, a: xp.putmask(a, a > 1, 0.0)),
    ("mask_getitem", lambda xp, a: a[a > 1]),
    ("mask_setitem", lambda xp, a: a.__setitem__(a > 1, 0.0)),
])
def test_each_sync_is_counted_once(audit, kind, op):
    _, xp, ledger = audit
    a = xp.asarray([1.0, 3.0, 0.0, 2.0])
    op(xp, a)
    _one_sync(ledger, kind)


def test_if_on_an_array_is_a_sync(audit):
    _, xp, ledger = audit
    a = xp.asarray([1.0, 2.0])
    if xp.any(a > 1):
        pass
    _one_sync(ledger, "bool")


def test_bincount_syncs_twice_whatever_minlength(audit):
    _, xp, ledger = audit
    counts = xp.bincount(xp.asarray([0, 2, 2]), minlength=5)
    assert ledger.syncs.total() == 2 and set(k for k, _ in ledger.syncs) == {"bincount"}
    assert counts.shape == (5,)


def test_backend_copies_and_sites(audit):
    backend, xp, ledger = audit
    host = backend.to_host(xp.ones(3))
    assert type(host) is np.ndarray
    _one_sync(ledger, "to_host")
    # A sync inside a kernel is charged to the kernel's line; resolve_capacity itself syncs once (contested voxels).
    won = resolve_capacity(xp.asarray([1, 1, 2]), xp.asarray([0.3, 0.7, 0.1]), xp.ones(4, dtype=np.int64))
    assert won.tolist() == [False, True, True]
    kinds = {(k, site.split(":")[0]) for k, site in ledger.syncs}
    assert ("nonzero", "kernels/lattice.py") in kinds


def test_random_draws_are_device_arrays(audit):
    backend, _, ledger = audit
    u = backend.random(seed=1, step=3, stream=2, generator="philox").random(5)
    assert isinstance(u, DeviceArray) and u.shape == (5,)
    assert ledger.total == 0 and not ledger.uploads  # Philox draws are made on the device
    expected = get_backend("numpy").random(seed=1, step=3, stream=2, generator="philox").random(5)
    np.testing.assert_array_equal(backend.to_host(u), expected)


SCENES = {  # a lesion with every immune cell type under treatment; a vascular one that sprouts and prunes
    "car_t_mdsc": ("configs/therapies/car_t_anti_pd1.toml",
                   ["cell_therapy.cart.start_day=0", "therapy.nivolumab.schedule.start_day=0",
                    "resistance.suppressive_cells=true", "immune.mdsc.enabled=true"]),
    "virus_anti_vegf": ("configs/therapies/anti_pd1_high_dose_anti_vegf.toml",
                        ["therapy.bevacizumab.schedule.start_day=0", "vessels.angiogenesis=true",
                         "vessels.angiogenesis_rate_per_min=1.0", "effects.vegf.sustained_day=0.01",
                         "effects.vegf.prune_per_day=5", "virus.tvec.route='intratumoral'",
                         "virus.tvec.times_day=[0.0]", "virus.tvec.titre_pfu_per_mL=1.0e8",
                         "virus.tvec.region={shape='sphere', center_um=[1100.0, 800.0], radius_um=100.0}"]),
}


def _flat(state, prefix=""):
    for key, value in state.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", np.asarray(value)


@pytest.mark.parametrize("scene", list(SCENES))
def test_device_code_paths_give_numpy_numbers(scene):
    """Where the model branches on the namespace, the path a GPU takes (the audit's) gives NumPy's numbers, bit
    for bit: scatter-add kills and counts, compaction by ranks, recruitment picked in the commit."""
    from pathlib import Path

    from abm.config import load_config
    from abm.model import Simulation

    path, overrides = SCENES[scene]
    config = load_config(Path(__file__).resolve().parents[1] / path, ['backend="numpy"', 'random="philox"', *overrides])
    runs = []
    for backend in (get_backend("numpy"), audit_backend()):
        sim = Simulation(config, backend)
        readouts = []
        for _ in range(4):
            for _ in range(5):
                sim.step()
            readouts.append(sim.readouts())
        runs.append((readouts, dict(_flat(sim.state()))))
    (readouts, state), (device_readouts, device_state) = runs
    assert readouts == device_readouts
    assert state.keys() == device_state.keys()
    for key, value in state.items():
        assert value.tobytes() == device_state[key].tobytes(), key
    assert sum(r["tcell_recruited"] + r["macrophage_recruited"] for r in readouts) > 0
