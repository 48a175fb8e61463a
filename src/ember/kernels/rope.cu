// Rotary position embeddings, in place on q and k, rotating adjacent pairs (x[2i], x[2i+1]) as
// GGUF Llama weights expect (see ember/model/rope.py).
//
// One block per token: thread (i, y) computes the angle of pair i once and applies it to every
// head y, y + blockDim.y, ... of q and then k. The angle pos / linear_factor * base^(-2i/rot_dim)
// and its cos/sin are computed in double, then rounded to float: at positions in the thousands
// a float angle is off by ~1e-3 rad, and the cost is one sincos per pair per token, not per
// head.
#include "common.cuh"
#include "interface.cuh"

namespace {

__device__ __forceinline__ void rotate(float* __restrict__ pair, float c, float s) {
    const float2 v = *reinterpret_cast<const float2*>(pair);
    *reinterpret_cast<float2*>(pair) = make_float2(v.x * c - v.y * s, v.x * s + v.y * c);
}

}  // namespace

// q [T, n_q_heads, head_dim], k [T, n_kv_heads, head_dim], positions [T]; the first rot_dim
// elements of each head are rotated, the rest left as they are. Launch grid (T), block
// (rot_dim / 2, heads per pass).
extern "C" __global__ void rope_f32(
    float* __restrict__ q, float* __restrict__ k, const int* __restrict__ positions,
    int n_q_heads, int n_kv_heads, int head_dim, int rot_dim, float base, float linear_factor) {
    ember::await_prior_grid();
    const long long t = blockIdx.x;
    const int i = threadIdx.x;
    if (2 * i >= rot_dim) return;
    const double inv_freq = pow(static_cast<double>(base), -2.0 * i / rot_dim);
    const double angle = static_cast<double>(positions[t]) / linear_factor * inv_freq;
    double s, c;
    sincos(angle, &s, &c);
    const float cf = static_cast<float>(c);
    const float sf = static_cast<float>(s);
    for (int h = threadIdx.y; h < n_q_heads; h += blockDim.y)
        rotate(q + (t * n_q_heads + h) * head_dim + 2 * i, cf, sf);
    for (int h = threadIdx.y; h < n_kv_heads; h += blockDim.y)
        rotate(k + (t * n_kv_heads + h) * head_dim + 2 * i, cf, sf);
}
EMBER_EXPORT_PARAMS(rope_f32)

// The attention prologue of one layer, fused: rotate the q and k heads of the fused projection
// output qkv [T, (n_q_heads + 2 n_kv_heads) * head_dim] in place, then store k and v as fp16
// in the paged cache at slots[t] (k_cache, v_cache [num_slots, n_kv_heads, head_dim]); a slot
// < 0 (a padded row) stores nothing. Launch grid (T), block (head_dim / 2, heads per pass).
extern "C" __global__ void rope_qkv_cache_f32(
    float* __restrict__ qkv, const int* __restrict__ positions, const int* __restrict__ slots,
    half* __restrict__ k_cache, half* __restrict__ v_cache, int n_q_heads, int n_kv_heads,
    int head_dim, int rot_dim, float base, float linear_factor) {
    ember::await_prior_grid();
    const long long t = blockIdx.x;
    const int i = threadIdx.x;
    if (2 * i >= head_dim) return;
    float* q = qkv + t * (n_q_heads + 2 * n_kv_heads) * head_dim;
    float* k = q + n_q_heads * head_dim;
    const float* v = k + n_kv_heads * head_dim;
    float cf = 1.0f, sf = 0.0f;
    if (2 * i < rot_dim) {
        const double inv_freq = pow(static_cast<double>(base), -2.0 * i / rot_dim);
        const double angle = static_cast<double>(positions[t]) / linear_factor * inv_freq;
        double s, c;
        sincos(angle, &s, &c);
        cf = static_cast<float>(c);
        sf = static_cast<float>(s);
    }
    for (int h = threadIdx.y; h < n_q_heads; h += blockDim.y)
        rotate(q + h * head_dim + 2 * i, cf, sf);
    const long long slot = slots[t];
    for (int h = threadIdx.y; h < n_kv_heads; h += blockDim.y) {
        float* kp = k + h * head_dim + 2 * i;
        rotate(kp, cf, sf);
        if (slot >= 0) {
            const long long at = (slot * n_kv_heads + h) * head_dim + 2 * i;
            *reinterpret_cast<half2*>(k_cache + at) = __floats2half2_rn(kp[0], kp[1]);
            *reinterpret_cast<half2*>(v_cache + at) =
                __floats2half2_rn(v[h * head_dim + 2 * i], v[h * head_dim + 2 * i + 1]);
        }
    }
}
EMBER_EXPORT_PARAMS(rope_qkv_cache_f32)
