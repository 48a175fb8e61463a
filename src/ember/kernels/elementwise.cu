// Elementwise kernels: one output element from the elements at the same index of the inputs.
//
// Each thread handles VEC consecutive elements, with one 16-byte load per input and one
// 16-byte store when the pointers allow it: these kernels are bound by memory bandwidth, and
// wide accesses need fewer instructions and transactions for the same bytes.
#include "common.cuh"
#include "interface.cuh"

namespace {

constexpr int VEC = 4;

struct Add {
    __device__ __forceinline__ float operator()(float x, float y) const { return x + y; }
};

template <typename Op>
__device__ __forceinline__ void binary_f32(
    const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out,
    long long n, Op op) {
    const long long i = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
    if (i >= n) return;
    if (i + VEC <= n && ember::aligned16(a, b, out)) {
        const float4 x = *reinterpret_cast<const float4*>(a + i);
        const float4 y = *reinterpret_cast<const float4*>(b + i);
        *reinterpret_cast<float4*>(out + i) =
            make_float4(op(x.x, y.x), op(x.y, y.y), op(x.z, y.z), op(x.w, y.w));
    } else {
        const long long end = i + VEC < n ? i + VEC : n;
        for (long long k = i; k < end; ++k) out[k] = op(a[k], b[k]);
    }
}

}  // namespace

EMBER_EXPORT_CONST(vec, VEC)  // elements a thread takes

// out[i] = a[i] + b[i] for i < n; launch with ceil(n / 4) threads.
extern "C" __global__ void vector_add_f32(
    const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out,
    long long n) {
    ember::await_prior_grid();
    binary_f32(a, b, out, n, Add{});
}
EMBER_EXPORT_PARAMS(vector_add_f32)

// SwiGLU's gate: out[r, j] = silu(gu[r, j]) * gu[r, f + j] for the fused gate/up projection's
// output gu [rows, 2f]. Launch with ceil(rows * f / 4) threads (4 outputs each).
extern "C" __global__ void silu_mul_f32(
    const float* __restrict__ gu, float* __restrict__ out, int f, long long rows) {
    ember::await_prior_grid();
    const long long i = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
    const long long n = rows * f;
    if (i >= n) return;
    const long long end = i + VEC < n ? i + VEC : n;
    for (long long k = i; k < end; ++k) {
        const long long r = k / f;
        const long long j = k - r * f;
        const float g = gu[r * 2 * f + j];
        const float u = gu[r * 2 * f + f + j];
        out[k] = g / (1.0f + expf(-g)) * u;
    }
}
EMBER_EXPORT_PARAMS(silu_mul_f32)

// dst[l, :] = src[index[l], :] for rows of n floats: picks the rows whose logits are needed.
// Grid (L), any block.
extern "C" __global__ void gather_rows_f32(
    const float* __restrict__ src, const int* __restrict__ index, float* __restrict__ dst,
    int n) {
    ember::await_prior_grid();
    const long long l = blockIdx.x;
    const float* row = src + static_cast<long long>(index[l]) * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[l * n + i] = row[i];
}
EMBER_EXPORT_PARAMS(gather_rows_f32)
