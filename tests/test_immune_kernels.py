"""Kernels of the immune layer: capacity-limited conflict resolution, box sums, weighted choice."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_host

from abm.backend import get_backend
from kernels.chemotaxis import chemotaxis_weights, sample_choice, sample_uniform
from kernels.lattice import Stencil, box_sum, cube_offsets, moore_offsets, neighbours, resolve_capacity
from kernels.sampling import bernoulli_rows, thinned_rows


@pytest.mark.parametrize("n_voxels", [20, 2000])  # every voxel contested; most voxels wanted by one candidate
def test_resolve_capacity_fills_each_voxel_up_to_its_slots_by_priority(xp, n_voxels):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, n_voxels, 500)
    priority = rng.random(500)
    slots = rng.integers(-1, 4, n_voxels)
    won = to_host(resolve_capacity(xp.asarray(targets), xp.asarray(priority), xp.asarray(slots)))
    for v in range(n_voxels):
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


def test_box_sum_small_integer_result_is_exact(xp):
    grid = np.random.default_rng(3).random((12, 9, 7)) < 0.6
    want = to_host(box_sum(xp.asarray(grid), 1))
    got = box_sum(xp.asarray(grid), 1, dtype=np.uint8)
    assert got.dtype == np.uint8 and np.array_equal(to_host(got), want.astype(np.uint8)) and want.max() <= 27


@pytest.mark.parametrize("shape", [(9, 7), (30, 40), (2, 5), (5, 6, 4), (1, 6, 3)])
@pytest.mark.parametrize("radius", [1, 2, 3])
def test_stencil_matches_neighbours(xp, shape, radius):
    rng = np.random.default_rng(radius)
    for offsets in (moore_offsets(len(shape)), cube_offsets(len(shape), radius)):
        stencil = Stencil(shape, offsets, xp)
        voxels = rng.integers(0, np.prod(shape), 300)
        want_flat, want_inside = neighbours(voxels, shape, offsets)
        flat, inside = (to_host(a).T for a in stencil.neighbours(xp.asarray(voxels)))  # neighbour-major
        assert np.array_equal(inside, want_inside)
        assert np.array_equal(flat[inside], want_flat[want_inside])
        assert np.all((flat == voxels[:, None])[~inside])  # outside entries point at the voxel itself
        vx = xp.asarray(voxels)  # the branch-free table gather (CuPy's path) agrees with the NumPy fast path
        table_flat, table_inside = (to_host(a).T for a in stencil._from_tables(vx, stencil.voxel_class[vx]))
        assert np.array_equal(table_flat, flat) and np.array_equal(table_inside, inside)
        values = rng.random(int(np.prod(shape)))
        want = np.where(want_inside, values[want_flat], 0).sum(axis=1)
        assert np.allclose(to_host(stencil.window_sum(xp.asarray(values), xp.asarray(voxels))), want)


def test_sample_uniform_is_uniform_over_candidates(xp):
    n = 120_000
    candidates = np.zeros((n, 5), dtype=bool)
    candidates[: n // 2, [0, 3]] = True  # first half: two candidates
    candidates[n // 2 : -10, [1, 2, 4]] = True  # second half: three
    uniforms = np.random.default_rng(4).random(n)
    choice, possible = sample_uniform(xp.asarray(candidates.T.copy()), xp.asarray(uniforms))
    choice, possible = to_host(choice), to_host(possible)
    assert np.array_equal(possible, candidates.any(axis=1))
    assert candidates[np.arange(n)[possible], choice[possible]].all()
    first = np.bincount(choice[: n // 2], minlength=5) / (n // 2)
    second = np.bincount(choice[n // 2 : -10], minlength=5) / (n // 2 - 10)
    assert np.allclose(first, [0.5, 0, 0, 0.5, 0], atol=0.01)
    assert np.allclose(second, [0, 1 / 3, 1 / 3, 0, 1 / 3], atol=0.01)


@pytest.mark.parametrize("offset", [0.0, 1000.0])  # large log-weights must not overflow
def test_sample_choice_follows_the_weights(xp, offset):
    n = 200_000
    w = np.array([[0.0, np.log(2.0), -np.inf, 0.0]]) + offset
    logw = xp.asarray(np.repeat(w, n, axis=0).T.copy())  # neighbour-major (K, N)
    uniforms = np.random.default_rng(2).random(n)
    uniforms[:3] = [0.0, 1.0 - 2.0**-53, 0.5]  # the ends of [0, 1)
    choice, possible = sample_choice(logw, xp.asarray(uniforms))
    freq = np.bincount(to_host(choice), minlength=4) / n
    assert np.allclose(freq, [0.25, 0.5, 0.0, 0.25], atol=0.005) and bool(to_host(possible).all())
    assert to_host(choice)[1] == 3  # the largest uniform takes the last possible column
    impossible = xp.asarray(np.full((2, 3), -np.inf))
    assert not to_host(sample_choice(impossible.T, xp.asarray([0.1, 0.9]))[1]).any()
    flat = chemotaxis_weights(xp.ones(3), xp.ones((8, 3)), xp.ones((8, 3), dtype=bool), 5.0, 0.5)
    assert np.all(to_host(flat) == 0)


@pytest.mark.parametrize("p", [0.002, 0.2])  # gap sampling, and one uniform per trial
def test_bernoulli_rows_hit_each_trial_with_probability_p(backend_name, p):
    backend = get_backend(backend_name)
    n, steps = 500, 3000
    hits = np.zeros(n)
    for step in range(steps):
        rows = to_host(bernoulli_rows(backend.random(0, step), n, p, backend.xp))
        assert np.all(np.diff(rows) > 0) and (rows.size == 0 or 0 <= rows.min() <= rows.max() < n)
        hits[rows] += 1
    sigma = np.sqrt(p * (1 - p) / (n * steps))
    assert abs(hits.mean() / steps - p) < 4 * sigma
    halves = hits.reshape(2, -1).mean(axis=1) / steps  # no drift along the rows
    assert np.all(np.abs(halves - p) < 4 * sigma * np.sqrt(2))
    assert bernoulli_rows(backend.random(0, 0), n, 0.0, backend.xp).size == 0
    assert bernoulli_rows(backend.random(0, 0), 0, p, backend.xp).size == 0


def test_thinned_rows_give_each_agent_its_own_probability(backend_name):
    backend = get_backend(backend_name)
    n, steps, p_max = 200, 4000, 0.01
    p = backend.xp.asarray(np.linspace(0.0, p_max, n))
    hits = np.zeros(n)
    for step in range(steps):
        hits[to_host(thinned_rows(backend.random(1, step), n, p_max, lambda rows: p[rows], backend.xp))] += 1
    p = to_host(p)
    quarters = hits.reshape(4, -1).mean(axis=1) / steps
    want = p.reshape(4, -1).mean(axis=1)
    assert np.all(np.abs(quarters - want) < 4 * np.sqrt(want * (1 - want) / (n // 4 * steps)) + 1e-12)
    assert hits[0] == 0  # p = 0 never fires
