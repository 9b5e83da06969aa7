"""Philox4x64-10: counter-based random bits, and their conversion to uniforms and normals.

Philox (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3", SC'11; the Random123 library) is a
keyed bijection of a 256-bit counter: block ``Philox(key, counter)`` is four 64-bit words, computed from the key
and the counter alone. Any block can therefore be drawn in any order, on any device, with no generator state.
The variant here is the one NumPy implements as :class:`numpy.random.Philox`, with its conventions:

- ``key`` is two 64-bit words and ``counter`` four, word 0 first (the least significant word of the integer);
- NumPy adds one to the counter *before* each block, so ``Philox(key=K, counter=C).random_raw(n)`` is the blocks
  at counters ``C + 1, C + 2, ...`` (carried across the four words), each block's words in order 0..3.

:func:`philox_raw` reproduces ``random_raw`` with array operations only (64-bit products split into 32-bit
halves), so it runs unchanged on NumPy and CuPy; :func:`philox_raw_cuda` computes the same words with one CUDA
thread per block (``__umul64hi``) for speed on the GPU.

The conversions are written once with array operations and give the same results on both backends:

- float64 uniforms take the top 53 bits of a word, ``(x >> 11) * 2**-53``, in [0, 1);
- float32 uniforms take the top 24 bits of each 32-bit half, low half first, ``(h >> 8) * 2**-24``, in [0, 1);
- standard normals use the Box–Muller transform on pairs of float64 uniforms.

These are exactly NumPy's ``Generator.random`` on a Philox bit generator (float64 and float32), so uniforms are
bit-identical on CPU and GPU. Normals involve ``log``, ``cos`` and ``sin``, whose results differ between the C
library and CUDA's by up to a few units in the last place; normals therefore agree across CPU and GPU only to
that precision (and are not NumPy's ziggurat ``standard_normal``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from kernels._xp import array_namespace

__all__ = [
    "PHILOX_CUDA_BODY",
    "normal_words",
    "philox_raw",
    "philox_raw_cuda",
    "standard_normal",
    "uniform",
    "uniform_words",
]

ROUNDS = 10
_MULTIPLIERS = (0xD2E7470EE14C6C93, 0xCA5A826395121157)  # PHILOX_M4x64_0, _1 (Random123)
_WEYL = (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)  # key increments between rounds (golden ratio, sqrt(3) - 1)
_MASK64 = (1 << 64) - 1
_LOW32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def _words(values, n: int, what: str) -> tuple[int, ...]:
    words = tuple(int(v) for v in values)
    if len(words) != n or not all(0 <= w <= _MASK64 for w in words):
        raise ValueError(f"Philox {what} must be {n} words in [0, 2**64), got {values!r}")
    return words


def _mulhilo(multiplier: int, x):
    """Low and high 64-bit words of the 128-bit product ``multiplier * x`` (``x`` a uint64 array)."""
    m_lo, m_hi = np.uint64(multiplier & 0xFFFFFFFF), np.uint64(multiplier >> 32)
    x_lo, x_hi = x & _LOW32, x >> _32
    lo_lo = x_lo * m_lo  # the array first, so CuPy arrays keep their own operators
    hi_lo = x_lo * m_hi
    cross = (lo_lo >> _32) + (hi_lo & _LOW32) + x_hi * m_lo  # < 2**64: no wrap-around
    high = x_hi * m_hi + (hi_lo >> _32) + (cross >> _32)
    low = (cross << _32) | (lo_lo & _LOW32)
    return low, high


def _block_counters(counter, n_blocks: int, xp):
    """The four counter words of blocks ``counter + 1 .. counter + n_blocks``, each a uint64 array."""
    c0, c1, c2, c3 = (np.uint64(c) for c in counter)
    offset = xp.arange(1, n_blocks + 1, dtype=np.uint64)
    x0 = offset + c0
    carry = (x0 < offset).astype(np.uint64)
    x1 = carry + c1
    carry &= (x1 == 0).astype(np.uint64)
    x2 = carry + c2
    carry &= (x2 == 0).astype(np.uint64)
    return x0, x1, x2, carry + c3


def philox_raw(key, counter, n_words: int, xp):
    """``numpy.random.Philox(key=key, counter=counter).random_raw(n_words)``, with array operations only.

    Parameters
    ----------
    key : sequence of 2 int
        Key words, word 0 first, each in ``[0, 2**64)``.
    counter : sequence of 4 int
        Counter words before the first block, word 0 first; block ``b`` (from 0) uses ``counter + b + 1``.
    n_words : int
        Number of 64-bit words to return (blocks of four, the last one cut).
    xp : module
        ``numpy`` or ``cupy``: where the words are computed.

    Returns
    -------
    uint64 array, shape ``(n_words,)``
    """
    k0, k1 = _words(key, 2, "key")
    counter = _words(counter, 4, "counter")
    n_blocks = -(-int(n_words) // 4)
    x0, x1, x2, x3 = _block_counters(counter, n_blocks, xp)
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + _WEYL[0]) & _MASK64, (k1 + _WEYL[1]) & _MASK64
        lo0, hi0 = _mulhilo(_MULTIPLIERS[0], x0)
        lo1, hi1 = _mulhilo(_MULTIPLIERS[1], x2)
        x0, x1, x2, x3 = hi1 ^ x1 ^ np.uint64(k0), lo1, hi0 ^ x3 ^ np.uint64(k1), lo0
    return xp.stack([x0, x1, x2, x3], axis=1).reshape(-1)[: int(n_words)]


#: Body of the CuPy ElementwiseKernel of :func:`philox_raw_cuda`: thread ``i`` writes block ``i``'s four words.
PHILOX_CUDA_BODY = r"""
unsigned long long k0 = key0, k1 = key1;
const unsigned long long b = (unsigned long long)i + 1ULL;  // NumPy advances the counter before each block
unsigned long long x0 = ctr0 + b;
unsigned long long carry = (x0 < b) ? 1ULL : 0ULL;
unsigned long long x1 = ctr1 + carry;
carry = (carry != 0ULL && x1 == 0ULL) ? 1ULL : 0ULL;
unsigned long long x2 = ctr2 + carry;
carry = (carry != 0ULL && x2 == 0ULL) ? 1ULL : 0ULL;
unsigned long long x3 = ctr3 + carry;
#pragma unroll
for (int r = 0; r < 10; ++r) {
    if (r > 0) {
        k0 += 0x9E3779B97F4A7C15ULL;
        k1 += 0xBB67AE8584CAA73BULL;
    }
    const unsigned long long lo0 = 0xD2E7470EE14C6C93ULL * x0;
    const unsigned long long hi0 = __umul64hi(0xD2E7470EE14C6C93ULL, x0);
    const unsigned long long lo1 = 0xCA5A826395121157ULL * x2;
    const unsigned long long hi1 = __umul64hi(0xCA5A826395121157ULL, x2);
    x0 = hi1 ^ x1 ^ k0;
    x1 = lo1;
    x2 = hi0 ^ x3 ^ k1;
    x3 = lo0;
}
const ptrdiff_t w = 4 * (ptrdiff_t)i;  // 64-bit even where CuPy indexes the loop with 32-bit ints
out[w] = x0;
out[w + 1] = x1;
out[w + 2] = x2;
out[w + 3] = x3;
"""


@functools.cache
def _cuda_kernel():
    import cupy

    return cupy.ElementwiseKernel(
        "uint64 key0, uint64 key1, uint64 ctr0, uint64 ctr1, uint64 ctr2, uint64 ctr3",
        "raw uint64 out",
        PHILOX_CUDA_BODY,
        "philox4x64_10",
    )


def philox_raw_cuda(key, counter, n_words: int):
    """The words of :func:`philox_raw` on the GPU, one CUDA thread per block (needs CuPy).

    Parameters and result as :func:`philox_raw` (a CuPy array).
    """
    import cupy

    key = _words(key, 2, "key")
    counter = _words(counter, 4, "counter")
    n_blocks = -(-int(n_words) // 4)
    out = cupy.empty(4 * n_blocks, dtype=np.uint64)
    if n_blocks:
        _cuda_kernel()(*(np.uint64(w) for w in key + counter), out, size=n_blocks)
    return out[: int(n_words)]


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"random numbers come as float32 or float64, not {dtype}")
    return dtype


def uniform_words(n: int, dtype=np.float64) -> int:
    """64-bit words :func:`uniform` takes for ``n`` numbers: one per float64, one per two float32."""
    return int(n) if _float_dtype(dtype) == np.float64 else -(-int(n) // 2)


def uniform(bits, n: int, dtype=np.float64):
    """``n`` uniform numbers in [0, 1) from the first :func:`uniform_words` words of ``bits``.

    float64: ``(x >> 11) * 2**-53`` per word. float32: ``(h >> 8) * 2**-24`` for each 32-bit half ``h`` of a
    word, low half first. Both are exact (no rounding), and equal NumPy's ``Generator.random`` on the same words.

    Parameters
    ----------
    bits : uint64 array, shape ``(k,)``
        Random words, ``k >= uniform_words(n, dtype)``.
    n : int
        How many numbers.
    dtype : float32 or float64

    Returns
    -------
    array of ``dtype``, shape ``(n,)``
    """
    xp = array_namespace(bits)
    dtype = _float_dtype(dtype)
    words = bits[: uniform_words(n, dtype)]
    if dtype == np.float64:
        return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    halves = xp.stack([words & _LOW32, words >> _32], axis=1).reshape(-1)[: int(n)]
    return (halves >> np.uint64(8)).astype(np.float32) * np.float32(2.0**-24)


def normal_words(n: int) -> int:
    """64-bit words :func:`standard_normal` takes for ``n`` numbers: two per pair of normals."""
    return 2 * (-(-int(n) // 2))


def standard_normal(bits, n: int, dtype=np.float64):
    """``n`` standard normal numbers by the Box–Muller transform of float64 uniforms from ``bits``.

    Words ``2j`` and ``2j + 1`` give ``u1 = 1 - U`` in (0, 1] and ``u2 = U`` in [0, 1) (``U`` as in
    :func:`uniform`), and the normals ``2j`` and ``2j + 1`` are ``r cos(2π u2)`` and ``r sin(2π u2)`` with
    ``r = sqrt(-2 ln u1)`` (Box & Muller 1958, Ann. Math. Stat. 29:610). Computed in float64 and then cast to
    ``dtype``. The result agrees between NumPy and CuPy to the last-place accuracy of their ``log``, ``cos``
    and ``sin``, not bit for bit.

    Parameters
    ----------
    bits : uint64 array, shape ``(k,)``
        Random words, ``k >= normal_words(n)``.
    n : int
        How many numbers.
    dtype : float32 or float64

    Returns
    -------
    array of ``dtype``, shape ``(n,)``
    """
    xp = array_namespace(bits)
    dtype = _float_dtype(dtype)
    u = uniform(bits[: normal_words(n)], normal_words(n), np.float64)
    radius = xp.sqrt(-2.0 * xp.log(1.0 - u[0::2]))
    angle = (2.0 * math.pi) * u[1::2]
    pairs = xp.stack([radius * xp.cos(angle), radius * xp.sin(angle)], axis=1)
    return pairs.reshape(-1)[: int(n)].astype(dtype, copy=False)
