// Paged attention over the fp16 KV cache, one kernel for prefill chunks and decode tokens.
//
// Query token t (of any sequence) attends causally to keys 0..positions[t] of its sequence,
// which lie in the cache blocks of block_tables[token_seq[t]]; the current step's keys were
// stored by rope_qkv_cache_f32 before this runs, so a prefill chunk that follows a
// prefix-cache hit reads the cached blocks like any other. A position < 0 (a padded row)
// attends to nothing and gets zeros.
//
// One block per (token, kv head, split): the G query heads that share a kv head (GQA) are
// computed together, so each key and value is read once for all of them. Lane l of a warp
// holds elements [l * HD / 32, (l + 1) * HD / 32) of every head; each warp walks its own keys
// with an online softmax in base 2 (q is pre-scaled by log2(e) / sqrt(HD)), two keys per
// iteration so that their loads overlap, and the warps' partial states are merged through
// shared memory at the end. For short batches with long contexts the keys are split over
// up to `splits` blocks (as flash-decoding does). A token uses only as many of them as give
// each at least SPLIT_KEYS keys (a short context gets one), so one graph serves every context
// length; blocks beyond that exit at once. With one split in use, the block writes the output
// directly; otherwise each writes an unnormalised partial state, and the last of them to finish
// (counted with an atomic per (token, kv head), which it then resets to 0) merges them all, so
// no separate combine launch is needed. The counters are one int per (token, kv head) in the
// `counters` array, which must be zero before the first launch.
#include "common.cuh"

namespace ember_attention {

constexpr int WARPS = 4;
constexpr int KEYS = 2;  // keys per warp iteration
constexpr int SPLIT_KEYS = 32;  // fewest keys a split takes (4 iterations of the block's warps)

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <int EPL>
__device__ __forceinline__ void load_row(const half* __restrict__ p, float (&out)[EPL]) {
#pragma unroll
    for (int e = 0; e < EPL; e += 2) {
        const float2 v = __half22float2(*reinterpret_cast<const half2*>(p + e));
        out[e] = v.x;
        out[e + 1] = v.y;
    }
}

// Partial state of one (token, kv head, split): per head g, the running max m (base 2), the
// sum l of 2^(s - m), and acc = sum of 2^(s - m) v; stored as [G][HD + 2] = acc..., m, l.
template <int HD>
__device__ __forceinline__ long long partial_offset(long long t, int h, int split, int kv_heads,
                                                    int splits, int G) {
    return ((t * kv_heads + h) * splits + split) * static_cast<long long>(G) * (HD + 2);
}

// Splits in use for a token with n_keys keys: each takes at least SPLIT_KEYS of them.
__device__ __forceinline__ int active_splits(int n_keys, int splits) {
    return max(1, min(splits, (n_keys + SPLIT_KEYS - 1) / SPLIT_KEYS));
}

// Element i (head i / HD, dimension i % HD) of token t, kv head h: the merge of the `used`
// splits' partial states. Other blocks wrote them, so they are read through L2 (__ldcg).
template <int HD, int G>
__device__ __forceinline__ void combine(const float* __restrict__ partials,
                                        float* __restrict__ out, long long t, int h, int i,
                                        int kv_heads, int splits, int used) {
    const int g = i / HD;
    const int d = i % HD;
    const float* p = partials + partial_offset<HD>(t, h, 0, kv_heads, splits, G) + g * (HD + 2);
    const long long stride = static_cast<long long>(G) * (HD + 2);
    float m_all = -INFINITY;
    for (int s = 0; s < used; ++s) m_all = fmaxf(m_all, __ldcg(p + s * stride + HD));
    float l_all = 0.0f, o = 0.0f;
    if (m_all != -INFINITY) {
        for (int s = 0; s < used; ++s) {
            const float m = __ldcg(p + s * stride + HD);
            if (m == -INFINITY) continue;
            const float f = exp2f(m - m_all);
            l_all = fmaf(__ldcg(p + s * stride + HD + 1), f, l_all);
            o = fmaf(__ldcg(p + s * stride + d), f, o);
        }
    }
    out[t * kv_heads * G * HD + (h * G + g) * HD + d] = l_all > 0.0f ? o / l_all : 0.0f;
}

template <int HD, int G>
__device__ __forceinline__ void attend(
    const float* __restrict__ qkv, const half* __restrict__ k_cache,
    const half* __restrict__ v_cache, const int* __restrict__ positions,
    const int* __restrict__ token_seq, const int* __restrict__ block_tables, int table_stride,
    float* __restrict__ out, float* __restrict__ partials, int* __restrict__ counters,
    int kv_heads, int block_shift, float scale_log2) {
    constexpr int EPL = HD / 32;
    static_assert(HD % 64 == 0, "lanes hold an even number of elements");
    __shared__ float s_m[WARPS][G];
    __shared__ float s_l[WARPS][G];
    __shared__ float s_acc[WARPS][G][HD];

    ember::await_prior_grid();
    const long long t = blockIdx.x;
    const int h = blockIdx.y;
    const int split = blockIdx.z;
    const int splits = gridDim.z;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int q_heads = kv_heads * G;
    const long long row = t * static_cast<long long>(q_heads + 2 * kv_heads) * HD;

    const int n_keys = max(positions[t] + 1, 0);
    const int used = active_splits(n_keys, splits);
    if (split >= used) return;
    const int chunk = (n_keys + used - 1) / used;
    const int begin = split * chunk;
    const int end = min(n_keys, begin + chunk);
    const int* table = block_tables + static_cast<long long>(token_seq[t]) * table_stride;
    const int block_mask = (1 << block_shift) - 1;

    float q[G][EPL];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int e = 0; e < EPL; ++e)
            q[g][e] = qkv[row + (h * G + g) * HD + lane * EPL + e] * scale_log2;

    float m[G], l[G], acc[G][EPL];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[g][e] = 0.0f;
    }

    for (int j0 = begin + warp; j0 < end; j0 += WARPS * KEYS) {
        float kv[KEYS][EPL], vv[KEYS][EPL];
        bool valid[KEYS];
#pragma unroll
        for (int u = 0; u < KEYS; ++u) {
            const int j = j0 + u * WARPS;
            valid[u] = j < end;
            if (valid[u]) {
                const long long slot =
                    (static_cast<long long>(table[j >> block_shift]) << block_shift) |
                    (j & block_mask);
                const long long at = (slot * kv_heads + h) * HD + lane * EPL;
                load_row<EPL>(k_cache + at, kv[u]);
                load_row<EPL>(v_cache + at, vv[u]);
            }
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float s[KEYS];
            float m_new = m[g];
#pragma unroll
            for (int u = 0; u < KEYS; ++u) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < EPL; ++e) d = fmaf(q[g][e], valid[u] ? kv[u][e] : 0.0f, d);
                s[u] = valid[u] ? warp_sum(d) : -INFINITY;
                m_new = fmaxf(m_new, s[u]);
            }
            const float c = exp2f(m[g] - m_new);  // m_new is finite: key j0 is valid
            l[g] *= c;
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[g][e] *= c;
#pragma unroll
            for (int u = 0; u < KEYS; ++u) {
                const float p = exp2f(s[u] - m_new);  // 0 for an invalid key
                l[g] += p;
#pragma unroll
                for (int e = 0; e < EPL; ++e) acc[g][e] = fmaf(p, valid[u] ? vv[u][e] : 0.0f, acc[g][e]);
            }
            m[g] = m_new;
        }
    }

#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (lane == 0) {
            s_m[warp][g] = m[g];
            s_l[warp][g] = l[g];
        }
#pragma unroll
        for (int e = 0; e < EPL; ++e) s_acc[warp][g][lane * EPL + e] = acc[g][e];
    }
    __syncthreads();

    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
        const int g = i / HD;
        const int d = i % HD;
        float m_all = -INFINITY;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) m_all = fmaxf(m_all, s_m[w][g]);
        float l_all = 0.0f, o = 0.0f;
        if (m_all != -INFINITY) {
#pragma unroll
            for (int w = 0; w < WARPS; ++w) {
                const float f = exp2f(s_m[w][g] - m_all);
                l_all = fmaf(s_l[w][g], f, l_all);
                o = fmaf(s_acc[w][g][d], f, o);
            }
        }
        if (used == 1) {
            out[t * q_heads * HD + (h * G + g) * HD + d] = l_all > 0.0f ? o / l_all : 0.0f;
        } else {
            float* p = partials + partial_offset<HD>(t, h, split, kv_heads, splits, G) +
                       g * (HD + 2);
            p[d] = o;
            if (d == 0) {
                p[HD] = m_all;
                p[HD + 1] = l_all;
            }
        }
    }
    if (used == 1) return;

    // The last split block of this (token, kv head) to get here merges the partial states.
    __shared__ bool s_last;
    __threadfence();  // this block's partial state is visible device-wide before the count
    __syncthreads();
    int* counter = counters + t * kv_heads + h;
    if (threadIdx.x == 0) s_last = atomicAdd(counter, 1) == used - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x)
        combine<HD, G>(partials, out, t, h, i, kv_heads, splits, used);
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
}

}  // namespace ember_attention

// qkv [T, (kv_heads * G + 2 kv_heads) * HD] float32 (q heads first, rotated); caches
// [num_slots, kv_heads, HD] fp16; positions, token_seq [T]; block_tables [S, table_stride];
// out [T, kv_heads * G * HD]; when splits > 1, partials [T, kv_heads, splits, G, HD + 2] float32
// and counters [T, kv_heads] int32 (zero before the first launch, left zero).
// Grid (T, kv_heads, splits), block 32 * WARPS.
#define EMBER_PAGED_ATTENTION(HD, G)                                                          \
    extern "C" __global__ void __launch_bounds__(32 * ember_attention::WARPS)                 \
        paged_attention_hd##HD##_g##G(                                                        \
            const float* __restrict__ qkv, const half* __restrict__ k_cache,                  \
            const half* __restrict__ v_cache, const int* __restrict__ positions,              \
            const int* __restrict__ token_seq, const int* __restrict__ block_tables,          \
            int table_stride, float* __restrict__ out, float* __restrict__ partials,          \
            int* __restrict__ counters, int kv_heads, int block_shift, float scale_log2) {    \
        ember_attention::attend<HD, G>(qkv, k_cache, v_cache, positions, token_seq,           \
                                       block_tables, table_stride, out, partials, counters,   \
                                       kv_heads, block_shift, scale_log2);                    \
    }

EMBER_PAGED_ATTENTION(64, 1)
EMBER_PAGED_ATTENTION(64, 2)
EMBER_PAGED_ATTENTION(64, 3)
EMBER_PAGED_ATTENTION(64, 4)
EMBER_PAGED_ATTENTION(64, 8)
EMBER_PAGED_ATTENTION(128, 1)
EMBER_PAGED_ATTENTION(128, 2)
EMBER_PAGED_ATTENTION(128, 4)
EMBER_PAGED_ATTENTION(128, 8)
