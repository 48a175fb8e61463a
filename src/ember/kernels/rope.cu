// Rotary position embeddings, in place on q and k, rotating adjacent pairs (x[2i], x[2i+1]) as
// GGUF Llama weights expect (see ember/model/rope.py).
//
// One block per token: thread (i, y) computes the angle of pair i once and applies it to every
// head y, y + blockDim.y, ... of q and then k. The angle pos / linear_factor * base^(-2i/rot_dim)
// and its cos/sin are computed in double, then rounded to float: at positions in the thousands
// a float angle is off by ~1e-3 rad, and the cost is one sincos per pair per token, not per
// head.
#include "common.cuh"

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
