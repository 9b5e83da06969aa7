"""Kernels of the immune layer: capacity-limited conflict resolution, box sums, weighted choice."""

from __future__ import annotations

import numpy as np
from conftest import to_host

from kernels.chemotaxis import chemotaxis_weights, sample_choice
from kernels.lattice import box_sum, resolve_capacity


def test_resolve_capacity_fills_each_voxel_up_to_its_slots_by_priority(xp):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 20, 500)
    priority = rng.random(500)
    slots = rng.integers(-1, 4, 20)
    won = to_host(resolve_capacity(xp.asarray(targets), xp.asarray(priority), xp.asarray(slots)))
    for v in range(20):
        mine = targets == v
        admitted = np.count_nonzero(won & mine)
        assert admitted == min(max(slots[v], 0), np.count_nonzero(mine))
        if admitted:  # the admitted ones are the highest priorities
            assert priority[won & mine].min() >= priority[mine & ~won].max(initial=-1)
    perm = rng.permutation(500)
    won_perm = to_host(resolve_capacity(xp.asarray(targets[perm]), xp.asarray(priority[perm]), xp.asarray(slots)))
    assert np.array_equal(won_perm, won[perm])


def test_box_sum_matches_brute_force(xp):
    rng = np.random.default_rng(1)
    for shape in ((9, 7), (5, 6, 4)):
        grid = rng.random(shape)
        got = to_host(box_sum(xp.asarray(grid), 2))
        pad = np.pad(grid, 2)
        want = np.zeros(shape)
        for off in np.ndindex(*(5,) * len(shape)):
            want += pad[tuple(slice(o, o + n) for o, n in zip(off, shape))]
        assert np.allclose(got, want)


def test_sample_choice_follows_the_weights(xp):
    n = 200_000
    w = np.array([[0.0, np.log(2.0), -np.inf, 0.0]])
    logw = xp.asarray(np.repeat(w, n, axis=0))
    choice, possible = sample_choice(logw, xp.asarray(np.random.default_rng(2).random((n, 4))))
    freq = np.bincount(to_host(choice), minlength=4) / n
    assert np.allclose(freq, [0.25, 0.5, 0.0, 0.25], atol=0.005) and bool(to_host(possible).all())
    flat = chemotaxis_weights(xp.ones(3), xp.ones((3, 8)), xp.ones((3, 8), dtype=bool), 5.0, 0.5)
    assert np.all(to_host(flat) == 0)
