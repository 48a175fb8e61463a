// RMSNorm, optionally fused with the residual add that precedes it in every Llama layer.
//
// One block per row: rows are a few thousand floats, so one block reads its row once into
// registers-through-L1, reduces the sum of squares in shared memory, and writes the scaled row.
// The fused form saves a separate add kernel and one round trip of the hidden state.
#include "common.cuh"
#include "interface.cuh"

// A named namespace, not an anonymous one: internal-linkage names embed a hash of the source
// path, which would make the PTX differ between checkouts and fail the artifact check.
namespace ember_norm {

constexpr int MAX_WARPS = 32;

// Sum of `v` over the block; every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[MAX_WARPS];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? partial[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// With a residual: h = x + residual; residual = h; out = rmsnorm(h) * w. Without: h = x.
// Row `row` of x (and residual) to row blockIdx.x of out.
template <bool RESIDUAL>
__device__ __forceinline__ void rms_norm_row(
    const float* __restrict__ x, float* __restrict__ residual, const float* __restrict__ w,
    float* __restrict__ out, int n, float eps, long long row) {
    x += row * n;
    out += static_cast<long long>(blockIdx.x) * n;
    if (RESIDUAL) residual += row * n;
    const bool vec = (n & 3) == 0 && ember::aligned16(x, w, out, RESIDUAL ? residual : out);
    float sum_sq = 0.0f;
    // Pass 1 writes h to the residual (or reads x); pass 2 re-reads the same addresses from the
    // same thread, so no barrier is needed between the write and the read.
    if (vec) {
        for (int i = threadIdx.x * 4; i < n; i += blockDim.x * 4) {
            float4 h = *reinterpret_cast<const float4*>(x + i);
            if (RESIDUAL) {
                const float4 r = *reinterpret_cast<const float4*>(residual + i);
                h = make_float4(h.x + r.x, h.y + r.y, h.z + r.z, h.w + r.w);
                *reinterpret_cast<float4*>(residual + i) = h;
            }
            sum_sq += h.x * h.x + h.y * h.y + h.z * h.z + h.w * h.w;
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float h = x[i];
            if (RESIDUAL) {
                h += residual[i];
                residual[i] = h;
            }
            sum_sq += h * h;
        }
    }
    const float scale = rsqrtf(block_sum(sum_sq) / static_cast<float>(n) + eps);
    const float* h_src = RESIDUAL ? residual : x;
    if (vec) {
        for (int i = threadIdx.x * 4; i < n; i += blockDim.x * 4) {
            const float4 h = *reinterpret_cast<const float4*>(h_src + i);
            const float4 g = *reinterpret_cast<const float4*>(w + i);
            *reinterpret_cast<float4*>(out + i) = make_float4(
                h.x * scale * g.x, h.y * scale * g.y, h.z * scale * g.z, h.w * scale * g.w);
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = h_src[i] * scale * w[i];
    }
}

}  // namespace ember_norm

EMBER_EXPORT_CONST(max_threads, 32 * ember_norm::MAX_WARPS)  // a row's block, at most

using ember_norm::rms_norm_row;

// out[r] = rmsnorm(x[r]) * w for each row r of x [rows, n]; launch one block per row.
extern "C" __global__ void rms_norm_f32(
    const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out, int n,
    float eps) {
    ember::await_prior_grid();
    rms_norm_row<false>(x, nullptr, w, out, n, eps, blockIdx.x);
}
EMBER_EXPORT_PARAMS(rms_norm_f32)

// residual[r] += x[r]; out[r] = rmsnorm(residual[r]) * w; launch one block per row.
extern "C" __global__ void add_rms_norm_f32(
    const float* __restrict__ x, float* __restrict__ residual, const float* __restrict__ w,
    float* __restrict__ out, int n, float eps) {
    ember::await_prior_grid();
    rms_norm_row<true>(x, residual, w, out, n, eps, blockIdx.x);
}
EMBER_EXPORT_PARAMS(add_rms_norm_f32)

// out[l] = rmsnorm(x[index[l]]) * w: the rows whose logits are wanted, normed for the LM head.
// Launch one block per output row.
extern "C" __global__ void gather_rms_norm_f32(
    const float* __restrict__ x, const int* __restrict__ index, const float* __restrict__ w,
    float* __restrict__ out, int n, float eps) {
    ember::await_prior_grid();
    rms_norm_row<false>(x, nullptr, w, out, n, eps, index[blockIdx.x]);
}
EMBER_EXPORT_PARAMS(gather_rms_norm_f32)
