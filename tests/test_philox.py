"""The counter-based Philox stream: bits against NumPy's Philox, the conversions, and runs that use it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import _cupy_or_skip, assert_tree_equal, quickstart_scene, to_host
from scipy import stats

from abm.backend import StepRandom, get_backend
from abm.config import ConfigError
from abm.io import open_run
from abm.model import Simulation
from abm.replay import replay_run
from abm.runner import run_simulation
from kernels.philox import normal_words, philox_raw, philox_raw_cuda, standard_normal, uniform, uniform_words

TOP = 2**64 - 1


def keys_and_counters():
    """Random keys and counters, and counters whose blocks carry across each of the four words."""
    draw = np.random.default_rng(20261128)
    cases = [((0, 0), (0, 0, 0, 0)), ((TOP, TOP), (TOP - 2, TOP, TOP, 5)), ((7, 9), (TOP - 1, 3, 4, 0)),
             ((1, 2), (TOP, TOP, 0, 0))]
    for _ in range(6):
        cases.append((tuple(int(w) for w in draw.integers(0, 2**64, 2, dtype=np.uint64)),
                      tuple(int(w) for w in draw.integers(0, 2**64, 4, dtype=np.uint64))))
    return cases


def numpy_raw(key, counter, n_words):
    return np.random.Philox(key=np.array(key, np.uint64), counter=np.array(counter, np.uint64)).random_raw(n_words)


def numpy_generator(key, counter):
    return np.random.Generator(np.random.Philox(key=np.array(key, np.uint64), counter=np.array(counter, np.uint64)))


# --------------------------------------------------------------------------------------------------------------
# Bits
@pytest.mark.parametrize("n_words", [1, 6, 37])
def test_array_philox_equals_numpy_philox(xp, n_words):
    for key, counter in keys_and_counters():
        got = to_host(philox_raw(key, counter, n_words, xp))
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, numpy_raw(key, counter, n_words), err_msg=f"{key} {counter}")


def test_counter_carries_across_words():
    # After counter (2**64 - 2, 2**64 - 1, 0, 0) come the blocks at (2**64 - 1, 2**64 - 1, 0, 0) and, carried
    # across two words, (0, 0, 1, 0).
    key = (3, 4)
    blocks = philox_raw(key, (TOP - 1, TOP, 0, 0), 8, np)
    np.testing.assert_array_equal(blocks, numpy_raw(key, (TOP - 1, TOP, 0, 0), 8))
    np.testing.assert_array_equal(blocks[4:], philox_raw(key, (TOP, TOP, 0, 0), 4, np))
    assert not np.array_equal(blocks[4:], philox_raw(key, (TOP, TOP, 1, 0), 4, np))


def test_bad_key_or_counter_is_refused():
    with pytest.raises(ValueError, match="key must be 2 words"):
        philox_raw((1, 2, 3), (0, 0, 0, 0), 4, np)
    with pytest.raises(ValueError, match="counter must be 4 words"):
        philox_raw((1, 2), (0, 0, 0, 2**64), 4, np)


@pytest.mark.gpu
def test_cuda_kernel_equals_numpy_philox():
    cupy = _cupy_or_skip()
    for key, counter in keys_and_counters():
        for n_words in (0, 3, 4, 4099):
            got = philox_raw_cuda(key, counter, n_words)
            assert isinstance(got, cupy.ndarray) and got.shape == (n_words,)
            np.testing.assert_array_equal(got.get(), numpy_raw(key, counter, n_words), err_msg=f"{key} {counter}")


# --------------------------------------------------------------------------------------------------------------
# Conversions
def test_uniform_float64_takes_the_top_53_bits(xp):
    words = xp.asarray(np.array([0, TOP, 1 << 11, (1 << 11) - 1, 1 << 63], dtype=np.uint64))
    got = to_host(uniform(words, 5))
    assert got.dtype == np.float64
    assert got.tolist() == [0.0, 1.0 - 2.0**-53, 2.0**-53, 0.0, 0.5]


def test_uniform_float32_takes_24_bits_of_each_half_low_first(xp):
    words = xp.asarray(np.array([(0x100 << 32) | 0xFFFFFFFF, 0x80000000], dtype=np.uint64))
    got = to_host(uniform(words, 3, np.float32))
    assert got.dtype == np.float32
    assert got.tolist() == [1.0 - 2.0**-24, 2.0**-24, 0.5]
    assert uniform_words(3, np.float32) == 2 and uniform_words(3, np.float64) == 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_uniform_equals_numpy_generator_on_philox(dtype, n):
    key, counter = (11, 12), (5, 6, 7, 8)
    bits = philox_raw(key, counter, uniform_words(n, dtype), np)
    np.testing.assert_array_equal(uniform(bits, n, dtype), numpy_generator(key, counter).random(n, dtype=dtype))


def test_standard_normal_is_box_muller(xp):
    bits = philox_raw((21, 22), (0, 1, 2, 0), 6, np)
    u = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    expected = []
    for u1, u2 in zip(1.0 - u[0::2], u[1::2], strict=True):
        r = math.sqrt(-2.0 * math.log(u1))
        expected += [r * math.cos(2.0 * math.pi * u2), r * math.sin(2.0 * math.pi * u2)]
    got = to_host(standard_normal(xp.asarray(bits), 5))
    np.testing.assert_allclose(got, expected[:5], rtol=1e-14, atol=1e-15)
    assert to_host(standard_normal(xp.asarray(bits), 5, np.float32)).dtype == np.float32
    assert normal_words(5) == 6
    zero = xp.zeros(2, dtype=np.uint64)  # u1 = 1: radius 0
    assert to_host(standard_normal(zero, 2)).tolist() == [0.0, 0.0]


def test_standard_normal_is_normal():
    z = standard_normal(philox_raw((5, 5), (0, 0, 0, 0), normal_words(20000), np), 20000)
    assert stats.kstest(z, "norm").pvalue > 0.01
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.02


def test_conversions_refuse_other_dtypes():
    with pytest.raises(ValueError, match="float32 or float64"):
        uniform(np.zeros(2, np.uint64), 2, np.int32)


# --------------------------------------------------------------------------------------------------------------
# The step stream
def test_philox_step_stream_layout():
    """Draw c of step s of stream k uses the key of SeedSequence(seed, k) and the counter (0, s, c, 0)."""
    seed, step, stream = 17, 123, 9
    rng = StepRandom(np, seed, step, stream, "philox")
    first, second = rng.random(10), rng.random((2, 3), np.float32)
    normals = rng.normal(5)
    seq = np.random.SeedSequence(entropy=seed, spawn_key=(stream,))
    key = seq.generate_state(2, np.uint64)
    np.testing.assert_array_equal(first, np.random.Generator(np.random.Philox(seq, counter=[0, step, 0, 0])).random(10))
    np.testing.assert_array_equal(second, numpy_generator(key, (0, step, 1, 0)).random((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(normals, standard_normal(numpy_raw(key, (0, step, 2, 0), 6), 5))
    again = StepRandom(np, seed, step, stream, "philox")
    np.testing.assert_array_equal(again.random(10), first)
    assert not np.array_equal(StepRandom(np, seed, step + 1, stream, "philox").random(10), first)
    assert not np.array_equal(StepRandom(np, seed, step, stream + 1, "philox").random(10), first)


def reference_draws(generator: str, seed: int, step: int, stream: int, shape):
    """Uniform float64, uniform float32 and normal draws of a step stream, made with NumPy alone."""
    seq = np.random.SeedSequence(entropy=seed, spawn_key=(stream,))
    n = int(np.prod(shape))
    if generator == "pcg64":
        bits = np.random.PCG64(seq)
        bits.advance(step << 64)
        gen = np.random.Generator(bits)
        return gen.random(shape), gen.random(shape, dtype=np.float32), gen.standard_normal(n)
    key = seq.generate_state(2, np.uint64)
    return (numpy_generator(key, (0, step, 0, 0)).random(shape),
            numpy_generator(key, (0, step, 1, 0)).random(shape, dtype=np.float32),
            standard_normal(numpy_raw(key, (0, step, 2, 0), normal_words(n)), n))


@pytest.mark.parametrize("generator", ["philox", "pcg64"])
def test_step_stream_draws_the_reference_numbers_on_every_backend(xp, generator):
    rng = StepRandom(xp, 3, 40, 5, generator)
    uniform64, uniform32, normals = reference_draws(generator, 3, 40, 5, (3, 1001))
    got64, got32 = to_host(rng.random((3, 1001))), to_host(rng.random((3, 1001), np.float32))
    assert got64.dtype == np.float64 and got32.dtype == np.float32
    np.testing.assert_array_equal(got64, uniform64)
    np.testing.assert_array_equal(got32, uniform32)
    np.testing.assert_allclose(to_host(rng.normal(3003)), normals, rtol=1e-13, atol=1e-13)  # libm vs CUDA: ulps


def test_random_choice_resolves_per_backend():
    numpy = get_backend("numpy")
    assert numpy.resolve_random("auto") == "pcg64" and numpy.resolve_random("philox") == "philox"
    with pytest.raises(ValueError, match="unknown random generator 'mt'"):
        StepRandom(np, 0, 0, 0, "mt")


def test_config_random_key_is_checked():
    with pytest.raises(ConfigError, match="random"):
        quickstart_scene(["random='mt19937'"])


# --------------------------------------------------------------------------------------------------------------
# Runs
DT, N = 6.0, 8


def philox_scene(duration_min: float, generator: str = "philox"):
    return quickstart_scene([
        "grid.shape=[32,32]", f"time.duration_min={duration_min}", "output.snapshot_interval_min=24",
        "backend='numpy'", f"random='{generator}'", "output.summary_plot=false", "initial.tumour.radius_um=100",
    ], immune=True)


def test_philox_run_is_reproducible_and_differs_from_pcg64():
    states = []
    for generator in ("philox", "philox", "pcg64"):
        sim = Simulation(philox_scene(N * DT, generator))
        assert sim.world.generator == generator
        for _ in range(N):
            sim.step()
        states.append(sim.state())
    assert_tree_equal(states[0], states[1])
    a, c = states[0]["agents"], states[2]["agents"]
    assert any(len(a[t]["voxel"]) != len(c[t]["voxel"]) or (a[t]["voxel"] != c[t]["voxel"]).any() for t in a)


def test_philox_run_restarts_bit_identically(tmp_path):
    full = run_simulation(philox_scene(2 * N * DT), tmp_path / "full", progress=False)
    half = run_simulation(philox_scene(N * DT), tmp_path / "half", progress=False)
    cont = replay_run(half.h5_path, N * DT, until_min=2 * N * DT, out_dir=tmp_path / "cont", progress=False)
    with open_run(full.h5_path) as f, open_run(cont.h5_path) as c:
        assert f.attrs["random"] == c.attrs["random"] == "philox"
        assert f.summary()["random"] == "philox"
        assert c.config_dict()["random"] == "philox"
        for t in c.times:
            assert_tree_equal(f.state(t), c.state(t))
