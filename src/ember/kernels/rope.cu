// Rotary position embeddings, in place on q and k, and the attention prologue of a layer.
//
// Pair i of a head turns by positions[t] * inv_freq[i] radians. The table inv_freq [rot_dim / 2]
// is float64 and made by the host (ember/model/rope.py's `radians_per_position`: the base, Llama
// 3's frequency factors and linear scaling folded in, one owner of the formula); the angle and
// its cos/sin are computed in double, then rounded to float: at positions in the thousands a
// float angle is off by ~1e-3 rad.
//
// Two layouts of the pairs (RopeConfig.style): adjacent (x[2i], x[2i+1]), llama.cpp's "normal"
// RoPE on permuted Llama weights, and NEOX (x[i], x[i + rot_dim/2]) on Qwen's. Thread i of a head
// owns pair i: elements e0(i), e1(i) below; past rot_dim / 2 it owns the unrotated tail's
// elements (2i, 2i+1), so every element of the head has one owner in both layouts.
#include "common.cuh"
#include "interface.cuh"

// A named namespace (see norm.cu: anonymous ones hash the source path into the PTX).
namespace ember_rope {

struct Pair {
    int e0;
    int e1;
    __device__ __forceinline__ Pair(int i, int rot_dim, int neox) {
        const bool halves = neox != 0 && 2 * i < rot_dim;
        e0 = halves ? i : 2 * i;
        e1 = halves ? i + rot_dim / 2 : 2 * i + 1;
    }
};

// cos and sin of pair i's angle at `position` (1, 0 past rot_dim / 2: the unrotated tail).
__device__ __forceinline__ float2 turn(const double* __restrict__ inv_freq, int i, int rot_dim,
                                       int position) {
    if (2 * i >= rot_dim) return make_float2(1.0f, 0.0f);
    double s, c;
    sincos(static_cast<double>(position) * __ldg(inv_freq + i), &s, &c);
    return make_float2(static_cast<float>(c), static_cast<float>(s));
}

__device__ __forceinline__ void rotate(float& v0, float& v1, float2 cs) {
    const float r0 = v0 * cs.x - v1 * cs.y;
    const float r1 = v0 * cs.y + v1 * cs.x;
    v0 = r0;
    v1 = r1;
}

// The prologue's arguments, passed by value (rope.py's RopeQkvArgs mirrors it; pointers first:
// no padding).
struct RopeQkv {
    const int* positions;     // [T]
    const int* slots;         // [T] cache slots; < 0 (a padded row) stores nothing
    half* k_cache;            // [num_slots, n_kv_heads, head_dim]
    half* v_cache;
    const double* inv_freq;   // [rot_dim / 2] radians per position of each pair
    const float* bias;        // [(n_q_heads + 2 n_kv_heads) * head_dim] q|k|v biases, or null
    const float* qk_norm;     // [2][head_dim]: the RMSNorm weight of every q head, then k's; or null
    int n_q_heads;
    int n_kv_heads;
    int head_dim;
    int rot_dim;
    int neox;  // 1: NEOX pairs (x[i], x[i + rot_dim / 2]); 0: adjacent pairs
    float eps;  // of the q/k norm
};

constexpr int MAX_THREADS = 1024;

// Sum of v over the blockDim.x threads of this thread's row (threadIdx.y) of the block, in every
// one of them. blockDim.x is a power of two up to 32 or a multiple of 32 (rope.py checks), so a
// row is whole lane groups of one warp, or whole warps. Every thread of the block must call it.
__device__ __forceinline__ float row_sum(float v) {
    const int width = blockDim.x;
    for (int offset = min(width, 32) / 2; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (width <= 32) return v;
    __shared__ float partial[MAX_THREADS / 32];
    const int tid = threadIdx.y * width + threadIdx.x;
    if ((tid & 31) == 0) partial[tid >> 5] = v;
    __syncthreads();
    const int per_row = width / 32;
    float total = 0.0f;
    for (int w = 0; w < per_row; ++w) total += partial[threadIdx.y * per_row + w];
    __syncthreads();  // `partial` is free for the next call
    return total;
}

}  // namespace ember_rope

EMBER_EXPORT_STRUCT(rope_qkv, ember_rope::RopeQkv, positions, slots, k_cache, v_cache, inv_freq,
                    bias, qk_norm, n_q_heads, n_kv_heads, head_dim, rot_dim, neox, eps)
EMBER_EXPORT_CONST(max_threads, ember_rope::MAX_THREADS)

using ember_rope::Pair;

// q [T, n_q_heads, head_dim], k [T, n_kv_heads, head_dim], positions [T]; the first rot_dim
// elements of each head are rotated, the rest left as they are. Launch grid (T), block
// (head_dim / 2, heads per pass).
extern "C" __global__ void rope_f32(
    float* __restrict__ q, float* __restrict__ k, const int* __restrict__ positions,
    const double* __restrict__ inv_freq, int n_q_heads, int n_kv_heads, int head_dim, int rot_dim,
    int neox) {
    ember::await_prior_grid();
    const long long t = blockIdx.x;
    const int i = threadIdx.x;
    if (2 * i >= rot_dim) return;
    const float2 cs = ember_rope::turn(inv_freq, i, rot_dim, positions[t]);
    const Pair p(i, rot_dim, neox);
    for (int h = threadIdx.y; h < n_q_heads + n_kv_heads; h += blockDim.y) {
        float* head = h < n_q_heads ? q + (t * n_q_heads + h) * head_dim
                                    : k + (t * n_kv_heads + h - n_q_heads) * head_dim;
        float v0 = head[p.e0], v1 = head[p.e1];
        ember_rope::rotate(v0, v1, cs);
        head[p.e0] = v0;
        head[p.e1] = v1;
    }
}
EMBER_EXPORT_PARAMS(rope_f32)

// The attention prologue of one layer, fused, on the projection output qkv [T, (n_q_heads +
// 2 n_kv_heads) * head_dim]: add the biases (Qwen2), RMSNorm each q and k head (Qwen3), rotate
// q and k, in place, then store k and v as fp16 in the paged cache at slots[t]. The order is
// the NumPy backend's (numpy_llama.py). Launch grid (T), block (head_dim / 2, heads per pass):
// thread (i, y) takes pair i of heads y, y + blockDim.y, ... in rounds every thread runs (the
// norm's row sums need the whole block).
extern "C" __global__ void rope_qkv_cache_f32(float* __restrict__ qkv,
                                              const ember_rope::RopeQkv r) {
    ember::await_prior_grid();
    const long long t = blockIdx.x;
    const int i = threadIdx.x;
    const int hd = r.head_dim;
    const int qk_heads = r.n_q_heads + r.n_kv_heads;
    const int heads = qk_heads + r.n_kv_heads;
    float* row = qkv + t * heads * hd;
    const float2 cs = ember_rope::turn(r.inv_freq, i, r.rot_dim, __ldg(r.positions + t));
    const Pair p(i, r.rot_dim, r.neox);
    const long long slot = __ldg(r.slots + t);
    const int rounds = (heads + blockDim.y - 1) / blockDim.y;
    for (int round = 0; round < rounds; ++round) {
        const int h = round * blockDim.y + threadIdx.y;
        const bool here = h < heads;
        float v0 = 0.0f, v1 = 0.0f;
        if (here) {
            v0 = row[h * hd + p.e0];
            v1 = row[h * hd + p.e1];
            if (r.bias != nullptr) {
                v0 += __ldg(r.bias + h * hd + p.e0);
                v1 += __ldg(r.bias + h * hd + p.e1);
            }
        }
        const bool rotated = here && h < qk_heads;
        if (r.qk_norm != nullptr) {  // uniform over the grid: every thread takes the barriers
            const float sum_sq = ember_rope::row_sum(rotated ? v0 * v0 + v1 * v1 : 0.0f);
            if (rotated) {
                const float scale = rsqrtf(sum_sq / static_cast<float>(hd) + r.eps);
                const float* g = r.qk_norm + (h < r.n_q_heads ? 0 : hd);
                v0 = v0 * scale * __ldg(g + p.e0);
                v1 = v1 * scale * __ldg(g + p.e1);
            }
        }
        if (!here) continue;
        if (rotated) ember_rope::rotate(v0, v1, cs);
        row[h * hd + p.e0] = v0;
        row[h * hd + p.e1] = v1;
        if (h >= r.n_q_heads && slot >= 0) {
            const bool is_v = h >= qk_heads;
            half* cache = is_v ? r.v_cache : r.k_cache;
            const long long at = (slot * r.n_kv_heads + (h - r.n_q_heads - (is_v ? r.n_kv_heads : 0))) * hd;
            cache[at + p.e0] = __float2half_rn(v0);
            cache[at + p.e1] = __float2half_rn(v1);
        }
    }
}
EMBER_EXPORT_PARAMS(rope_qkv_cache_f32)
