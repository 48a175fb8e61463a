// Quantised GEMV for decode: y[b, n] = sum_k x[b, k] * W[n, k], W the raw GGUF bytes of a
// Q4_0, Q4_1 or Q8_0 tensor [N, K] (row-major, 32 weights per block), x and y float32, for a
// batch of 1 to 8 rows of x.
//
// Integer dot products, as llama.cpp's mmvq does: x is quantised to int8 per 32-element block
// (scale d8 = max|x| / 127) and each block's dot is 8 dp4a (4 weights each) plus two fmas. A
// Q4 weight word (8 weights) unpacks with three bit operations (low nibbles are weights j,
// high nibbles j + 16, matching x words k and k + 4).
//
// Work split. A block of WARPS warps owns 32 weight rows: lane l computes row l (so every read
// of x is a broadcast, and x is quantised once per block of rows, not per row). K is cut into
// stages of 8 GGUF blocks (256 weights); warp w takes stages w, w + WARPS, ... and the warps'
// partial sums meet in shared memory at the end. The host picks WARPS so that the bytes spread
// evenly over the SMs (quant_gemv.py's QuantGemv._warps): on an H100 at batch 1, an 8B model's
// 4096-row matrices run 128 blocks of 16 warps, its 14336-row gate/up 896 blocks of 2 warps
// (6 or 7 an SM, all resident at once), the LM head 8-warp blocks.
//
// Weights. A stage of 32 rows x 8 blocks (144/160/272 bytes a row) is copied into the warp's
// shared memory with 16-byte cp.async, coalesced across the warp (lanes take consecutive
// 16-byte granules of the stage, row after row), double-buffered: while a stage is computed
// the next is in flight, 4.6-8.7 KB a warp. Rows whose bytes are a multiple of 16 (K a
// multiple of 256; 128 for Q4_1) are copied as they are, and lane l reads its row's 144 bytes
// back with 9 conflict-free 16-byte loads (a slot of an odd number of 16-byte granules); each
// block's fields then sit at offsets known at compile time, so a misaligned word costs one
// byte_perm. Other rows keep their misalignment (the copy starts at the 16-byte boundary below
// the piece) and the lane reads its words with 4-byte loads at its own offset.
//
// x. Each warp quantises the x of its own stages just before computing them, from global into
// its shared memory: int8 values and a 16-byte record per x block, {d8, -d8 * 2^23 * 1.5,
// 2^23 * 1.5 - 8 * sum(q) (as int bits), sum(x)}. There is no separate quantising kernel: on
// the 135M model every GEMV has its own input, and a launch costs ~2 us at batch 1, more than
// the quantisation (each block of 32 rows re-quantises x: 0.2 instructions a weight at batch 1,
// 0.9 at batch 8, against 1.0 and 4 for the dot itself).
//
// Fusions. Decode at batch 1 is a chain of ~9 small launches a layer, each ~3.5 us on an H100
// whatever its work, so the GEMV also does the work of the launches around it, chosen per launch
// (the choice is uniform over the grid; one kernel per type and tier keeps build time down):
//  - norm: x is the residual stream h and the GEMV reads rmsnorm(h) * g (each thread block
//    computes the rows' sums of squares itself: K floats a row, from L2);
//  - swiglu: norm, and W holds the gate rows then the up rows (2F rows); a thread block takes
//    16 gate rows and the same 16 up rows and stores silu(gate) * up, y [batch, F];
//  - rope: norm, and y is the fused q/k/v projection: biases added (Qwen2), q and k rotated
//    (RoPE) and k and v stored in fp16 in the paged cache, as rope.cu's rope_qkv_cache_f32 does
//    (but for the q/k norm, which needs whole heads). NEOX pairs (x[i], x[i + head_dim / 2]) lie
//    apart in W's rows, so for them a thread block takes 16 rows of a head's first half and the
//    16 rows half a head below (RowMap), as swiglu pairs gate and up rows;
//  - add: y += x @ W.T (the residual add after the attention output and down projections).
//
// Exact integer to float: dp4a accumulates onto the int bits of 1.5 * 2^23 (minus 8 * sum(q)
// for the 4-bit types, so that their -8 offset costs nothing), so the float with those bits is
// exactly 1.5 * 2^23 + dot; d8 has at most 22 significant bits, so -d8 * 1.5 * 2^23 is exact
// and one fma gives d8 * dot rounded once.
#include <type_traits>

#include "common.cuh"
#include "interface.cuh"
#include "quant_formats.cuh"

// A named namespace: an anonymous one gives its `smem` a name hashed from the source path, so
// the PTX would differ between checkouts (the artifact check rebuilds in a fresh clone).
namespace ember_gemv {

constexpr int STAGE_BLOCKS = 8;  // GGUF blocks of a row per stage
constexpr int STAGES = 2;  // per warp: one computed, one in flight (3 or 4: no faster)
constexpr int MAGIC = 0x4B400000;  // the bits of 1.5 * 2^23: M + i is exact for |i| < 2^22
constexpr float MAGIC_F = 12582912.0f;
constexpr uint32_t LOW_NIBBLES = 0x0F0F0F0Fu;

// The formats of quant_formats.cuh: Q5_0 and Q5_1 read through ember::Format's units
// (quant_gemv_units.cuh), the K-quants a super-block a stage (quant_gemv_super.cuh); the
// others have their own tuned paths below.
template <typename Block>
struct IsUnitFormat : std::false_type {};
template <> struct IsUnitFormat<ember::block_q5_0> : std::true_type {};
template <> struct IsUnitFormat<ember::block_q5_1> : std::true_type {};
template <> struct IsUnitFormat<ember::block_q4_k> : std::true_type {};
template <> struct IsUnitFormat<ember::block_q5_k> : std::true_type {};
template <> struct IsUnitFormat<ember::block_q6_k> : std::true_type {};

template <typename Block>
struct IsSuperFormat : std::false_type {};
template <> struct IsSuperFormat<ember::block_q4_k> : std::true_type {};
template <> struct IsSuperFormat<ember::block_q5_k> : std::true_type {};
template <> struct IsSuperFormat<ember::block_q6_k> : std::true_type {};

// Whether a format's dot needs sum(x) per x block (a minimum, or Q4_1's).
template <typename Block>
__host__ __device__ constexpr bool needs_x_sum() {
    if constexpr (IsUnitFormat<Block>::value)
        return ember::Format<Block>::HAS_MIN;
    else
        return std::is_same_v<Block, ember::block_q4_1>;
}

// What a GEMV does with its sums (see the fusions above); quant_gemv.py's Output.
enum Out : int { STORE = 0, ADD = 1, SWIGLU = 2, ROPE = 3, ROPE_NEOX = 4 };

// A launch's fusions, passed by value as llama.cpp's mmvq passes its fusion arguments; the rope
// fields are read only for ROPE. quant_gemv.py's GemvFusion mirrors it, checked against the
// layout exported below (pointers first: no padding). nvcc gives struct fields none of the
// no-alias guarantees of __restrict__ kernel parameters, so the read-only buffers are read
// with __ldg, through the read-only cache as when they were such parameters.
struct Fusion {
    const float* norm_weight;  // g [K] for the norm prologue, or null
    // Sums of squares of x's 32-column groups [batch][K / 32] (written by the ADD GEMV that
    // produced x), or null: the norm then sums x's squares itself.
    const float* norm_partials;
    float* out_partials;  // ADD: the same sums of the updated y [batch][ceil(N / 32)], or null
    const int* positions;  // [batch], rope
    const int* slots;      // [batch] cache slots (< 0: store nothing), rope
    half* k_cache;         // [slots, kv_heads, head_dim], rope
    half* v_cache;
    const double* inv_freq;  // [rot_dim / 2] radians per position of each pair, rope
    const float* bias;       // [n] added to y, rope (q|k|v biases), or null
    int out;  // an Out
    float eps;
    int n_q_heads;
    int n_kv_heads;
    int head_dim;
    int rot_dim;
};

// Where the products go: y's row stride in floats (y points at this product's first column; a
// stacked matrix whose parts are stored in different block types runs one launch a part, each
// writing its columns of one output), and for rope the row of the q|k|v stack W's row 0 is.
struct OutputAt {
    int y_stride;
    int row_offset;
};

// Weight rows per thread block: lane l computes row l.
constexpr int ROWS = 32;

// The weight rows a thread block's 32 lanes compute: 32 consecutive rows, or 16 pairs of rows:
// W's rows are groups of `span` rows, and pair p is row e of group g and the row span / 2
// below it (p = g * span / 2 + e). Swiglu's span is all of W (gate row e, up row F + e), NEOX
// RoPE's a head. Lanes 0-15 take the pairs' first rows, 16-31 their second. Rows (pairs) past
// the end repeat the last.
struct RowMap {
    long long first;  // the block's first row, or (paired) its first pair
    long long n;      // W's rows
    long long span;   // 0: consecutive rows
    __device__ __forceinline__ RowMap(long long n_rows, long long pair_span)
        : n(n_rows), span(pair_span) {
        first = static_cast<long long>(blockIdx.x) * (span ? ROWS / 2 : ROWS);
    }
    __device__ __forceinline__ long long row(int r) const {
        if (span) {
            const long long half = span / 2;
            const long long p = min(first + (r & 15), n / 2 - 1);
            return p / half * span + p % half + (r < 16 ? 0 : half);
        } else {
            return min(first + r, n - 1);
        }
    }
};

// Per type: bytes per GGUF block, 16-byte granules per row per stage when the row is 16-byte
// aligned, and when it is not (the piece may start up to 14 bytes into its first granule).
template <typename Block>
struct Stage {
    static constexpr int block_bytes = static_cast<int>(sizeof(Block));
    static constexpr int piece = STAGE_BLOCKS * block_bytes;
    static_assert(piece % 16 == 0, "a stage must be whole 16-byte granules of an aligned row");
    static constexpr int granules_aligned = piece / 16;
    static constexpr int granules_general = (piece + 14 + 15) / 16;
    // A warp's ring of STAGES stages of 32 rows.
    static constexpr int ring_aligned = STAGES * 32 * 16 * granules_aligned;
    static constexpr int ring_general = STAGES * 32 * 16 * granules_general;
};

// The x of one stage in a warp's shared memory: int8 [batch][8][32], then the records.
struct XRecord {
    float d;       // scale: x ~ d * q
    float offset;  // -d * MAGIC_F
    int base;      // MAGIC - 8 * sum(q): a 4-bit block's dot starts here
    float sum;     // sum(x) over the block, exact in float32 (Q4_1's minimum term)
};
static_assert(sizeof(XRecord) == 16, "an x record is one 16-byte load");

template <int MAX_BATCH>
constexpr int X_BYTES = MAX_BATCH * STAGE_BLOCKS * (32 + static_cast<int>(sizeof(XRecord)));

__device__ __forceinline__ uint32_t smem_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void copy16(uint32_t dst, const uint8_t* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}

// `p` as the compiler cannot see through: keeps a stage's copies at one 64-bit add each
// (pointer + 32-bit offset) instead of a 64-bit multiply-add re-associated into every one.
__device__ __forceinline__ const uint8_t* opaque(const uint8_t* p) {
    asm("" : "+l"(p));
    return p;
}

__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int PENDING>
__device__ __forceinline__ void wait_copies() {
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

__device__ __forceinline__ float half_bits_to_float(uint32_t bits) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xFFFFu)));
}

// NaN-propagating max (fmaxf drops NaN): a NaN in x must reach y, as it does in the GEMM.
__device__ __forceinline__ float max_nan(float a, float b) {
    float d;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
    return d;
}

// d = a + dot4(unsigned bytes of ua, signed bytes of b).
__device__ __forceinline__ int dp4a_us(uint32_t ua, uint32_t b, int a) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(ua), "r"(b), "r"(a));
    return d;
}

// A GGUF block's scale (and minimum) and its quantised words, as a lane holds them.
template <typename Block>
struct Weights {
    static constexpr bool q4 = !std::is_same_v<Block, ember::block_q8_0>;
    static constexpr int words = q4 ? 4 : 8;
    uint32_t q[words];
    float d;
    float m;  // Q4_1 only
};

// Word `index` of a lane's slot, read as part of a 16-byte load: 16-byte loads of slots an odd
// number of granules apart are free of bank conflicts. `index` is a compile-time constant once
// the callers' loops are unrolled, and repeated loads of a granule are merged.
__device__ __forceinline__ uint32_t slot_word(const uint4* slot, int index) {
    const uint4 g = slot[index >> 2];
    switch (index & 3) {
        case 0: return g.x;
        case 1: return g.y;
        case 2: return g.z;
        default: return g.w;
    }
}

// Block i of a 16-byte-aligned row piece: every offset is known at compile time.
template <typename Block>
__device__ __forceinline__ void block_aligned(const uint4* slot, int i, Weights<Block>& out) {
    constexpr int bytes = static_cast<int>(sizeof(Block));
    const int start = i * bytes;
    if constexpr (std::is_same_v<Block, ember::block_q4_1>) {
        // d, m and the 16 bytes of nibbles are all 4-byte aligned: 20 * i is.
        const uint32_t dm = slot_word(slot, start / 4);
        out.d = half_bits_to_float(dm);
        out.m = half_bits_to_float(dm >> 16);
#pragma unroll
        for (int k = 0; k < 4; ++k) out.q[k] = slot_word(slot, start / 4 + 1 + k);
    } else {
        // Q4_0 (18 bytes) and Q8_0 (34): d at `start`, the quants from start + 2; blocks
        // alternate between d in a word's low half (quants misaligned by 2) and its high half.
        const bool low = start % 4 == 0;
        const uint32_t d_word = slot_word(slot, start / 4);
        out.d = half_bits_to_float(low ? d_word : d_word >> 16);
        const int first = (start + 2) / 4;
#pragma unroll
        for (int k = 0; k < Weights<Block>::words; ++k) {
            out.q[k] = low ? __byte_perm(slot_word(slot, first + k), slot_word(slot, first + k + 1),
                                         0x5432)
                           : slot_word(slot, first + k);
        }
    }
}

// Block i of a piece that starts `shift` bytes (even, < 16) into the lane's slot: words are
// read with 4-byte loads at the lane's own offset.
template <typename Block>
__device__ __forceinline__ void block_shifted(
    const uint8_t* slot, int shift, int i, Weights<Block>& out) {
    constexpr int bytes = static_cast<int>(sizeof(Block));
    const int start = shift + i * bytes;
    const uint32_t* w = reinterpret_cast<const uint32_t*>(slot + (start & ~3));
    if constexpr (std::is_same_v<Block, ember::block_q4_1>) {
        // Q4_1 rows are 20 * (K / 32) bytes, a multiple of 4: every field is word-aligned.
        const uint32_t dm = w[0];
        out.d = half_bits_to_float(dm);
        out.m = half_bits_to_float(dm >> 16);
#pragma unroll
        for (int k = 0; k < 4; ++k) out.q[k] = w[1 + k];
    } else {
        constexpr int words = Weights<Block>::words;
        uint32_t v[words + 1];
#pragma unroll
        for (int k = 0; k <= words; ++k) v[k] = w[k];
        const bool low = (start & 2) == 0;
        out.d = half_bits_to_float(low ? v[0] : v[0] >> 16);
        const uint32_t select = low ? 0x5432 : 0x7654;
#pragma unroll
        for (int k = 0; k < words; ++k) out.q[k] = __byte_perm(v[k], v[k + 1], select);
    }
}

// Weight j of a Q4 block is the low nibble of byte j and meets x j; weight j + 16 is the high
// nibble and meets x j + 16. SPLIT keeps the high nibbles in place (x16) and sums them apart,
// one bit operation a word instead of two, for one more add per row of x: worth it below 8.
template <typename Block, bool SPLIT>
struct Unpacked {
    uint32_t lo[4];
    uint32_t hi[4];

    __device__ __forceinline__ explicit Unpacked(const Weights<Block>& wb) {
        if constexpr (Weights<Block>::q4) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                lo[j] = wb.q[j] & LOW_NIBBLES;
                hi[j] = SPLIT ? wb.q[j] & ~LOW_NIBBLES : (wb.q[j] >> 4) & LOW_NIBBLES;
            }
        }
    }
};

// acc += the dot of one GGUF block with one x block (int8 `xq`, record `r`).
template <typename Block, bool SPLIT>
__device__ __forceinline__ float block_dot(
    const Weights<Block>& wb, const Unpacked<Block, SPLIT>& u, const uint4* xq,
    const XRecord& r, float acc) {
    const uint4 x0 = xq[0];
    const uint4 x1 = xq[1];
    int dot;
    if constexpr (!Weights<Block>::q4) {
        dot = __dp4a(static_cast<int>(wb.q[0]), static_cast<int>(x0.x), MAGIC);
        dot = __dp4a(static_cast<int>(wb.q[1]), static_cast<int>(x0.y), dot);
        dot = __dp4a(static_cast<int>(wb.q[2]), static_cast<int>(x0.z), dot);
        dot = __dp4a(static_cast<int>(wb.q[3]), static_cast<int>(x0.w), dot);
        dot = __dp4a(static_cast<int>(wb.q[4]), static_cast<int>(x1.x), dot);
        dot = __dp4a(static_cast<int>(wb.q[5]), static_cast<int>(x1.y), dot);
        dot = __dp4a(static_cast<int>(wb.q[6]), static_cast<int>(x1.z), dot);
        dot = __dp4a(static_cast<int>(wb.q[7]), static_cast<int>(x1.w), dot);
    } else if constexpr (SPLIT) {
        int lo = __dp4a(static_cast<int>(u.lo[0]), static_cast<int>(x0.x), r.base);
        lo = __dp4a(static_cast<int>(u.lo[1]), static_cast<int>(x0.y), lo);
        lo = __dp4a(static_cast<int>(u.lo[2]), static_cast<int>(x0.z), lo);
        lo = __dp4a(static_cast<int>(u.lo[3]), static_cast<int>(x0.w), lo);
        int hi = dp4a_us(u.hi[0], x1.x, 0);
        hi = dp4a_us(u.hi[1], x1.y, hi);
        hi = dp4a_us(u.hi[2], x1.z, hi);
        hi = dp4a_us(u.hi[3], x1.w, hi);
        dot = lo + (hi >> 4);  // hi is 16 times a sum: the shift is exact
    } else {
        dot = __dp4a(static_cast<int>(u.lo[0]), static_cast<int>(x0.x), r.base);
        dot = __dp4a(static_cast<int>(u.lo[1]), static_cast<int>(x0.y), dot);
        dot = __dp4a(static_cast<int>(u.lo[2]), static_cast<int>(x0.z), dot);
        dot = __dp4a(static_cast<int>(u.lo[3]), static_cast<int>(x0.w), dot);
        dot = __dp4a(static_cast<int>(u.hi[0]), static_cast<int>(x1.x), dot);
        dot = __dp4a(static_cast<int>(u.hi[1]), static_cast<int>(x1.y), dot);
        dot = __dp4a(static_cast<int>(u.hi[2]), static_cast<int>(x1.z), dot);
        dot = __dp4a(static_cast<int>(u.hi[3]), static_cast<int>(x1.w), dot);
    }
    // d8 * (q . xq), rounded once; for the 4-bit types q is (nibble - 8).
    const float scaled = fmaf(r.d, __int_as_float(dot), r.offset);
    acc = fmaf(wb.d, scaled, acc);
    if constexpr (std::is_same_v<Block, ember::block_q4_1>) {
        // (d * nibble + m) . x = d * ((nibble - 8) . x) + (m + 8 d) * sum(x)
        acc = fmaf(fmaf(8.0f, wb.d, wb.m), r.sum, acc);
    }
    return acc;
}

// How lanes split a stage of x: (batch row, x block) pairs, LANES lanes a block (4 at batch
// tier 1, 2 at tier 2, 1 above), ROUNDS pairs a lane (2 at tier 8, else 1).
template <int MAX_BATCH>
struct XSplit {
    static constexpr int X_BLOCKS = MAX_BATCH * STAGE_BLOCKS;
    static constexpr int LANES = X_BLOCKS >= 32 ? 1 : 32 / X_BLOCKS;
    static constexpr int PER_LANE = 32 / LANES;  // elements
    static constexpr int ROUNDS = X_BLOCKS >= 32 ? X_BLOCKS / 32 : 1;

    __device__ __forceinline__ static int pair(int lane, int round) {
        return lane / LANES + round * (32 / LANES);
    }
    // The first of the lane's PER_LANE columns of x in a round.
    __device__ __forceinline__ static int column(int lane, int round, int first_block) {
        return (first_block + pair(lane, round) % STAGE_BLOCKS) * 32 + lane % LANES * PER_LANE;
    }
    // Every lane of a block's group agrees on `live`, so the shuffles of quantizing stay
    // converged.
    __device__ __forceinline__ static bool live(int lane, int round, int batch, int blocks) {
        const int p = pair(lane, round);
        return p / STAGE_BLOCKS < batch && p % STAGE_BLOCKS < blocks;
    }
};

// PER_LANE floats from `src` (16-byte aligned), or zeros.
template <int PER_LANE>
__device__ __forceinline__ void load_floats(const float* __restrict__ src, bool live, float* v) {
#pragma unroll
    for (int j = 0; j < PER_LANE / 4; ++j) {
        const float4 f = live ? __ldg(reinterpret_cast<const float4*>(src) + j)
                              : make_float4(0.f, 0.f, 0.f, 0.f);
        v[4 * j] = f.x;
        v[4 * j + 1] = f.y;
        v[4 * j + 2] = f.z;
        v[4 * j + 3] = f.w;
    }
}

// Quantise a lane's values v of one round (already normalised) into the warp's `xs`: int8
// values and, from the block's first lane, its record.
template <typename Block, int MAX_BATCH>
__device__ __forceinline__ void quantize_round(
    float (&v)[XSplit<MAX_BATCH>::PER_LANE], int round, bool live, uint8_t* xs, int lane) {
    using X = XSplit<MAX_BATCH>;
    constexpr int LANES = X::LANES;
    constexpr int PER_LANE = X::PER_LANE;
    constexpr bool SUM = needs_x_sum<Block>();
    XRecord* records = reinterpret_cast<XRecord*>(xs + MAX_BATCH * STAGE_BLOCKS * 32);
    const int pair = X::pair(lane, round);
    const int part = lane % LANES;
    float amax = 0.f;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) amax = max_nan(amax, fabsf(v[j]));
    // sum(x) of the block in one order at every tier (batch invariance): 8-value runs summed in
    // turn, then the runs in a pairwise tree, here and across the block's lanes below.
    float run[PER_LANE / 8] = {};
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j)
        if constexpr (SUM) run[j / 8] += v[j];
#pragma unroll
    for (int width = 1; width < PER_LANE / 8; width *= 2)
#pragma unroll
        for (int r = 0; r < PER_LANE / 8; r += 2 * width) run[r] += run[r + width];
    float sum = run[0];
#pragma unroll
    for (int offset = 1; offset < LANES; offset <<= 1) {
        amax = max_nan(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
        if constexpr (SUM) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    // A block whose values all lie below 1e-30 in magnitude quantises to zeros (127 / amax
    // would overflow). d keeps 22 significant bits, so that d * MAGIC_F is exact; a NaN
    // (or inf) in the block makes d NaN (inf), and so the block's dot.
    const bool zero = amax < 1e-30f;
    const float d = zero ? 0.f : __uint_as_float(__float_as_uint(amax * (1.0f / 127)) & ~3u);
    const float inverse = zero ? 0.f : __fdiv_rn(127.0f, amax);
    uint32_t packed[PER_LANE / 4];
    int qsum = 0;
#pragma unroll
    for (int j = 0; j < PER_LANE / 4; ++j) {
        // Rounded to nearest even by the add: the int lands in the low bits (|q| <= 127).
        const uint32_t q0 = __float_as_uint(fmaf(v[4 * j], inverse, MAGIC_F));
        const uint32_t q1 = __float_as_uint(fmaf(v[4 * j + 1], inverse, MAGIC_F));
        const uint32_t q2 = __float_as_uint(fmaf(v[4 * j + 2], inverse, MAGIC_F));
        const uint32_t q3 = __float_as_uint(fmaf(v[4 * j + 3], inverse, MAGIC_F));
        packed[j] =
            __byte_perm(__byte_perm(q0, q1, 0x0040), __byte_perm(q2, q3, 0x0040), 0x5410);
        qsum = __dp4a(static_cast<int>(packed[j]), 0x01010101, qsum);
    }
#pragma unroll
    for (int offset = 1; offset < LANES; offset <<= 1)
        qsum += __shfl_xor_sync(0xffffffffu, qsum, offset);
    if (!live) return;
    uint8_t* dst = xs + pair * 32 + part * PER_LANE;
    if constexpr (PER_LANE == 8) {
        *reinterpret_cast<uint2*>(dst) = make_uint2(packed[0], packed[1]);
    } else {
#pragma unroll
        for (int j = 0; j < PER_LANE / 16; ++j)
            reinterpret_cast<uint4*>(dst)[j] = make_uint4(
                packed[4 * j], packed[4 * j + 1], packed[4 * j + 2], packed[4 * j + 3]);
    }
    if (part == 0) records[pair] = XRecord{d, -d * MAGIC_F, MAGIC - 8 * qsum, sum};
}

// Quantise x[0:batch, a stage's K range] into the warp's `xs`, loading each round just before
// quantising it. With g, x is h and the values quantised are h * scale[b] * g (rms_norm_f32's
// rounding).
template <typename Block, int MAX_BATCH>
__device__ __forceinline__ void quantize_x(
    const float* __restrict__ x, int k, int batch, int first_block, int blocks, uint8_t* xs,
    int lane, const float* __restrict__ g, const float* scale) {
    using X = XSplit<MAX_BATCH>;
#pragma unroll
    for (int round = 0; round < X::ROUNDS; ++round) {
        const int b = X::pair(lane, round) / STAGE_BLOCKS;
        const int column = X::column(lane, round, first_block);
        const bool live = X::live(lane, round, batch, blocks);
        float v[X::PER_LANE];
        load_floats<X::PER_LANE>(x + static_cast<long long>(b) * k + column, live, v);
        if (g != nullptr) {
            const float s = live ? scale[b] : 0.f;
#pragma unroll
            for (int j = 0; j < X::PER_LANE / 4; ++j) {
                const float4 f = live ? __ldg(reinterpret_cast<const float4*>(g + column) + j)
                                      : make_float4(0.f, 0.f, 0.f, 0.f);
                v[4 * j] = v[4 * j] * s * f.x;
                v[4 * j + 1] = v[4 * j + 1] * s * f.y;
                v[4 * j + 2] = v[4 * j + 2] * s * f.z;
                v[4 * j + 3] = v[4 * j + 3] * s * f.w;
            }
        }
        quantize_round<Block, MAX_BATCH>(v, round, live, xs, lane);
    }
}

// The raw x (and g) of one stage, held in registers from its loads to its quantising, so that
// a warp loads stage t + 1's x before it computes stage t: the L2 round trip is then off the
// warp's path. Only at tier 1 (8 values a lane, 16 with the norm's): at tier 2 the 32 registers
// made ptxas spill (20-136 bytes a thread), and above it would take 64+.
template <int MAX_BATCH>
struct PrefetchedX {
    using X = XSplit<MAX_BATCH>;
    static_assert(X::ROUNDS == 1, "one round a stage");
    float v[X::PER_LANE];
    float g[X::PER_LANE];
    int first_block;
    int blocks;

    __device__ __forceinline__ void load(
        const float* __restrict__ x, int k, int batch, int first, int count, int lane,
        const float* __restrict__ norm_weight) {
        first_block = first;
        blocks = count;
        const int b = X::pair(lane, 0) / STAGE_BLOCKS;
        const int column = X::column(lane, 0, first);
        const bool live = X::live(lane, 0, batch, count);
        load_floats<X::PER_LANE>(x + static_cast<long long>(b) * k + column, live, v);
        if (norm_weight != nullptr)
            load_floats<X::PER_LANE>(norm_weight + column, live, g);
    }

    template <typename Block>
    __device__ __forceinline__ void quantize(
        int batch, uint8_t* xs, int lane, bool norm, const float* scale) {
        const int b = X::pair(lane, 0) / STAGE_BLOCKS;
        const bool live = X::live(lane, 0, batch, blocks);
        float values[X::PER_LANE];
        const float s = norm && live ? scale[b] : 0.f;
#pragma unroll
        for (int j = 0; j < X::PER_LANE; ++j) values[j] = norm ? v[j] * s * g[j] : v[j];
        quantize_round<Block, MAX_BATCH>(values, 0, live, xs, lane);
    }
};

// acc[b] += the lane's row . x[b] over one stage (FULL: all 8 of its blocks).
template <typename Block, int MAX_BATCH, bool ALIGNED, bool FULL>
__device__ __forceinline__ void compute_stage(
    const uint8_t* slot, int shift, int blocks, int batch, const uint8_t* xs,
    float (&acc)[MAX_BATCH]) {
    constexpr bool SPLIT = MAX_BATCH < 8;
    const uint4* xq = reinterpret_cast<const uint4*>(xs);
    const XRecord* records = reinterpret_cast<const XRecord*>(xs + MAX_BATCH * STAGE_BLOCKS * 32);
#pragma unroll
    for (int i = 0; i < STAGE_BLOCKS; ++i) {
        if (!FULL && i >= blocks) break;
        Weights<Block> wb;
        if constexpr (ALIGNED)
            block_aligned<Block>(reinterpret_cast<const uint4*>(slot), i, wb);
        else
            block_shifted<Block>(slot, shift, i, wb);
        const Unpacked<Block, SPLIT> u(wb);
#pragma unroll
        for (int b = 0; b < MAX_BATCH; ++b) {
            // The wrapper runs a batch on the smallest tier that holds it, so rows up to
            // MAX_BATCH / 2 always exist.
            if (b > MAX_BATCH / 2 && b >= batch) break;
            const int pair = b * STAGE_BLOCKS + i;
            acc[b] = block_dot<Block, SPLIT>(wb, u, xq + 2 * pair, records[pair], acc[b]);
        }
    }
}

// Where each of a lane's copies of a stage comes from: the lane copies granules lane + 32 j of
// the stage's [32 rows][GRANULES] granules, whose addresses differ from stage to stage by the
// stage's bytes alone.
template <int GRANULES>
struct CopyPlan {
    uint32_t offset[GRANULES];  // from `base`: the row's 16-byte boundary at or below its start
    const uint8_t* base;        // the first row's boundary

    __device__ __forceinline__ CopyPlan(
        const uint8_t* w, const RowMap& rows, long long row_bytes, int lane) {
        const long long first = (rows.row(0) * row_bytes) & ~15LL;
        base = w + first;
#pragma unroll
        for (int j = 0; j < GRANULES; ++j) {
            const int i = lane + 32 * j;
            const long long row = rows.row(i / GRANULES);
            offset[j] =
                static_cast<uint32_t>(((row * row_bytes) & ~15LL) - first + 16 * (i % GRANULES));
        }
    }
};

// `ready` runs in every warp after the warp's first weight copies are issued and before x is
// read: the wait for the prior grid (weights are not written by any kernel of a step, so their
// copies may start while the kernel before is still running) and the norm scales.
template <typename Block, int MAX_BATCH, bool ALIGNED, typename Ready>
__device__ __forceinline__ void warp_rows(
    const uint8_t* __restrict__ w, const float* __restrict__ x, const RowMap& rows,
    int k, int batch, uint8_t* ring, uint8_t* xs, float (&acc)[MAX_BATCH],
    const float* __restrict__ g, const float* scale, Ready ready) {
    constexpr int BYTES = static_cast<int>(sizeof(Block));
    constexpr int GRANULES = ALIGNED ? Stage<Block>::granules_aligned : Stage<Block>::granules_general;
    constexpr int STAGE_BYTES = 32 * GRANULES * 16;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    const int blocks = k / 32;
    const long long row_bytes = static_cast<long long>(blocks) * BYTES;
    const int stages = (blocks + STAGE_BLOCKS - 1) / STAGE_BLOCKS;
    const int mine = warp < stages ? (stages - warp + warps - 1) / warps : 0;

    const CopyPlan<GRANULES> plan(w, rows, row_bytes, lane);
    const uint32_t ring_address = smem_address(ring) + 16 * lane;
    // The last stage of a row may be short; its copies skip granules past the row's bytes,
    // which may lie past the end of W. (Unaligned rows' full stages copy one granule past
    // their piece at most, which still lies in the row: its last stage is short.)
    auto issue = [&](int t) {
        if (t >= mine) return;
        const int first_block = (warp + t * warps) * STAGE_BLOCKS;
        const uint8_t* src = opaque(plan.base + static_cast<long long>(first_block) * BYTES);
        const uint32_t dst = ring_address + (t % STAGES) * STAGE_BYTES;
        const int in_stage = min(STAGE_BLOCKS, blocks - first_block);
        if (in_stage == STAGE_BLOCKS) {
#pragma unroll
            for (int j = 0; j < GRANULES; ++j) copy16(dst + 512 * j, src + plan.offset[j]);
        } else {
            const int piece = in_stage * BYTES;
#pragma unroll
            for (int j = 0; j < GRANULES; ++j) {
                const int i = lane + 32 * j;
                const long long row = rows.row(i / GRANULES);
                const int shift = static_cast<int>((row * row_bytes) & 15);
                if (16 * (i % GRANULES) < shift + piece)
                    copy16(dst + 512 * j, src + plan.offset[j]);
            }
        }
    };

    const long long my_row = rows.row(lane);
    const int shift = ALIGNED ? 0 : static_cast<int>((my_row * row_bytes) & 15);
    const uint8_t* my_slot = ring + lane * GRANULES * 16;
#pragma unroll
    for (int t = 0; t < STAGES; ++t) {
        issue(t);
        commit();
    }
    ready();
    // Tier 1 of the 4-bit types loads the x of stage t + 1 before computing stage t
    // (PrefetchedX); Q8_0's 8 words a block leave no registers for it (ptxas spilled).
    constexpr bool PREFETCH = MAX_BATCH == 1 && Weights<Block>::q4;
    PrefetchedX<PREFETCH ? MAX_BATCH : 1> next;
    auto prefetch = [&](int t) {
        const int first_block = (warp + t * warps) * STAGE_BLOCKS;
        next.load(x, k, batch, first_block, min(STAGE_BLOCKS, blocks - first_block), lane, g);
    };
    if (PREFETCH && mine > 0) prefetch(0);
    for (int t = 0; t < mine; ++t) {
        const int first_block = (warp + t * warps) * STAGE_BLOCKS;
        const int in_stage = min(STAGE_BLOCKS, blocks - first_block);
        if constexpr (PREFETCH) {
            next.template quantize<Block>(batch, xs, lane, g != nullptr, scale);
            if (t + 1 < mine) prefetch(t + 1);
        } else {
            quantize_x<Block, MAX_BATCH>(x, k, batch, first_block, in_stage, xs, lane, g, scale);
        }
        wait_copies<STAGES - 1>();
        __syncwarp();
        const uint8_t* slot = my_slot + (t % STAGES) * STAGE_BYTES;
        if (in_stage == STAGE_BLOCKS)
            compute_stage<Block, MAX_BATCH, ALIGNED, true>(slot, shift, in_stage, batch, xs, acc);
        else
            compute_stage<Block, MAX_BATCH, ALIGNED, false>(slot, shift, in_stage, batch, xs, acc);
        __syncwarp();  // the ring slot and xs are free again
        issue(t + STAGES);
        commit();
    }
    wait_copies<0>();
}

#include "quant_gemv_units.cuh"
#include "quant_gemv_super.cuh"

// The rows' rms scales, 1 / sqrt(mean(h^2) + eps), one warp a row: from the producer's sums
// over 32-column groups where there are some (K / 32 floats a row), else from x itself.
template <int MAX_BATCH>
__device__ __forceinline__ void norm_scales(
    const float* __restrict__ x, int k, int batch, const Fusion& f, float* scale) {
    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    const int groups = k / 32;
    for (int b = threadIdx.x >> 5; b < batch; b += warps) {
        float sum_sq = 0.f;
        if (f.norm_partials != nullptr) {
            const float* p = f.norm_partials + static_cast<long long>(b) * groups;
            for (int i = lane; i < groups; i += 32) sum_sq += __ldg(p + i);
        } else {
            const float4* row = reinterpret_cast<const float4*>(x + static_cast<long long>(b) * k);
            for (int i = lane; i < k / 4; i += 32) {
                const float4 h = __ldg(row + i);
                sum_sq += h.x * h.x + h.y * h.y + h.z * h.z + h.w * h.w;
            }
        }
        for (int offset = 16; offset > 0; offset >>= 1)
            sum_sq += __shfl_xor_sync(0xffffffffu, sum_sq, offset);
        if (lane == 0) scale[b] = rsqrtf(sum_sq / static_cast<float>(k) + f.eps);
    }
}

// Add the biases of rows row0 and row1 (pair i of their head) of a token's fused q/k/v output
// to (v0, v1), rotate the pair as rope.cu does, and store the k and v values in the cache.
__device__ __forceinline__ void rope_pair(
    const Fusion& f, long long row0, long long row1, int i, int b, float& v0, float& v1) {
    const int q_rows = f.n_q_heads * f.head_dim;
    const int kv_rows = f.n_kv_heads * f.head_dim;
    if (f.bias != nullptr) {
        v0 += __ldg(f.bias + row0);
        v1 += __ldg(f.bias + row1);
    }
    if (row0 < q_rows + kv_rows && 2 * i < f.rot_dim) {
        const double angle = static_cast<double>(__ldg(f.positions + b)) * __ldg(f.inv_freq + i);
        double sd, cd;
        sincos(angle, &sd, &cd);
        const float c = static_cast<float>(cd);
        const float s = static_cast<float>(sd);
        const float r0 = v0 * c - v1 * s;
        const float r1 = v0 * s + v1 * c;
        v0 = r0;
        v1 = r1;
    }
    const long long slot = __ldg(f.slots + b);
    if (row0 >= q_rows && slot >= 0) {
        const bool is_v = row0 >= q_rows + kv_rows;
        half* cache = is_v ? f.v_cache : f.k_cache;
        const long long at = slot * kv_rows - q_rows - (is_v ? kv_rows : 0);  // + row: its place
        cache[at + row0] = __float2half_rn(v0);
        cache[at + row1] = __float2half_rn(v1);
    }
}

// A warp's ring: (for the tuned formats) 16-byte-aligned rows need no room for a start inside
// the first granule.
template <typename Block>
__device__ __host__ constexpr int ring_bytes_of(bool aligned) {
    if constexpr (IsSuperFormat<Block>::value)
        return SuperStage<Block>::ring;
    else if constexpr (IsUnitFormat<Block>::value)
        return UnitStage<Block>::ring;
    else
        return aligned ? Stage<Block>::ring_aligned : Stage<Block>::ring_general;
}

template <typename Block, int MAX_BATCH>
__device__ __forceinline__ void gemv(
    const uint8_t* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int n,
    int k, int batch, const Fusion& f, const OutputAt& place) {
    if (n <= 0) {
        ember::await_prior_grid();  // a kernel that does not wait would break the chain
        return;
    }
    extern __shared__ __align__(16) uint8_t smem[];
    __shared__ float scale[MAX_BATCH];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    // The tuned formats' rows are K / 32 blocks (the unit formats' ring ignores alignment).
    const long long row_bytes = static_cast<long long>(k / 32) * static_cast<int>(sizeof(Block));
    const bool aligned = (row_bytes & 15) == 0;
    const int ring_bytes = ring_bytes_of<Block>(aligned);
    uint8_t* ring = smem + warp * ring_bytes;
    uint8_t* xs = smem + warps * ring_bytes + warp * X_BYTES<MAX_BATCH>;
    auto ready = [&]() {
        ember::await_prior_grid();
        if (f.norm_weight != nullptr) {
            norm_scales<MAX_BATCH>(x, k, batch, f, scale);
            __syncthreads();
        }
    };
    const RowMap rows(n, f.out == SWIGLU ? n : f.out == ROPE_NEOX ? f.head_dim : 0);
    float acc[MAX_BATCH] = {};
    if constexpr (IsSuperFormat<Block>::value)
        warp_rows_super<Block, MAX_BATCH>(
            w, x, rows, k, batch, ring, xs, acc, f.norm_weight, scale, ready);
    else if constexpr (IsUnitFormat<Block>::value)
        warp_rows_units<Block, MAX_BATCH>(
            w, x, rows, k, batch, ring, xs, acc, f.norm_weight, scale, ready);
    else if (aligned)
        warp_rows<Block, MAX_BATCH, true>(
            w, x, rows, k, batch, ring, xs, acc, f.norm_weight, scale, ready);
    else
        warp_rows<Block, MAX_BATCH, false>(
            w, x, rows, k, batch, ring, xs, acc, f.norm_weight, scale, ready);

    // The warps' partial sums, in the rings (every warp is done with its own).
    __syncthreads();
    float* partial = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int b = 0; b < MAX_BATCH; ++b) partial[(warp * MAX_BATCH + b) * 32 + lane] = acc[b];
    __syncthreads();
    auto total = [&](int b, int r) {
        float s = 0.f;
        for (int v = 0; v < warps; ++v) s += partial[(v * MAX_BATCH + b) * 32 + r];
        return s;
    };
    if (f.out == SWIGLU) {
        const long long half = n / 2;
        for (int t = threadIdx.x; t < MAX_BATCH * 16; t += blockDim.x) {
            const int b = t / 16;
            const int r = t % 16;
            const long long j = rows.first + r;
            if (b >= batch || j >= half) continue;
            const float gate = total(b, r);
            y[b * static_cast<long long>(place.y_stride) + j] =
                gate / (1.0f + expf(-gate)) * total(b, r + 16);
        }
    } else if (f.out == ROPE || f.out == ROPE_NEOX) {
        const bool neox = f.out == ROPE_NEOX;
        for (int t = threadIdx.x; t < MAX_BATCH * 16; t += blockDim.x) {
            const int b = t / 16;
            const int r = t % 16;
            // Lanes r and r + 16 (NEOX, RowMap's pairs) or 2r and 2r + 1 hold the pair.
            const int r0 = neox ? r : 2 * r;
            const int r1 = neox ? r + 16 : 2 * r + 1;
            if (b >= batch || (neox ? rows.first + r >= n / 2 : rows.first + r0 >= n)) continue;
            const long long row0 = neox ? rows.row(r0) : rows.first + r0;
            const long long row1 = neox ? rows.row(r1) : row0 + 1;
            const int e = static_cast<int>(row0 % f.head_dim);  // row_offset: whole heads
            float v0 = total(b, r0);
            float v1 = total(b, r1);
            const long long stacked = place.row_offset;  // row0's row in the q|k|v stack
            rope_pair(f, stacked + row0, stacked + row1, neox ? e : e / 2, b, v0, v1);
            y[b * static_cast<long long>(place.y_stride) + row0] = v0;
            y[b * static_cast<long long>(place.y_stride) + row1] = v1;
        }
    } else {
        // A warp's 32 threads share b (blockDim is whole warps), so b < batch is warp-uniform.
        for (int t = threadIdx.x; t < MAX_BATCH * 32; t += blockDim.x) {
            const int b = t / 32;
            const int r = t % 32;
            if (b >= batch) continue;
            float v = 0.f;
            if (rows.first + r < n) {
                float* out = y + static_cast<long long>(b) * place.y_stride + rows.first + r;
                v = total(b, r);
                if (f.out == ADD) v += *out;
                *out = v;
            }
            if (f.out_partials != nullptr) {
                float sum_sq = v * v;
                for (int offset = 16; offset > 0; offset >>= 1)
                    sum_sq += __shfl_xor_sync(0xffffffffu, sum_sq, offset);
                if (r == 0) f.out_partials[static_cast<long long>(b) * gridDim.x + blockIdx.x] = sum_sq;
            }
        }
    }
}

}  // namespace ember_gemv

EMBER_EXPORT_STRUCT(gemv_fusion, ember_gemv::Fusion, norm_weight, norm_partials, out_partials,
                    positions, slots, k_cache, v_cache, inv_freq, bias, out, eps, n_q_heads,
                    n_kv_heads, head_dim, rot_dim)
EMBER_EXPORT_STRUCT(gemv_output_at, ember_gemv::OutputAt, y_stride, row_offset)

// One kernel per block type and batch tier: registers grow with the batch, so batch 1 must not
// pay for batch 8. Launch grid ceil(n / 32) (swiglu: ceil(n / 2 / 16)), block 32 * warps
// (warps <= THREADS / 32), dynamic shared memory warps * (ring + x) bytes (the exported
// warp_bytes); batch <= MAX_BATCH. Either bound leaves 128 registers a thread.
#define EMBER_QUANT_GEMV(TYPE, MAX_BATCH, THREADS, MIN_BLOCKS)                                 \
    extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)                          \
        quant_gemv_##TYPE##_b##MAX_BATCH(                                                      \
            const uint8_t* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,  \
            int n, int k, int batch, const ember_gemv::Fusion f,                                \
            const ember_gemv::OutputAt place) {                                                 \
        ember_gemv::gemv<ember::block_##TYPE, MAX_BATCH>(w, x, y, n, k, batch, f, place);       \
    }                                                                                          \
    EMBER_EXPORT_PARAMS(quant_gemv_##TYPE##_b##MAX_BATCH)

// Every tier of a type, (MAX_BATCH, THREADS, MIN_BLOCKS): 512-thread bounds for tiers 1-2,
// 256 x 2 blocks above (512 there cost 20-25 % at tier 8).
#define EMBER_GEMV_TIERS(X, TYPE) \
    X(TYPE, 1, 512, 1) X(TYPE, 2, 512, 1) X(TYPE, 4, 256, 2) X(TYPE, 8, 256, 2)
#define EMBER_GEMV_ALL(X)                                                                    \
    EMBER_GEMV_TIERS(X, q4_0) EMBER_GEMV_TIERS(X, q4_1) EMBER_GEMV_TIERS(X, q8_0)              \
    EMBER_GEMV_TIERS(X, q5_0) EMBER_GEMV_TIERS(X, q5_1) EMBER_GEMV_TIERS(X, q4_k)              \
    EMBER_GEMV_TIERS(X, q5_k) EMBER_GEMV_TIERS(X, q6_k)

EMBER_GEMV_ALL(EMBER_QUANT_GEMV)

// What quant_gemv.py sizes launches by. Per tier: MAX_BATCH, THREADS, MIN_BLOCKS and the static
// shared memory (the rows' norm scales). Per kernel: its block bytes and tier, then a warp's
// dynamic shared memory (its ring and one stage of x) for 16-byte-aligned rows, and for others.
#define EMBER_GEMV_TIER(TYPE, MAX_BATCH, THREADS, MIN_BLOCKS) \
    MAX_BATCH, THREADS, MIN_BLOCKS, static_cast<int>(sizeof(float) * MAX_BATCH),
#define EMBER_GEMV_WARP_BYTES(TYPE, MAX_BATCH, THREADS, MIN_BLOCKS)                           \
    static_cast<int>(sizeof(ember::block_##TYPE)), MAX_BATCH,                                  \
        ember_gemv::ring_bytes_of<ember::block_##TYPE>(true) + ember_gemv::X_BYTES<MAX_BATCH>, \
        ember_gemv::ring_bytes_of<ember::block_##TYPE>(false) + ember_gemv::X_BYTES<MAX_BATCH>,
EMBER_EXPORT_CONST(tiers, EMBER_GEMV_TIERS(EMBER_GEMV_TIER, q4_0))
EMBER_EXPORT_CONST(warp_bytes, EMBER_GEMV_ALL(EMBER_GEMV_WARP_BYTES))
EMBER_EXPORT_CONST(rows_per_block, ember_gemv::ROWS)
EMBER_EXPORT_CONST(stage_blocks, ember_gemv::STAGE_BLOCKS)  // GGUF blocks of a row per stage
