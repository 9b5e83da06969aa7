/* One backward-Euler LOD solve along one lattice line: the Thomas algorithm for
 *
 *     a_i x_{i-1} + (b_i + sigma_i) x_i + c_i x_{i+1} = d_i,   i = 0 .. n-1,
 *
 * the per-line form of the plane-by-plane sweeps of kernels/diffusion.py (see that module for the scheme).
 * Written in C99 so that the same text compiles as CUDA device code (NVCC or NVRTC) and as plain host C:
 * TME_HD is __device__ under a CUDA compiler and empty otherwise.
 *
 * This header is included once per floating type. The includer defines
 *     TME_REAL      float or double
 *     TME_NAME(x)   the name x with a type suffix, e.g. x##_f32
 *
 * Lattice layout: a C-contiguous array. The line along an axis of length n whose elements lie `stride` apart
 * (stride = product of the later axis lengths) and whose number among all size / n lines is `line` starts at
 *     base = (line / stride) * n * stride + line % stride,
 * so consecutive line numbers are consecutive addresses (coalesced on a GPU) for every axis but the last.
 *
 * Coefficients (dimensionless; w = D_face dt / dx^2, the scaled face conductance):
 *   table  (uniform D) 5 rows of n entries: a_i, b_i, c_i, then the precomputed factorisation with the uniform
 *          decay share folded in: m_i = a_i / p_{i-1} (m_0 unused) and 1 / p_i. a_0 = -w_low, c_{n-1} = -w_high.
 *   faces  (varying D) the n + 1 face conductances of each line, stored like a lattice whose swept axis has
 *          n + 1 entries: face k lies between voxels k - 1 and k; faces 0 and n are the lattice faces (0 for a
 *          no-flux face). Then a_i = -w_i, c_i = -w_{i+1}, b_i = 1 + w_i + w_{i+1}.
 * Exactly one of table and faces is given.
 *
 * Right-hand side: d_i = input_i (+ w_low * boundary_low at i = 0) (+ w_high * boundary_high at i = n - 1)
 * (+ source_i). The diagonal share sigma_i is sink_i when a sink is given, else decay_share. With table and no
 * sink the precomputed factorisation is used (decay_share is then already inside it); otherwise the pivots are
 * formed here and c'_i = c_i / p_i kept in cprime for the back substitution. output may be input (in place);
 * with blend given, the value written is (x_i + blend_i) / 2 (the mean of two sweep orders).
 */

#ifndef TME_HD
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define TME_HD __device__
#else
#define TME_HD
#endif
#endif

TME_HD static inline void TME_NAME(tme_lod_line)(
    const TME_REAL *input, TME_REAL *output, const TME_REAL *blend, const TME_REAL *sink,
    const TME_REAL *source, TME_REAL *cprime, const TME_REAL *table, const TME_REAL *faces,
    TME_REAL decay_share, TME_REAL boundary_low, TME_REAL boundary_high,
    long long n, long long stride, long long line)
{
    const long long outer = line / stride, inner = line - outer * stride;
    const long long base = outer * n * stride + inner;
    const long long fbase = outer * (n + 1) * stride + inner; /* the line in faces */
    const long long last = base + (n - 1) * stride;
    const TME_REAL w_low = table ? -table[0] : faces[fbase];
    const TME_REAL w_high = table ? -table[3 * n - 1] : faces[fbase + n * stride];
    const TME_REAL half = (TME_REAL)0.5;
    TME_REAL prev = 0, cprev = 0, x;
    long long i, p;

    if (table && !sink) {
        /* Precomputed factorisation. Forward: e_i = d_i - m_i e_{i-1}. */
        const TME_REAL *upper = table + 2 * n, *forward = table + 3 * n, *inv_pivot = table + 4 * n;
        for (i = 0, p = base; i < n; ++i, p += stride) {
            TME_REAL d = input[p];
            if (i == 0) d += w_low * boundary_low;
            if (i == n - 1) d += w_high * boundary_high;
            if (source) d += source[p];
            if (i > 0) d -= forward[i] * prev;
            output[p] = d;
            prev = d;
        }
        /* Back substitution: x_{n-1} = e_{n-1} / p_{n-1}; x_i = (e_i - c_i x_{i+1}) / p_i. */
        x = output[last] * inv_pivot[n - 1];
        output[last] = blend ? half * (x + blend[last]) : x;
        for (i = n - 2, p = last - stride; i >= 0; --i, p -= stride) {
            x = (output[p] - upper[i] * x) * inv_pivot[i];
            output[p] = blend ? half * (x + blend[p]) : x;
        }
        return;
    }
    /* Pivots formed here: p_i = (sigma_i - a_i c'_{i-1}) + b_i, d'_i = (d_i - a_i d'_{i-1}) / p_i. */
    for (i = 0, p = base; i < n; ++i, p += stride) {
        TME_REAL a, b, c, pivot, inv, d;
        const TME_REAL sigma = sink ? sink[p] : decay_share;
        if (table) {
            a = table[i];
            b = table[n + i];
            c = table[2 * n + i];
        } else {
            const TME_REAL w_left = faces[fbase + i * stride], w_right = faces[fbase + (i + 1) * stride];
            a = -w_left;
            c = -w_right;
            b = (TME_REAL)1 + (w_left + w_right);
        }
        pivot = i == 0 ? sigma + b : (sigma - cprev * a) + b;
        inv = (TME_REAL)1 / pivot;
        cprev = c * inv;
        cprime[p] = cprev;
        d = input[p];
        if (i == 0) d += w_low * boundary_low;
        if (i == n - 1) d += w_high * boundary_high;
        if (source) d += source[p];
        d = i == 0 ? d * inv : (d - a * prev) * inv;
        output[p] = d;
        prev = d;
    }
    /* Back substitution: x_{n-1} = d'_{n-1}; x_i = d'_i - c'_i x_{i+1}. */
    x = output[last];
    if (blend) output[last] = half * (x + blend[last]);
    for (i = n - 2, p = last - stride; i >= 0; --i, p -= stride) {
        x = output[p] - cprime[p] * x;
        output[p] = blend ? half * (x + blend[p]) : x;
    }
}
