// Paged attention over the fp16 KV cache, one kernel for prefill chunks and decode tokens.
//
// Query token t (of any sequence) attends causally to keys 0..positions[t] of its sequence
// (with a sliding window W > 0, Mistral's local attention: only the last W of them, keys
// positions[t] - W + 1..positions[t]), which lie in the cache blocks of block_tables[token_seq[t]]; the current step's keys were
// stored by rope_qkv_cache_f32 before this runs, so a prefill chunk that follows a
// prefix-cache hit reads the cached blocks like any other. A position < 0 (a padded row)
// attends to nothing and gets zeros.
//
// One block per (token, kv head, split): the G query heads that share a kv head (GQA) are
// computed together, so each key and value is read once for all of them. The keys go in tiles
// of THREADS, in two phases that each issue all of a tile's loads at once (a decode step is
// bound by load latency, not bandwidth: a loop of dependent loads per warp cost ~12 us a layer
// at 200 keys on an H100, 55 % of a batch-1 step):
//   scores: thread j takes key j of the tile whole (its K row as 16-byte loads) and its dot
//     products with the G query heads (q in shared memory, pre-scaled by log2(e) / sqrt(HD));
//     block reductions give the tile's max and sum per head (online softmax in base 2);
//   values: each thread owns two dimensions and every KG-th key of the tile, accumulating
//     p * v for the G heads (a warp reads whole V rows, coalesced); the KG partial sums meet
//     in shared memory at the end.
// For short batches with long contexts the keys are split over up to `splits` blocks (as
// flash-decoding does). A token uses only as many of them as give each at least SPLIT_KEYS
// keys (a short context gets one), so one graph serves every context length; blocks beyond
// that exit at once. With one split in use, the block writes the output directly; otherwise
// each writes an unnormalised partial state, and the last of them to finish (counted with an
// atomic per (token, kv head), which it then resets to 0) merges them all, so no separate
// combine launch is needed. The counters are one int per (token, kv head) in the `counters`
// array, which must be zero before the first launch.
#include "common.cuh"
#include "interface.cuh"

namespace ember_attention {

constexpr int WARPS = 8;
constexpr int THREADS = 32 * WARPS;  // also the keys of a tile
constexpr int SPLIT_KEYS = 256;  // fewest keys a split takes (one tile)

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// v[g] becomes the max (or sum) of v[g] over the block's threads, in every thread. `scratch`
// is free again when this returns.
template <int G, bool MAX>
__device__ __forceinline__ void block_reduce(float (&v)[G], float (&scratch)[G][WARPS]) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int g = 0; g < G; ++g) {
        v[g] = MAX ? warp_max(v[g]) : warp_sum(v[g]);
        if (lane == 0) scratch[g][warp] = v[g];
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
        float r = scratch[g][0];
#pragma unroll
        for (int w = 1; w < WARPS; ++w) r = MAX ? fmaxf(r, scratch[g][w]) : r + scratch[g][w];
        v[g] = r;
    }
    __syncthreads();
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
    int kv_heads, int block_shift, float scale_log2, int window) {
    static_assert(HD % 8 == 0 && THREADS % (HD / 2) == 0, "a thread's value dims: a half2");
    constexpr int PAIRS = HD / 2;  // threads per key in the value phase, two dims each
    constexpr int KG = THREADS / PAIRS;  // keys of a tile taken at once in the value phase
    __shared__ float s_q[G][HD];
    __shared__ float s_p[G][THREADS];  // a tile's probabilities
    __shared__ long long s_row[THREADS];  // where a tile key's K and V rows start
    __shared__ float s_scratch[G][WARPS];
    __shared__ float2 s_acc[KG][G][PAIRS];

    ember::await_prior_grid();
    const long long t = blockIdx.x;
    const int h = blockIdx.y;
    const int split = blockIdx.z;
    const int splits = gridDim.z;
    const int tid = threadIdx.x;
    const int q_heads = kv_heads * G;
    const long long row = t * static_cast<long long>(q_heads + 2 * kv_heads) * HD;

    const int last = max(positions[t] + 1, 0);  // one past the token's own key
    const int first = window > 0 ? max(last - window, 0) : 0;
    const int n_keys = last - first;
    const int used = active_splits(n_keys, splits);
    if (split >= used) return;
    const int chunk = (n_keys + used - 1) / used;
    const int begin = first + split * chunk;
    const int end = min(last, begin + chunk);
    const int* table = block_tables + static_cast<long long>(token_seq[t]) * table_stride;
    const int block_mask = (1 << block_shift) - 1;


    const int pair = tid % PAIRS;
    const int kg = tid / PAIRS;
    float m[G], l[G];
    float2 acc[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
        acc[g] = make_float2(0.0f, 0.0f);
    }

    for (int base = begin; base < end; base += THREADS) {
        const int n = min(THREADS, end - base);
        // Scores: this thread's key, whole. Its K row's loads go out before q's (the first
        // tile's), so the two wait together.
        float s[G];
#pragma unroll
        for (int g = 0; g < G; ++g) s[g] = -INFINITY;
        const bool has_key = tid < n;
        uint4 k[HD / 8];
        if (has_key) {
            const int j = base + tid;
            const long long slot =
                (static_cast<long long>(table[j >> block_shift]) << block_shift) | (j & block_mask);
            const long long at = (slot * kv_heads + h) * HD;
            s_row[tid] = at;
            const uint4* k_row = reinterpret_cast<const uint4*>(k_cache + at);
#pragma unroll
            for (int c = 0; c < HD / 8; ++c) k[c] = k_row[c];
        }
        if (base == begin) {
            for (int i = tid; i < G * HD; i += THREADS)
                s_q[i / HD][i % HD] = qkv[row + h * G * HD + i] * scale_log2;
            __syncthreads();
        }
        if (has_key) {
#pragma unroll
            for (int g = 0; g < G; ++g) s[g] = 0.0f;
#pragma unroll
            for (int c = 0; c < HD / 8; ++c) {
                const half2* k2 = reinterpret_cast<const half2*>(&k[c]);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 kf = __half22float2(k2[e]);
#pragma unroll
                    for (int g = 0; g < G; ++g) {
                        s[g] = fmaf(s_q[g][c * 8 + 2 * e], kf.x, s[g]);
                        s[g] = fmaf(s_q[g][c * 8 + 2 * e + 1], kf.y, s[g]);
                    }
                }
            }
        }
        float tile_max[G];
#pragma unroll
        for (int g = 0; g < G; ++g) tile_max[g] = s[g];
        block_reduce<G, true>(tile_max, s_scratch);
        float p_sum[G];
#pragma unroll
        for (int g = 0; g < G; ++g) {
            const float m_new = fmaxf(m[g], tile_max[g]);  // finite: the tile has a key
            const float c = exp2f(m[g] - m_new);
            l[g] *= c;
            acc[g].x *= c;
            acc[g].y *= c;
            m[g] = m_new;
            p_sum[g] = exp2f(s[g] - m_new);  // 0 for a thread without a key
            s_p[g][tid] = p_sum[g];
        }
        block_reduce<G, false>(p_sum, s_scratch);  // its barriers also publish s_p, s_row
#pragma unroll
        for (int g = 0; g < G; ++g) l[g] += p_sum[g];
        // Values: dims 2 * pair and 2 * pair + 1 of keys kg, kg + KG, ...
#pragma unroll 4
        for (int jj = kg; jj < n; jj += KG) {
            const float2 v = __half22float2(
                *reinterpret_cast<const half2*>(v_cache + s_row[jj] + 2 * pair));
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float p = s_p[g][jj];
                acc[g].x = fmaf(p, v.x, acc[g].x);
                acc[g].y = fmaf(p, v.y, acc[g].y);
            }
        }
        __syncthreads();  // the next tile overwrites s_p and s_row
    }

#pragma unroll
    for (int g = 0; g < G; ++g) s_acc[kg][g][pair] = acc[g];
    __syncthreads();
    for (int i = tid; i < G * HD; i += THREADS) {
        const int g = i / HD;
        const int d = i % HD;
        float o = 0.0f;
#pragma unroll
        for (int k = 0; k < KG; ++k) {
            const float2 a = s_acc[k][g][d / 2];
            o += d & 1 ? a.y : a.x;
        }
        if (used == 1) {
            out[t * q_heads * HD + (h * G + g) * HD + d] = l[g] > 0.0f ? o / l[g] : 0.0f;
        } else {
            float* p = partials + partial_offset<HD>(t, h, split, kv_heads, splits, G) +
                       g * (HD + 2);
            p[d] = o;
            if (d == 0) {
                p[HD] = m[g];
                p[HD + 1] = l[g];
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

// The same attention as `attend` for up to R consecutive query tokens a block, unsplit and
// without a sliding window: the tokens of one sequence share each tile's K and V rows (read
// once for R * G query heads, where `attend` reads them once per token), which is what a
// prefill chunk spends its time on. Each (token, head) row takes exactly `attend`'s
// arithmetic in `attend`'s order, so its output is the same bits: a tile's keys in the same
// threads, its scores as the same fma chain over the dimensions, the same butterfly and warp
// order for the tile's max and sum, its values' p * v in the same order per thread and the
// KG partial sums added in the same order. A row's keys past its own end (a later token of
// the chunk sees more) are -inf scores and 0 probabilities there, as a thread without a key
// is in `attend`, and take no part in the value sums; a tile beyond its end leaves its state
// untouched (as `attend`, which never reaches that tile). Tokens of different sequences in one
// block (chunk boundaries, decode rows) are computed in turns, one sequence a turn. A padded
// row (position < 0) gets zeros.
template <int HD, int G, int R>
__device__ __forceinline__ void attend_rows(
    const float* __restrict__ qkv, const half* __restrict__ k_cache,
    const half* __restrict__ v_cache, const int* __restrict__ positions,
    const int* __restrict__ token_seq, const int* __restrict__ block_tables, int table_stride,
    float* __restrict__ out, int tokens, int kv_heads, int block_shift, float scale_log2) {
    static_assert(HD % 8 == 0 && THREADS % (HD / 2) == 0, "a thread's value dims: a half2");
    static_assert(R >= 1 && R <= 32, "a block's tokens fit a 32-bit mask");
    constexpr int RG = R * G;  // query rows of the block: token i's head g is row i * G + g
    constexpr int PAIRS = HD / 2;
    constexpr int KG = THREADS / PAIRS;
    constexpr int P_FLOATS = RG * THREADS;  // a tile's probabilities
    constexpr int ACC_FLOATS = KG * RG * PAIRS * 2;  // the value sums, after the last tile
    __shared__ float s_q[RG][HD];
    __shared__ long long s_row[THREADS];
    __shared__ float s_scratch[RG][WARPS];
    __shared__ float s_l[RG];
    __shared__ __align__(16) float s_buf[P_FLOATS > ACC_FLOATS ? P_FLOATS : ACC_FLOATS];
    auto s_p = reinterpret_cast<float (*)[THREADS]>(s_buf);
    auto s_acc = reinterpret_cast<float2 (*)[RG][PAIRS]>(s_buf);

    ember::await_prior_grid();
    const int t0 = blockIdx.x * R;
    const int h = blockIdx.y;
    const int tid = threadIdx.x;
    const int q_heads = kv_heads * G;
    const long long row_floats = static_cast<long long>(q_heads + 2 * kv_heads) * HD;
    const int block_mask = (1 << block_shift) - 1;
    const int pair = tid % PAIRS;
    const int kg = tid / PAIRS;

    int ends[R];  // one past each token's own key (0: a padded row)
    int seqs[R];
    unsigned todo = 0;  // tokens of this block not yet computed
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int t = t0 + i;
        ends[i] = t < tokens ? max(positions[t] + 1, 0) : 0;
        seqs[i] = t < tokens ? token_seq[t] : -1;
        if (t < tokens) todo |= 1u << i;
    }

    while (todo) {
        // This turn: the tokens of the first remaining token's sequence.
        int seq = 0;
#pragma unroll
        for (int i = R - 1; i >= 0; --i)
            if (todo >> i & 1) seq = seqs[i];
        unsigned active = 0;
        int turn_end = 0;
#pragma unroll
        for (int i = 0; i < R; ++i) {
            if ((todo >> i & 1) && seqs[i] == seq) {
                active |= 1u << i;
                turn_end = max(turn_end, ends[i]);
            }
        }
        todo &= ~active;
        const int* table = block_tables + static_cast<long long>(seq) * table_stride;
        for (int x = tid; x < RG * HD; x += THREADS) {
            const int r = x / HD;
            if (active >> (r / G) & 1)
                s_q[r][x % HD] =
                    qkv[(t0 + r / G) * row_floats + h * G * HD + r % G * HD + x % HD] * scale_log2;
        }
        __syncthreads();  // s_q, and every warp is done with the previous turn's s_buf

        float m[RG], l[RG];
        float2 acc[RG];
#pragma unroll
        for (int r = 0; r < RG; ++r) {
            m[r] = -INFINITY;
            l[r] = 0.0f;
            acc[r] = make_float2(0.0f, 0.0f);
        }
        for (int base = 0; base < turn_end; base += THREADS) {
            const int n = min(THREADS, turn_end - base);
            const bool has_key = tid < n;
            uint4 k[HD / 8];
            if (has_key) {
                const int j = base + tid;
                const long long slot =
                    (static_cast<long long>(table[j >> block_shift]) << block_shift) |
                    (j & block_mask);
                const long long at = (slot * kv_heads + h) * HD;
                s_row[tid] = at;
                const uint4* k_row = reinterpret_cast<const uint4*>(k_cache + at);
#pragma unroll
                for (int c = 0; c < HD / 8; ++c) k[c] = k_row[c];
            }
            // Row r sees this thread's key, and has keys in this tile at all.
            bool sees[RG], in_tile[RG];
            float s[RG];
#pragma unroll
            for (int r = 0; r < RG; ++r) {
                const int i = r / G;
                in_tile[r] = (active >> i & 1) && base < ends[i];
                sees[r] = in_tile[r] && has_key && base + tid < ends[i];
                s[r] = sees[r] ? 0.0f : -INFINITY;
            }
#pragma unroll
            for (int c = 0; c < HD / 8; ++c) {
                const half2* k2 = reinterpret_cast<const half2*>(&k[c]);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 kf = __half22float2(k2[e]);
#pragma unroll
                    for (int r = 0; r < RG; ++r) {
                        if (!sees[r]) continue;
                        s[r] = fmaf(s_q[r][c * 8 + 2 * e], kf.x, s[r]);
                        s[r] = fmaf(s_q[r][c * 8 + 2 * e + 1], kf.y, s[r]);
                    }
                }
            }
            float tile_max[RG];
#pragma unroll
            for (int r = 0; r < RG; ++r) tile_max[r] = s[r];
            block_reduce<RG, true>(tile_max, s_scratch);
            float p_sum[RG];
#pragma unroll
            for (int r = 0; r < RG; ++r) {
                p_sum[r] = 0.0f;
                if (in_tile[r]) {
                    // attend's rescaling and sums are not contracted into fmas: written so,
                    // its machine code is the same bytes (checked on every SM, 2026-12-08).
                    // Here they are so by construction, whatever the compiler makes of the
                    // larger loop.
                    const float m_new = fmaxf(m[r], tile_max[r]);  // finite: the row has a key
                    const float c = exp2f(m[r] - m_new);
                    l[r] = __fmul_rn(l[r], c);
                    acc[r].x = __fmul_rn(acc[r].x, c);
                    acc[r].y = __fmul_rn(acc[r].y, c);
                    m[r] = m_new;
                    p_sum[r] = exp2f(s[r] - m_new);  // 0 where the row does not see the key
                }
                s_p[r][tid] = p_sum[r];
            }
            block_reduce<RG, false>(p_sum, s_scratch);  // its barriers also publish s_p, s_row
#pragma unroll
            for (int r = 0; r < RG; ++r)
                if (in_tile[r]) l[r] = __fadd_rn(l[r], p_sum[r]);
#pragma unroll 4
            for (int jj = kg; jj < n; jj += KG) {
                const float2 v = __half22float2(
                    *reinterpret_cast<const half2*>(v_cache + s_row[jj] + 2 * pair));
#pragma unroll
                for (int r = 0; r < RG; ++r) {
                    if (!in_tile[r] || base + jj >= ends[r / G]) continue;
                    const float p = s_p[r][jj];
                    acc[r].x = fmaf(p, v.x, acc[r].x);
                    acc[r].y = fmaf(p, v.y, acc[r].y);
                }
            }
            __syncthreads();  // the next tile overwrites s_p and s_row
        }

        // Every thread holds each row's l (the block sums'); s_buf is free since the last
        // tile's barrier (or, with no tile, the turn's first).
#pragma unroll
        for (int r = 0; r < RG; ++r) {
            s_acc[kg][r][pair] = acc[r];
            if (tid == 0) s_l[r] = l[r];
        }
        __syncthreads();
        for (int x = tid; x < RG * HD; x += THREADS) {
            const int r = x / HD;
            const int d = x % HD;
            if (!(active >> (r / G) & 1)) continue;
            float o = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KG; ++kk) {
                const float2 a = s_acc[kk][r][d / 2];
                o = __fadd_rn(o, d & 1 ? a.y : a.x);
            }
            const float l_r = s_l[r];
            out[static_cast<long long>(t0 + r / G) * q_heads * HD + (h * G + r % G) * HD + d] =
                l_r > 0.0f ? o / l_r : 0.0f;
        }
        // The next turn's first barrier (after s_q, which nothing here reads) comes before it
        // writes s_buf, s_l or s_row.
    }
}

}  // namespace ember_attention

// qkv [T, (kv_heads * G + 2 kv_heads) * HD] float32 (q heads first, rotated); caches
// [num_slots, kv_heads, HD] fp16; positions, token_seq [T]; block_tables [S, table_stride];
// out [T, kv_heads * G * HD]; when splits > 1, partials [T, kv_heads, splits, G, HD + 2] float32
// and counters [T, kv_heads] int32 (zero before the first launch, left zero); window > 0: a
// token sees only its last `window` keys (itself included), 0: all.
// Grid (T, kv_heads, splits), block 32 * WARPS.
#define EMBER_PAGED_ATTENTION(HD, G)                                                          \
    extern "C" __global__ void __launch_bounds__(ember_attention::THREADS)                   \
        paged_attention_hd##HD##_g##G(                                                        \
            const float* __restrict__ qkv, const half* __restrict__ k_cache,                  \
            const half* __restrict__ v_cache, const int* __restrict__ positions,              \
            const int* __restrict__ token_seq, const int* __restrict__ block_tables,          \
            int table_stride, float* __restrict__ out, float* __restrict__ partials,          \
            int* __restrict__ counters, int kv_heads, int block_shift, float scale_log2,      \
            int window) {                                                                     \
        ember_attention::attend<HD, G>(qkv, k_cache, v_cache, positions, token_seq,           \
                                       block_tables, table_stride, out, partials, counters,   \
                                       kv_heads, block_shift, scale_log2, window);            \
    }                                                                                         \
    EMBER_EXPORT_PARAMS(paged_attention_hd##HD##_g##G)

// Every (head_dim, query heads per kv head) instantiated: 7 and 5 are Qwen2.5's (0.5B and 7B:
// 14 / 2 and 28 / 4 heads; 14B and 32B: 40 / 8).
#define EMBER_ATTENTION_SHAPES(X)                                                               \
    X(64, 1) X(64, 2) X(64, 3) X(64, 4) X(64, 7) X(64, 8) X(128, 1) X(128, 2) X(128, 4) X(128, 5) \
        X(128, 7) X(128, 8)

EMBER_ATTENTION_SHAPES(EMBER_PAGED_ATTENTION)

#define EMBER_ATTENTION_SHAPE(HD, G) HD, G,
EMBER_EXPORT_CONST(shapes, EMBER_ATTENTION_SHAPES(EMBER_ATTENTION_SHAPE))  // (head_dim, G) pairs

// attend_rows, R tokens a block: the same arguments as paged_attention (less the split
// workspace and the window, plus T), grid (ceil(T / R), kv_heads), block 32 * WARPS. Each
// token's output is paged_attention's, bit for bit, with one split and no window.
#define EMBER_PAGED_ATTENTION_ROWS(HD, G, R)                                                  \
    extern "C" __global__ void __launch_bounds__(ember_attention::THREADS)                   \
        paged_attention_rows_hd##HD##_g##G##_r##R(                                            \
            const float* __restrict__ qkv, const half* __restrict__ k_cache,                  \
            const half* __restrict__ v_cache, const int* __restrict__ positions,              \
            const int* __restrict__ token_seq, const int* __restrict__ block_tables,          \
            int table_stride, float* __restrict__ out, int tokens, int kv_heads,              \
            int block_shift, float scale_log2) {                                              \
        ember_attention::attend_rows<HD, G, R>(qkv, k_cache, v_cache, positions, token_seq,   \
                                               block_tables, table_stride, out, tokens,       \
                                               kv_heads, block_shift, scale_log2);            \
    }                                                                                         \
    EMBER_EXPORT_PARAMS(paged_attention_rows_hd##HD##_g##G##_r##R)

// (head_dim, G, tokens a block): 16 query rows a block where head_dim is 64 (SmolLM2's 3 heads a
// kv head take 15), 8 where it is 128 (its K row takes twice the registers), and for the Llama
// shapes a second size to compare (the 1B's 8 rows, the 8B's 16, which spills a little).
#define EMBER_ATTENTION_ROWS_SHAPES(X)                                                       \
    X(64, 1, 16) X(64, 2, 8) X(64, 3, 5) X(64, 3, 2) X(64, 4, 4) X(64, 4, 2) X(64, 7, 2)          \
        X(64, 8, 2) X(128, 1, 8) X(128, 2, 4) X(128, 4, 2) X(128, 4, 4)

EMBER_ATTENTION_ROWS_SHAPES(EMBER_PAGED_ATTENTION_ROWS)

#define EMBER_ATTENTION_ROWS_SHAPE(HD, G, R) HD, G, R,
EMBER_EXPORT_CONST(rows_shapes, EMBER_ATTENTION_ROWS_SHAPES(EMBER_ATTENTION_ROWS_SHAPE))
EMBER_EXPORT_CONST(threads, ember_attention::THREADS)  // a block's
