// Token sampling: one token id per row of logits, so that only ids come back to the host.
//
// Semantics are ember/engine/sampler.py's: temperature 0 is argmax (ties to the lowest index);
// otherwise z = logits / temperature, keep the top_k largest, then the smallest set of the
// largest whose softmax mass reaches top_p, then those with p >= min_p * p_max, and draw from
// softmax over what is left. The draw is Gumbel-max: argmax over kept i of z_i + g_i, where g_i
// is Gumbel noise from a counter-based hash of (seed, step, i). A sequence's token therefore
// depends only on its logits and (seed, step), never on its row or batch, and replays exactly.
//
// One block per row. Thresholds are found without sorting, by bisection on the logit value:
// `threshold` keeps an interval [lo, top] of logit values (both actual elements of the row)
// known to hold the answer, and each step counts (top-k) or sums the mass of (top-p) the
// elements of the interval at or above a midpoint, halving the interval in the space of
// order-preserving float keys and snapping both ends to actual elements. That is at most 32
// steps, 10 to 20 on 49152 random logits (a NumPy model of this loop measured 9-14 for top-k,
// up to 19 for top-p = 0.99); each is one read of the row (192 KB at V = 49152: L2 holds it,
// L1 may) with ~5 instructions per element outside the interval, plus one block reduction
// (one barrier). Cost per row: one pass for min/max when any filter is on; top-k and top-p
// each such a bisection, top-p one more pass with a division and an exp per kept element for
// the mass to reach; the draw one pass with a division, a 64-bit hash and two logs for each
// candidate that can still win (z + max noise above the best score so far).
//
// Structured outputs: a row whose params name a mask (`mask_row` >= 0) sees the tokens the mask
// leaves out (bit i % 32 of word i / 32 clear) as -inf, so they are never drawn nor counted in
// top-k, top-p or min-p; the logits themselves are not changed.
//
// Ties: tokens exactly equal to a top-k or top-p threshold are all kept (the CPU sampler keeps
// the lowest-indexed of them), so the kept set can exceed top_k. Thresholds are compared on the
// raw logits, which orders them as z does; the two differ only where the division by the
// temperature rounds distinct logits at a threshold to equal z. NaN or +inf logits: undefined.
//
// Every reduction runs in a fixed order for the fixed block size, on the same element-to-thread
// assignment whatever the alignment, so a row's token is deterministic.
#include "common.cuh"
#include "interface.cuh"

#include <stdint.h>

// A named namespace, not an anonymous one: internal-linkage names embed a hash of the source
// path, which would make the PTX differ between checkouts and fail the artifact check.
namespace ember_sampling {

constexpr int THREADS = 1024;  // the wrapper launches exactly this many per block
constexpr int WARPS = THREADS / 32;
constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr float INF = __builtin_huge_valf();

// Bounds of the noise for u = (k + 0.5) / 2^24 (k < 2^23) or k / 2^24 (k >= 2^23), k < 2^24:
// g = -log(-log(u)) lies in [-log(25 ln 2), -log(-log(1 - 2^-24))] = [-2.852, 16.64]. An element
// whose z + GUMBEL_MAX is below a score already reached cannot win; the row's maximum reaches at
// least max_z - GUMBEL_MIN_MARGIN. Both bounds have slack for rounding.
constexpr float GUMBEL_MAX = 18.0f;
constexpr float GUMBEL_MIN_MARGIN = 3.0f;

// Per-row parameters; sampling.py's ROW_PARAMS_DTYPE mirrors the layout exported below.
struct RowParams {
    float temperature;  // <= 0: greedy
    int32_t top_k;      // <= 0 or >= vocab: all
    float top_p;        // >= 1: all
    float min_p;        // <= 0: all
    uint32_t seed_lo;
    uint32_t seed_hi;
    int32_t step;
    int32_t mask_row;  // < 0: every token allowed; else the row of `masks` to apply
};

// --- Counter-based noise --------------------------------------------------------------------

constexpr uint64_t GOLDEN_GAMMA = 0x9E3779B97F4A7C15ull;

// SplitMix64's output function (Steele, Lea, Flood 2014): a bijection with full avalanche.
__host__ __device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The SplitMix64 stream of one (seed, step): element i draws its output number i + 1.
__host__ __device__ __forceinline__ uint64_t stream_key(uint64_t seed, uint32_t step) {
    return mix64(seed ^ mix64((static_cast<uint64_t>(step) + 1) * GOLDEN_GAMMA));
}

// Gumbel noise of element i from the top 24 bits of its hash. u is exact in float32 and in
// (0, 1): below 2^23 the half-step offset needs 24 significant bits, above it would need 25.
__host__ __device__ __forceinline__ float gumbel(uint64_t stream, int i) {
    const uint64_t h = mix64(stream + (static_cast<uint64_t>(i) + 1) * GOLDEN_GAMMA);
    const uint32_t k = static_cast<uint32_t>(h >> 40);
    const float u = (static_cast<float>(k) + (k < (1u << 23) ? 0.5f : 0.0f)) * 0x1p-24f;
    return -logf(-logf(u));
}

// --- Block reductions -----------------------------------------------------------------------

// A candidate token: higher score wins, equal scores go to the lower index.
struct Best {
    float score;
    int index;
};

// Minimum and maximum of the row's logits.
struct Extent {
    float lo;
    float hi;
};

// The elements of an interval split at a midpoint: count, mass and smallest value of those at
// or above it, largest value of those below it.
struct Split {
    int count;
    float mass;
    float lowest_up;
    float highest_down;
};

__device__ __forceinline__ Best combine(Best a, Best b) {
    return b.score > a.score || (b.score == a.score && b.index < a.index) ? b : a;
}

__device__ __forceinline__ Extent combine(Extent a, Extent b) {
    return {fminf(a.lo, b.lo), fmaxf(a.hi, b.hi)};
}

__device__ __forceinline__ Split combine(Split a, Split b) {
    return {a.count + b.count, a.mass + b.mass, fminf(a.lowest_up, b.lowest_up),
            fmaxf(a.highest_down, b.highest_down)};
}

__device__ __forceinline__ float combine(float a, float b) { return a + b; }

__device__ __forceinline__ float shuffle(float v, int lane_mask) {
    return __shfl_xor_sync(FULL_MASK, v, lane_mask);
}

__device__ __forceinline__ Best shuffle(Best v, int lane_mask) {
    return {__shfl_xor_sync(FULL_MASK, v.score, lane_mask),
            __shfl_xor_sync(FULL_MASK, v.index, lane_mask)};
}

__device__ __forceinline__ Extent shuffle(Extent v, int lane_mask) {
    return {__shfl_xor_sync(FULL_MASK, v.lo, lane_mask),
            __shfl_xor_sync(FULL_MASK, v.hi, lane_mask)};
}

__device__ __forceinline__ Split shuffle(Split v, int lane_mask) {
    return {__shfl_xor_sync(FULL_MASK, v.count, lane_mask),
            __shfl_xor_sync(FULL_MASK, v.mass, lane_mask),
            __shfl_xor_sync(FULL_MASK, v.lowest_up, lane_mask),
            __shfl_xor_sync(FULL_MASK, v.highest_down, lane_mask)};
}

// Butterfly: every lane ends with the same bits, since a + b == b + a exactly.
template <typename T>
__device__ __forceinline__ T warp_reduce(T v) {
    for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) v = combine(v, shuffle(v, lane_mask));
    return v;
}

// `v` combined over the block, in the same order every time; every thread gets the result.
// Calls alternate between two buffers, so one barrier per call suffices: a buffer is written
// again only after every thread has passed the next call's barrier, so after its last reads.
// Every thread of the block must make the same sequence of calls.
template <typename T>
__device__ __forceinline__ T block_reduce(T v, int& phase) {
    __shared__ T partial[2][WARPS];
    v = warp_reduce(v);
    if ((threadIdx.x & 31) == 0) partial[phase][threadIdx.x >> 5] = v;
    __syncthreads();
    v = partial[phase][threadIdx.x & 31];
    phase ^= 1;
    return warp_reduce(v);
}

// --- One row --------------------------------------------------------------------------------

struct Row {
    const float* __restrict__ x;
    int n;
    bool vec;  // n % 4 == 0 and x 16-byte aligned: read float4s
    const uint32_t* __restrict__ mask;  // nullptr: every token allowed

    // f(x[i], i) for this thread's elements: 4t..4t+3, then every 4 * THREADS on, in increasing
    // i, with float4 loads or without. Sums and ties then do not depend on the alignment.
    // Elements the mask leaves out are seen as -inf.
    template <typename F>
    __device__ __forceinline__ void visit(F&& f) const {
        if (mask) {
            visit_all([&](float v, int i) { f(mask[i >> 5] >> (i & 31) & 1u ? v : -INF, i); });
        } else {
            visit_all(f);
        }
    }

    template <typename F>
    __device__ __forceinline__ void visit_all(F&& f) const {
        const int stride = THREADS * 4;
        if (vec) {
#pragma unroll 2
            for (int i = threadIdx.x * 4; i < n; i += stride) {
                const float4 v = *reinterpret_cast<const float4*>(x + i);
                f(v.x, i);
                f(v.y, i + 1);
                f(v.z, i + 2);
                f(v.w, i + 3);
            }
        } else {
            for (int i = threadIdx.x * 4; i < n; i += stride) {
                const int end = min(i + 4, n);
                for (int j = i; j < end; ++j) f(x[j], j);
            }
        }
    }
};

// Ordered keys: a < b as floats (not NaN, -0 below +0) iff key(a) < key(b) as integers.
__device__ __forceinline__ uint32_t float_key(float v) {
    const uint32_t bits = __float_as_uint(v);
    return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ float key_float(uint32_t key) {
    return __uint_as_float(key & 0x80000000u ? key & 0x7fffffffu : ~key);
}

// The largest element value t in [lo, top] whose elements at or above it are enough: at least
// `k` of them (MASS false), or mass sum(exp(z - max_z)) >= `target` (MASS true). `lo` must be
// an element that is enough, `top` an element (the row's maximum, at first).
template <bool MASS>
__device__ float threshold(
    const Row& row, float lo, float top, int k, float target, float temperature, float max_z,
    int& phase) {
    int count_above = 0;  // of the elements above `top`
    float mass_above = 0.0f;
    while (lo < top) {
        const uint32_t lo_key = float_key(lo);
        float mid = key_float(lo_key + (float_key(top) - lo_key + 1) / 2);
        if (!(mid > lo)) mid = top;  // -0 and +0 share a value but not a key
        Split local = {0, 0.0f, INF, -INF};
        row.visit([&](float v, int) {
            if (v >= lo && v <= top) {
                if (v >= mid) {
                    ++local.count;
                    if (MASS) local.mass += expf(v / temperature - max_z);
                    local.lowest_up = fminf(local.lowest_up, v);
                } else {
                    local.highest_down = fmaxf(local.highest_down, v);
                }
            }
        });
        const Split all = block_reduce(local, phase);
        const bool enough = MASS ? mass_above + all.mass >= target : count_above + all.count >= k;
        if (enough) {
            lo = all.lowest_up;
            if (!MASS && count_above + all.count == k) top = lo;  // exactly k: lo is the k-th
        } else {
            top = all.highest_down;
            count_above += all.count;
            mass_above += all.mass;
        }
    }
    return lo;
}

__device__ __forceinline__ void sample_row(
    const Row& row, const RowParams& p, int* __restrict__ out) {
    int phase = 0;
    const float temperature = p.temperature;
    if (!(temperature > 0.0f)) {
        Best best = {-INF, 0x7fffffff};
        row.visit([&](float v, int i) { best = combine(best, Best{v, i}); });
        best = block_reduce(best, phase);
        if (threadIdx.x == 0) *out = best.index;
        return;
    }
    const bool top_k = p.top_k > 0 && p.top_k < row.n;
    const bool top_p = p.top_p < 1.0f;
    const bool min_p = p.min_p > 0.0f;
    float cut = -INF;  // kept: logits >= cut
    float max_z = INF;
    float reachable = -INF;  // a score the winner reaches
    if (top_k || top_p || min_p) {
        Extent local = {INF, -INF};
        row.visit([&](float v, int) { local = combine(local, Extent{v, v}); });
        const Extent extent = block_reduce(local, phase);
        max_z = extent.hi / temperature;
        reachable = max_z - GUMBEL_MIN_MARGIN;
        cut = extent.lo;
        if (p.top_k == 1) {
            cut = extent.hi;
        } else if (top_k) {
            cut = threshold<false>(row, cut, extent.hi, p.top_k, 0.0f, temperature, max_z, phase);
        }
        if (top_p) {
            float local_mass = 0.0f;
            row.visit([&](float v, int) {
                if (v >= cut) local_mass += expf(v / temperature - max_z);
            });
            const float target = p.top_p * block_reduce(local_mass, phase);
            cut = threshold<true>(row, cut, extent.hi, 0, target, temperature, max_z, phase);
        }
    }
    // The row's maximum always passes min-p: exp(0) == 1 >= min_p once min_p is at most 1.
    const float min_prob = fminf(p.min_p, 1.0f);
    const uint64_t seed = static_cast<uint64_t>(p.seed_hi) << 32 | p.seed_lo;
    const uint64_t stream = stream_key(seed, static_cast<uint32_t>(p.step));
    Best best = {-INF, 0x7fffffff};
    row.visit([&](float v, int i) {
        if (!(v >= cut)) return;
        const float z = v / temperature;
        if (z + GUMBEL_MAX < fmaxf(best.score, reachable)) return;
        if (min_p && expf(z - max_z) < min_prob) return;
        const float score = z + gumbel(stream, i);
        best = combine(best, Best{score, i});
    });
    best = block_reduce(best, phase);
    if (threadIdx.x == 0) *out = best.index;
}

}  // namespace ember_sampling

EMBER_EXPORT_CONST(threads, ember_sampling::THREADS)  // a block's, exactly
EMBER_EXPORT_STRUCT(row_params, ember_sampling::RowParams, temperature, top_k, top_p, min_p,
                    seed_lo, seed_hi, step, mask_row)

// out[r] = the token sampled from logits[r, :vocab] with params[r], for r < gridDim.x; a row with
// params[r].mask_row = m >= 0 keeps to the tokens of masks[m * mask_words : (m + 1) *
// mask_words] (masks may be null when no row names one). Launch one block of
// ember_sampling::THREADS (1024) threads per row.
extern "C" __global__ void __launch_bounds__(ember_sampling::THREADS, 1) sample_f32(
    const float* __restrict__ logits, const ember_sampling::RowParams* __restrict__ params,
    const uint32_t* __restrict__ masks, int* __restrict__ out, int vocab, int mask_words) {
    ember::await_prior_grid();
    const long long r = blockIdx.x;
    const float* x = logits + r * vocab;
    const ember_sampling::RowParams p = params[r];
    const uint32_t* mask =
        p.mask_row >= 0 && masks ? masks + static_cast<long long>(p.mask_row) * mask_words
                                 : nullptr;
    const ember_sampling::Row row = {x, vocab, (vocab & 3) == 0 && ember::aligned16(x), mask};
    ember_sampling::sample_row(row, p, out + r);
}
EMBER_EXPORT_PARAMS(sample_f32)
