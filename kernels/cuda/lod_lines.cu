/* Entry points of the one-thread-per-line LOD solve (kernels/cuda/lod_lines.cuh), float and double.
 *
 * Under a CUDA compiler (NVCC, or NVRTC through cupy.RawModule) each entry is a __global__ kernel with one thread
 * per lattice line: launch at least `lines` threads in a 1-D grid. Under a plain C compiler the same entries are
 * host functions that loop over all lines, which lets the kernel's arithmetic be checked on a CPU.
 *
 * Arguments (all arrays C-contiguous, of the field's type): see lod_lines.cuh. n is the length of the swept
 * axis, stride the product of the later axis lengths, lines = lattice size / n.
 */

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define TME_LINES_ENTRY extern "C" __global__ void
#define TME_FOR_EACH_LINE(line, lines) \
    const long long line = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
    if (line < lines)
#else
#define TME_LINES_ENTRY void
#define TME_FOR_EACH_LINE(line, lines) for (long long line = 0; line < lines; ++line)
#endif

#define TME_REAL float
#define TME_NAME(x) x##_f32
#include "lod_lines.cuh"
#undef TME_REAL
#undef TME_NAME

#define TME_REAL double
#define TME_NAME(x) x##_f64
#include "lod_lines.cuh"
#undef TME_REAL
#undef TME_NAME

#define TME_LINES_DEFINE(REAL, SUFFIX) \
    TME_LINES_ENTRY tme_lod_lines_##SUFFIX( \
        const REAL *input, REAL *output, const REAL *blend, const REAL *sink, const REAL *source, \
        REAL *cprime, const REAL *table, const REAL *faces, REAL decay_share, REAL boundary_low, \
        REAL boundary_high, long long n, long long stride, long long lines) \
    { \
        TME_FOR_EACH_LINE(line, lines) \
        tme_lod_line_##SUFFIX(input, output, blend, sink, source, cprime, table, faces, decay_share, \
                              boundary_low, boundary_high, n, stride, line); \
    }

TME_LINES_DEFINE(float, f32)
TME_LINES_DEFINE(double, f64)
