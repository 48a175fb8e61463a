// Quantised GEMM with tensor cores, for prefill and decode batches above quant_gemv's:
// y[m, n] = sum_k x[m, k] * W[n, k], W the raw GGUF bytes of a Q4_0, Q4_1 or Q8_0 tensor [N, K]
// (row-major, 32 weights per block), x [M, K] and y [M, N] float32 row-major.
//
// A block of 256 threads computes a BM x BN tile of y with mma.sync.m16n8k16 (fp16 in, fp32
// accumulate). Its 8 warps are WARPS_M x WARPS_N x WARPS_K: each warp owns a (BM / WARPS_M) x
// (BN / WARPS_N) sub-tile and every WARPS_K-th quant block of each K step (the K-warps' sums are
// added through shared memory at the end). A warp dequantises each W fragment once and uses it
// for all its m16 tiles, so tall warp tiles (64 rows) spend little on dequantising.
//
// The K loop moves KB quant blocks (32 * KB weights) per step through shared memory:
// - W: raw bytes, STAGES steps deep, copied with cp.async. A row's KB blocks are contiguous but
//   only 2-byte aligned, so each row is copied as the 16-byte-aligned granules that hold it and
//   remembers its offset (< 16) in the first one. Each lane then reads the bytes of its own mma
//   B fragment straight from there and dequantises them in registers (MmaFragment in
//   common.cuh): no fp16 copy of W.
// - x: rounded to fp16 into a double buffer that ldmatrix reads as mma A fragments. Tiles of few
//   rows (X_ASYNC) copy x as float32 with cp.async in the same STAGES-deep pipeline as W, and
//   each thread converts the elements it copied itself; larger tiles load x into registers one
//   step ahead, which costs no shared-memory bandwidth where that is the limit.
// One __syncthreads per step: after it, the step's W and x are visible, and every warp is done
// with the previous step's buffers, which that step's copies then overwrite.
//
// The formats of quant_formats.cuh (Q5_0, Q5_1: one 32-weight unit a block; Q4_K, Q5_K, Q6_K:
// eight a 256-weight super-block) are read a unit at a time (unit_fragment; super_fragment for
// the super-blocks, whose units pair with x's columns in their own order, Tile::PERMUTED). A
// super-block is one W step: its bytes (the header of scales and minimums with the codes) are
// copied whole, once. Where its x tile (BM x 256) would not fit (tiles of 64 and 128 rows), x
// goes PARTS steps of UK units a W step (x_step_units: 64 weights for 64 rows, 32 for 128, as the 32-weight
// formats' steps of those tiles), each with its own barrier, all of them reading the one W stage. A K-warp takes the same units of a
// super-block in the same order however many parts it is cut into. Those tiles (Q4_K's and
// Q6_K's) decode each super-block's scales and minimums once, into a table in the stage
// (Tile::SCALE_TABLE), between two of the barriers the x steps already have, instead of in every
// lane for every fragment.
//
// Split-K (gridDim.z > 1): split z takes a contiguous share of the K steps, writes its tile's
// sums to `partials`, and the last split of a tile to arrive (a counter per tile) adds all the
// splits' sums in split order (the same result whichever is last), writes y, and sets the
// counter back to zero for the next launch.
//
// Slices (the _sliced kernels, with `slices` > 1 and gridDim.z == 1; the others ignore
// `slices`, as the loop would cost their larger tiles registers): the block runs the same
// contiguous shares of the K steps itself, one after another, each from a zero accumulator, and
// adds each share's sums into y in share order starting from +0 — the very additions the
// split-K fix-up makes. So a launch split `slices` ways and an unsplit launch of `slices` slices
// give y bit for bit the same, and the host can fix a product's K shares by its shape alone
// (batch-invariant mode, docs/batch_invariance.md) and still choose per launch whether blocks or one block run them.
//
// Granules are 16-byte aligned and hold at least one byte of W, so the few bytes copied past
// either end of a row's blocks never leave W's pages. Rows and columns past M and N are clamped
// to the last ones on loads and skipped on stores.
#include "common.cuh"
#include "interface.cuh"
#include "quant_formats.cuh"

// A named namespace, not an anonymous one: internal-linkage names embed a hash of the source
// path, which would make the PTX differ between checkouts and fail the artifact check.
namespace ember_gemm {

constexpr int THREADS = 256;

// A tile shape, one per kernel suffix. ID is its position in quant_gemm.py's GemmTile, which
// repeats BM, BN and KB and checks them against the exported layouts (EMBER_GEMM_LAYOUT).
// STAGES is as many W (and x) steps as fit BUDGET bytes of shared memory, at most MAX_STAGES.
template <int ID_, int BM_, int BN_, int WARPS_M_, int WARPS_N_, int WARPS_K_, int KB_,
          bool X_ASYNC_, int BUDGET_, int MAX_STAGES_, int MIN_BLOCKS_>
struct Shape {
    static constexpr int ID = ID_, BM = BM_, BN = BN_, KB = KB_;
    static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, WARPS_K = WARPS_K_;
    static constexpr bool X_ASYNC = X_ASYNC_;
    static constexpr int BUDGET = BUDGET_, MAX_STAGES = MAX_STAGES_, MIN_BLOCKS = MIN_BLOCKS_;
};

// The first tiles (m16 .. m128) as they were before split-K and dynamic shared memory: every
// warp covers all BM rows of 8 or 16 columns, 48 KB of shared memory. Kept to compare against.
struct m16 : Shape<0, 16, 32, 1, 4, 2, 4, false, 48 * 1024, 8, 2> {};
struct m32 : Shape<1, 32, 32, 1, 4, 2, 4, false, 48 * 1024, 8, 2> {};
struct m64 : Shape<2, 64, 64, 1, 4, 2, 2, false, 48 * 1024, 8, 2> {};
struct m128 : Shape<3, 128, 128, 1, 8, 1, 1, false, 48 * 1024, 8, 2> {};
// Decode batches of up to 16 and 32 rows, bound by reading W: 16 x 32 and 32 x 32 warp tiles,
// two K-warps, x and W both copied ahead so that no load waits on the one before it (4-6 steps,
// 14-23 KB of W in flight per block); split-K gives small N enough blocks. 128 columns: x's
// float32 stage costs BM * 128 bytes per block of K whatever BN is, so wide tiles leave more of
// the budget to W.
struct s16 : Shape<4, 16, 128, 1, 4, 2, 2, true, 96 * 1024, 8, 2> {};
struct s32 : Shape<5, 32, 128, 1, 4, 2, 2, true, 96 * 1024, 8, 2> {};
// 33-128 rows: 64 x 32 warp tiles (8 mma per dequantised fragment, 4 per ldmatrix). t64 has
// more blocks, w64 reads x (float32, from L2) half as often per weight.
struct t64 : Shape<6, 64, 128, 1, 4, 2, 2, false, 96 * 1024, 6, 2> {};
struct w64 : Shape<7, 64, 256, 1, 8, 1, 2, false, 96 * 1024, 6, 2> {};
// Prefill: 128 x 128 with 64 x 32 warp tiles, two blocks per SM; 128 x 256 with 64 x 64 warp
// tiles (half the x traffic and ldmatrix per mma of the former), one block per SM.
struct t128 : Shape<8, 128, 128, 2, 4, 1, 1, false, 96 * 1024, 6, 2> {};
struct w128 : Shape<9, 128, 256, 2, 4, 1, 1, false, 96 * 1024, 6, 1> {};

// Batch-invariant mode (quant_gemm.py's INVARIANT_TILES) runs s16, s32 or t64 by the rows of x,
// with K shares fixed by the product's shape: a row's sums are then the same mma in the same
// order whichever of them runs it (the same K-warps over the same blocks of every step, the same
// fp16 x and W fragments, the K-warps' sums added in one order), wherever the row sits. (A
// super-block is every tile's W step; t64 computes it in x steps of fewer units, and Tile
// asserts that every x step holds a multiple of WARPS_K units, so a K-warp still takes units
// wk, wk + WARPS_K, ... of each super-block in that order.)
static_assert(s16::WARPS_K == s32::WARPS_K && s16::WARPS_K == t64::WARPS_K &&
                  s16::KB == s32::KB && s16::KB == t64::KB,
              "the batch-invariant tiles must share their K-warps and quant blocks per step");

constexpr int cmax(int a, int b) { return a > b ? a : b; }
constexpr int cmin(int a, int b) { return a < b ? a : b; }

// 32-weight units a block holds: the formats of quant_formats.cuh say; Q4_0/Q4_1/Q8_0 are one.
// `format`: the block is read through ember::Format (unit_fragment) or SuperUnit (super_fragment).
template <typename Block, typename = void>
struct BlockUnits {
    static constexpr int value = 1;
    static constexpr bool format = false;
};
template <typename Block>
struct BlockUnits<Block, decltype(void(ember::Format<Block>::UNITS))> {
    static constexpr int value = ember::Format<Block>::UNITS;
    static constexpr bool format = true;
};

// Shared memory a super-block format's tile may take when its K step is a whole super-block
// (256 weights, the x tile 4-8 times a 32-weight format's): it fits only with few rows of x.
constexpr int SUPER_BUDGET = 200 * 1024;
// A super-block format's taller tiles compute a super-block in PARTS steps of x (below) and
// take their share of an SM's 228 KB (H100, H200), less the driver's 1 KB a block, so that
// MIN_BLOCKS of them fit it.
constexpr int SM_SHARED = 228 * 1024;
// Float4s of x a thread holds in registers for the next step: at most MAX_X_VECS, and where a
// super-block's x tile would take more, steps of at most SPLIT_X_VECS, as the 32-weight formats'
// tall tiles take (beside their 64 accumulators a thread, 8 spilled hundreds of bytes there).
constexpr int MAX_X_VECS = 8;
constexpr int SPLIT_X_VECS = 4;

// The units of 32 weights a K step of x takes: a whole W step (KB blocks of UNITS units) where
// x is copied ahead (X_ASYNC) or its float4s fit MAX_X_VECS per thread, else the most of them
// (halving) that fit SPLIT_X_VECS, so that a super-block is computed in several steps of x.
template <int UNITS, typename S>
constexpr int x_step_units() {
    const int units = (UNITS == 1 ? S::KB : 1) * UNITS;
    auto vecs = [](int uk) { return S::BM * 32 * uk / 4 / THREADS; };
    int uk = units;
    if (!S::X_ASYNC && vecs(uk) > MAX_X_VECS)
        while (uk > 1 && vecs(uk) > SPLIT_X_VECS) uk /= 2;
    return uk;
}

template <typename Block>
struct IsQ5K {
    static constexpr bool value = false;
};
template <>
struct IsQ5K<ember::block_q5_k> {
    static constexpr bool value = true;
};

template <typename Block, typename S>
struct Tile {
    static constexpr int BM = S::BM, BN = S::BN;
    // A W step: KB GGUF blocks of UNITS units of 32 weights each; a super-block is a W step.
    // x goes PARTS steps (of UK units) a W step: one, but for super-blocks on tall tiles. The
    // W pipeline (stages, copies, K shares) counts W steps; x and compute count x steps.
    static constexpr int UNITS = BlockUnits<Block>::value;
    static constexpr int KB = UNITS == 1 ? S::KB : 1;
    static constexpr int UK = x_step_units<UNITS, S>();
    static constexpr int PARTS = KB * UNITS / UK;
    static constexpr int WARPS_M = S::WARPS_M, WARPS_N = S::WARPS_N, WARPS_K = S::WARPS_K;
    static constexpr int WARPS_MN = WARPS_M * WARPS_N;
    static constexpr bool X_ASYNC = S::X_ASYNC;
    // x's columns in each unit in super_fragment's order (the super-block formats), else in K's.
    static constexpr bool PERMUTED = UNITS > 1;
    // A super-block's scales decoded once per W step into a table in its stage (SuperUnit), where
    // a W step spans several x steps: the table of W step i is decoded after the last x step
    // barrier of step i - 1 and read after the next barrier. (With one x step a W step, the
    // table would cost a barrier, or a stage of copies in flight, a step.) Not Q5_K's: on an
    // H200 its tall tiles took 5-10 % longer with the table (its 176-byte blocks' copies are the
    // longest, and the table waits for the next stage a part earlier), where Q6_K's took 27 %
    // less and Q4_K's the same or less (scripts/bench_quant_gemm.py, 2026-12-07).
    static constexpr bool SCALE_TABLE = PERMUTED && PARTS > 1 && !IsQ5K<Block>::value;
    static constexpr int WM = BM / WARPS_M;  // rows per warp
    static constexpr int WN = BN / WARPS_N;  // columns per warp
    static constexpr int MT = WM / 16;       // m16 tiles per warp
    static constexpr int NT = WN / 8;        // n8 tiles per warp
    static constexpr int BLOCK_BYTES = static_cast<int>(sizeof(Block));
    // x: fp16 [2][BM][XS], an x step each. 16 bytes of padding per row put the 8 rows of an
    // ldmatrix matrix in distinct bank quads (the row pitch is an odd multiple of 16 bytes).
    static constexpr int KS = 32 * UK;
    static constexpr int XS = KS + 8;
    static constexpr int X16_BYTES = 2 * BM * XS * 2;
    static constexpr int X_VECS = BM * KS / 4 / THREADS;  // float4 per thread per step
    // A stage: W raw [BN][W_ROW], then (X_ASYNC) x float32 [X_VECS][THREADS] float4, each
    // thread's own. A row's bytes start up to 14 bytes into its first granule; the pitch is an
    // odd multiple of 16 bytes, so the fragment reads of 8 rows fall in distinct bank quads.
    static constexpr int W_GRANULES = (14 + KB * BLOCK_BYTES + 15) / 16;  // most copies per row
    static constexpr int W_ROW = 16 * (W_GRANULES | 1);
    static constexpr int W_STAGE = BN * W_ROW;
    static constexpr int STAGE = W_STAGE + (X_ASYNC ? X_VECS * THREADS * 16 : 0);
    static constexpr int BUDGET = UNITS == 1   ? S::BUDGET
                                  : PARTS == 1 ? SUPER_BUDGET
                                               : cmin(SUPER_BUDGET, SM_SHARED / S::MIN_BLOCKS - 1024);
    static constexpr int STAGES = cmin((BUDGET - X16_BYTES) / STAGE, S::MAX_STAGES);
    // The K-warps' partial sums, [WARPS_K - 1][WARPS_MN][ACC][32], reuse the buffers at the end.
    static constexpr int ACC = MT * NT * 4;
    static constexpr int RED_BYTES = (WARPS_K - 1) * WARPS_MN * ACC * 32 * 4;
    static constexpr int SMEM = cmax(X16_BYTES + STAGES * STAGE, RED_BYTES);
    // Split-K: a tile's sums are BM * BN / 4 float4, in fragment order (warp, m16 x n8 tile,
    // lane); the last split adds them FIX float4 per thread at a time.
    static constexpr int TILE_VECS = BM * BN / 4;
    static constexpr int FIX = cmax(1, cmin(8, TILE_VECS / THREADS));

    // A super-block format runs the shapes whose W stage (a whole super-block per row) and x
    // tile leave it double buffering within BUDGET (on an H100 all but W64 of Q5_K and Q6_K);
    // its other shapes are built as a trap, and export shared memory no GPU has, so
    // quant_gemm.py never launches them.
    static constexpr bool VALID =
        UNITS == 1 ||
        (STAGES >= 2 && (X_ASYNC || X_VECS <= MAX_X_VECS) && X16_BYTES + 2 * STAGE <= BUDGET);
    static constexpr int EXPORTED_SMEM = VALID ? SMEM : 1 << 30;
    static_assert(32 * WARPS_MN * WARPS_K == THREADS, "quant_gemm.py launches 256 threads");
    static_assert(WM % 16 == 0 && WN % 8 == 0 && BM % WARPS_M == 0 && BN % WARPS_N == 0,
                  "whole mma tiles per warp");
    static_assert(UK % WARPS_K == 0, "every K-warp takes the same number of units per step");
    static_assert(PARTS * UK == KB * UNITS, "x steps split a W step evenly");
    static_assert(UNITS > 1 || PARTS == 1, "a 32-weight format's W and x steps are one");
    static_assert(PARTS == 1 || (KB == 1 && !X_ASYNC),
                  "x steps split one super-block, x loaded through registers");
    static_assert(BM * KS / 4 % THREADS == 0, "x tile is whole float4s per thread");
    static_assert(W_ROW >= 16 * W_GRANULES && W_ROW % 32 == 16, "W row pitch");
    static_assert(X16_BYTES % 16 == 0 && STAGE % 16 == 0, "16-byte aligned buffers");
    static_assert(!VALID || STAGES >= 2, "W needs at least double buffering");
    static_assert(!VALID || SMEM <= BUDGET, "shared memory budget");
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes, cached in L2 only: W is read once, x is shared between blocks through L2.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

// Lane l gives the address of row l % 16, columns 8 * (l / 16).. of a 16 x 16 fp16 tile; the
// four 8 x 8 matrices land in a[0..3] as mma's A fragment wants them (rows 0-7 / 8-15 of
// columns 0-7, then of columns 8-15).
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&a)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(addr)
                 : "memory");
}

// c += a * b for a 16 x 16 fp16 A, 16 x 8 fp16 B (column-major) and 16 x 8 fp32 C.
__device__ __forceinline__ void mma(
    float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const half2 h = __floats2half2_rn(lo, hi);
    uint32_t bits;
    memcpy(&bits, &h, sizeof bits);
    return bits;
}

__device__ __forceinline__ void add4(float4& s, const float4& v) {
    s.x += v.x;
    s.y += v.y;
    s.z += v.z;
    s.w += v.w;
}

// Outputs (row, col) and (row, col + 1), skipping those past M and N; y's rows are ldy apart.
__device__ __forceinline__ void store_pair(
    float* y, int m, int n, int ldy, bool pairs, int row, int col, float a, float b) {
    if (row >= m || col >= n) return;
    float* out = y + static_cast<long long>(row) * ldy + col;
    if (pairs) {
        *reinterpret_cast<float2*>(out) = make_float2(a, b);
    } else {
        out[0] = a;
        if (col + 1 < n) out[1] = b;
    }
}

// y's (row, col) and (row, col + 1) plus a and b, each sum starting from +0 at the first slice:
// the additions, in the order, of the split-K fix-up (which sums into zeros). This thread
// stored the values it reads back, so no barrier is needed between slices.
__device__ __forceinline__ void add_pair(
    float* y, int m, int n, int ldy, bool pairs, int row, int col, bool first, float a,
    float b) {
    if (row >= m || col >= n) return;
    float a0 = 0.0f, b0 = 0.0f;
    if (!first) {
        const float* in = y + static_cast<long long>(row) * ldy + col;
        if (pairs) {
            const float2 v = *reinterpret_cast<const float2*>(in);
            a0 = v.x;
            b0 = v.y;
        } else {
            a0 = in[0];
            if (col + 1 < n) b0 = in[1];
        }
    }
    store_pair(y, m, n, ldy, pairs, row, col, a0 + a, b0 + b);
}

// (a & mask) | bits in one LOP3 (0xea: a & b | c); written out because the compiler splits it
// into two when both constants are immediates.
template <uint32_t MASK>
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t bits) {
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "n"(MASK), "r"(bits));
    return d;
}

// The B operand of mma.m16n8k16 for one block of one weight row, as MmaFragment in common.cuh
// gives it (the same fp16 values, rounded once), in fewer instructions: a high nibble is taken
// where it lies, as fp16 1024 + 16 q, and brought to q by an exact fma (x / 16 - 64), which
// saves two shifts and, with the constant in a register, one of the two logic ops per pair.
template <typename Block>
struct Fragment {
    __device__ static __forceinline__ void load(const uint8_t* block, int t, uint32_t (&b)[4]) {
        ember::MmaFragment<Block>::load(block, t, b);
    }
};

template <typename Block>
__device__ __forceinline__ void q4_fragment_codes(
    const Block& blk, int t, uint32_t lo_bias, uint32_t hi_bias, uint32_t (&b)[4]) {
    constexpr uint32_t EXP = 0x64006400u;        // fp16 1024 in both halves
    constexpr uint32_t SIXTEENTH = 0x2c002c00u;  // fp16 1/16
    const uint32_t v = ember::q4_fragment_bytes(blk.qs, t);
    const uint32_t v8 = v >> 8;
    b[0] = ember::hsub2(and_or<0x000F000Fu>(v, EXP), lo_bias);
    b[1] = ember::hsub2(and_or<0x000F000Fu>(v8, EXP), lo_bias);
    b[2] = ember::hfma2(and_or<0x00F000F0u>(v, EXP), SIXTEENTH, hi_bias);
    b[3] = ember::hfma2(and_or<0x00F000F0u>(v8, EXP), SIXTEENTH, hi_bias);
}

template <>
struct Fragment<ember::block_q4_0> {
    __device__ static __forceinline__ void load(const uint8_t* block, int t, uint32_t (&b)[4]) {
        const auto& blk = *reinterpret_cast<const ember::block_q4_0*>(block);
        // q - 8: 1024 + q - 1032, and (1024 + 16 q) / 16 - 72.
        q4_fragment_codes(blk, t, 0x64086408u, 0xd480d480u, b);
        const uint32_t d = ember::splat_half(blk.d);
#pragma unroll
        for (int i = 0; i < 4; ++i) b[i] = ember::hmul2(b[i], d);
    }
};

template <>
struct Fragment<ember::block_q4_1> {
    __device__ static __forceinline__ void load(const uint8_t* block, int t, uint32_t (&b)[4]) {
        const auto& blk = *reinterpret_cast<const ember::block_q4_1*>(block);
        // q: 1024 + q - 1024, and (1024 + 16 q) / 16 - 64.
        q4_fragment_codes(blk, t, 0x64006400u, 0xd400d400u, b);
        const uint32_t d = ember::splat_half(blk.d);
        const uint32_t m = ember::splat_half(blk.m);
#pragma unroll
        for (int i = 0; i < 4; ++i) b[i] = ember::hfma2(b[i], d, m);
    }
};

// The B fragment (as MmaFragment) of unit u of a quant_formats.cuh block: lane t's weights are
// codes 2t, 2t + 1 of words t / 2 + {0, 2} (the first 16 weights' scale) and {4, 6} (the
// last 16's), each scaled in float32 and rounded to fp16 once.
template <typename Block>
__device__ __forceinline__ void unit_fragment(
    const uint8_t* block, int u, int t, uint32_t (&b)[4]) {
    using F = ember::Format<Block>;
    const ember::UnitScales s = F::scales(block, u);
    const int byte = 2 * (t & 1);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        const uint32_t w = F::word(block, u, (t >> 1) + 2 * p);
        const float scale = p < 2 ? s.lo : s.hi;
        b[p] = pack_half2(fmaf(scale, ember::code_at(w, byte), s.m),
                          fmaf(scale, ember::code_at(w, byte + 1), s.m));
    }
}

// A super-block format's unit as mma B fragments, faster than unit_fragment: lane t's 8 weights
// are codes 8t .. 8t + 7 of the unit, words of 4 contiguous codes, instead of codes 2t, 2t + 1,
// 2t + 8, ... . The x tile holds its columns in the matching order (Tile::PERMUTED, store_x): mma
// pairs column k of x with row k of the fragment, so which weight a k stands for does not
// matter as long as both sides agree. Codes become fp16 as 1024 + code (a byte under the 0x64
// exponent byte, one PRMT a pair) less 1024 + OFFSET, exactly; the unit's scale and minimum are
// fp16 products of the block's fp16 d and 6- or 8-bit sub-block scales, so a weight is one
// HFMA2 of exact operands: scale * code - min rounded once, from a scale and minimum rounded
// once (unit_fragment rounds only the weight; the difference is within fp16's rounding of x).
// Each format's `codes` gives half h of the lane's codes (8t + 4h ..) as the bytes of a word, and
// `scales` the lane's scale and minus minimum as fp16 pairs.
//
// Tiles that compute a super-block in several x steps (Tile::SCALE_TABLE) decode those pairs
// once per W step instead, spread over the block (gemm's decode_scales), into a table of 8
// words a row at byte TABLE_AT of the row's stage: `entry` packs unit u's pairs (the same
// values, computed by `scales` itself) into one word, `table_scales` unpacks a lane's from the
// table. Without it every lane decodes them for every unit and row it reads, the 4 lanes of a
// row the same ones: a large share of a fragment's instructions.
template <typename Block>
struct SuperUnit;

// Both halves of an fp16x2 word its low (high) half. Written as PTX moves, which ptxas folds
// into the HFMA2 that reads them as an operand swizzle (.H0_H0, .H1_H1): no instruction, where
// a byte_perm is a PRMT.
__device__ __forceinline__ uint32_t splat_low(uint32_t v) {
    uint32_t d;
    asm("{.reg .b16 lo, hi; mov.b32 {lo, hi}, %1; mov.b32 %0, {lo, lo};}" : "=r"(d) : "r"(v));
    return d;
}

__device__ __forceinline__ uint32_t splat_high(uint32_t v) {
    uint32_t d;
    asm("{.reg .b16 lo, hi; mov.b32 {lo, hi}, %1; mov.b32 %0, {hi, hi};}" : "=r"(d) : "r"(v));
    return d;
}

// Q4_K and Q5_K blocks are 144 and 176 bytes, whole 16-byte granules, so with W 16-byte aligned
// every block starts 16-byte aligned in a stage (a row's shift is 0) and the header and code
// reads below are aligned vector loads. Their `codes` are Format<Block>::word(b, u, 2t + h)'s
// bits (quant_formats.cuh) read as aligned words, without load_u32_even's 2-byte case.
static_assert(sizeof(ember::block_q4_k) % 16 == 0 && sizeof(ember::block_q5_k) % 16 == 0,
              "Q4_K and Q5_K blocks are whole granules");

// Q4_K/Q5_K's scale and minimum of sub-block u as (d * sc, -(dmin * mn)), each an fp16 pair:
// the 16-byte header is d, dmin, then 12 bytes of packed 6-bit values (scale_min in
// quant_formats.cuh, four sub-blocks at once).
__device__ __forceinline__ void scale_min_pairs(const uint8_t* b, int u, uint32_t& scale,
                                                uint32_t& neg_min) {
    const uint4 h = *reinterpret_cast<const uint4*>(b);
    const uint32_t sc4 =
        u < 4 ? h.y & 0x3F3F3F3Fu : (h.w & 0x0F0F0F0Fu) | ((h.y >> 2) & 0x30303030u);
    const uint32_t mn4 =
        u < 4 ? h.z & 0x3F3F3F3Fu : ((h.w >> 4) & 0x0F0F0F0Fu) | ((h.z >> 2) & 0x30303030u);
    const uint32_t sel = 0x0400u + 0x0101u * static_cast<uint32_t>(u & 3);  // sc, -, mn, -
    const uint32_t sc_mn = ember::hsub2(
        and_or<0x00FF00FFu>(__byte_perm(sc4, mn4, sel), 0x64006400u), 0x64006400u);
    const uint32_t dm = ember::hmul2(sc_mn, h.x);  // (d * sc, dmin * mn)
    scale = __byte_perm(dm, 0, 0x1010);
    neg_min = __byte_perm(dm, 0, 0x3232) ^ 0x80008000u;
}

// Q4_K/Q5_K's table entry: the low halves of the scale and minus-minimum pairs (each pair is one
// value twice), which table_scales splats back.
__device__ __forceinline__ uint32_t scale_min_entry(const uint8_t* b, int u) {
    uint32_t scale, neg_min;
    scale_min_pairs(b, u, scale, neg_min);
    return __byte_perm(scale, neg_min, 0x5410);
}

__device__ __forceinline__ void scale_min_from_table(const uint8_t* table, int u,
                                                     uint32_t& scale, uint32_t& neg_min) {
    const uint32_t e = *reinterpret_cast<const uint32_t*>(table + 4 * u);
    scale = splat_low(e);
    neg_min = splat_high(e);
}

template <>
struct SuperUnit<ember::block_q4_k> {
    static constexpr uint32_t OFFSET = 0x64006400u;  // 1024
    // Past the block: a row's block starts its stage row, and no copy writes beyond it.
    static constexpr int TABLE_AT = 144;
    __device__ static __forceinline__ uint32_t codes(const uint8_t* b, int u, int t, int h) {
        const uint32_t q = *reinterpret_cast<const uint32_t*>(b + 16 + 32 * (u >> 1) + 8 * t + 4 * h);
        return (q >> (4 * (u & 1))) & 0x0F0F0F0Fu;
    }
    __device__ static __forceinline__ void scales(const uint8_t* b, int u, int, uint32_t& scale,
                                                  uint32_t& neg_min) {
        scale_min_pairs(b, u, scale, neg_min);
    }
    __device__ static __forceinline__ uint32_t entry(const uint8_t* b, int u) {
        return scale_min_entry(b, u);
    }
    __device__ static __forceinline__ void table_scales(const uint8_t* table, int u, int,
                                                        uint32_t& scale, uint32_t& neg_min) {
        scale_min_from_table(table, u, scale, neg_min);
    }
};

template <>
struct SuperUnit<ember::block_q5_k> {
    static constexpr uint32_t OFFSET = 0x64006400u;  // 1024
    __device__ static __forceinline__ uint32_t codes(const uint8_t* b, int u, int t, int h) {
        const uint32_t q = *reinterpret_cast<const uint32_t*>(b + 48 + 32 * (u >> 1) + 8 * t + 4 * h);
        const uint32_t hi = *reinterpret_cast<const uint32_t*>(b + 16 + 8 * t + 4 * h);
        return ((q >> (4 * (u & 1))) & 0x0F0F0F0Fu) | (((hi >> u) & 0x01010101u) << 4);
    }
    __device__ static __forceinline__ void scales(const uint8_t* b, int u, int, uint32_t& scale,
                                                  uint32_t& neg_min) {
        scale_min_pairs(b, u, scale, neg_min);
    }
};

template <>
struct SuperUnit<ember::block_q6_k> {
    static constexpr uint32_t OFFSET = 0x64206420u;  // 1056: 1024 + code - 1056 = code - 32
    // Unit u = 4 h + p: weights 32 p .. of half h (Format<block_q6_k>::word's bits). A block is
    // 210 bytes, so its words are only 2-byte aligned in a row.
    // Every word read is 4k bytes into the block, so all share the block's alignment: two
    // aligned words and one PRMT each, without a branch (at 4-byte alignment the PRMT takes
    // the first word whole). The aligned pointer is b less its offset, not b's address masked:
    // a pointer made from an integer loses its address space, and its loads were generic (LD.E,
    // 64-bit addresses: the registers the tall tiles spilled).
    __device__ static __forceinline__ uint32_t codes(const uint8_t* b, int u, int t, int h) {
        const int half = u >> 2, p = u & 3;
        const uint32_t off = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(b)) & 2;
        const uint32_t* w = reinterpret_cast<const uint32_t*>(b - off);
        const uint32_t sel = 0x3210u + off * 0x1111u;  // 0x5432 at +2
        const int lo_at = 16 * half + 8 * (p & 1) + 2 * t + h;  // words from w
        const int hi_at = 32 + 8 * half + 2 * t + h;
        const uint32_t lo = __byte_perm(w[lo_at], w[lo_at + 1], sel);
        const uint32_t hi = __byte_perm(w[hi_at], w[hi_at + 1], sel);
        return ((lo >> (4 * (p >> 1))) & 0x0F0F0F0Fu) | (((hi >> (2 * p)) & 0x03030303u) << 4);
    }
    // One int8 scale a 16 weights: lanes 0-1 hold codes 0-15 of the unit, lanes 2-3 codes 16-31.
    // xor 0x80 makes the scale + 128 in [0, 255], under the 0x64 exponent byte 1152 + scale.
    __device__ static __forceinline__ void scales(const uint8_t* b, int u, int t, uint32_t& scale,
                                                  uint32_t& neg_min) {
        const uint32_t s8 = b[192 + 2 * u + (t >> 1)] ^ 0x80u;
        const uint32_t sc = ember::hsub2((s8 | s8 << 16) | 0x64006400u, 0x64806480u);
        scale = ember::hmul2(sc, ember::splat_half(*reinterpret_cast<const half*>(b + 208)));
        neg_min = 0;
    }
    // The block starts up to 14 bytes into its row, so the bytes past it may be as few as 14;
    // the table takes the 4-aligned 32 at 208, over the block's scales and d (decode_scales reads
    // them all first), which no code read reaches (the last word `codes` reads ends at byte 195
    // past the block's 4-aligned start, itself at most 12 bytes into the row).
    static constexpr int TABLE_AT = 208;
    // Sub-blocks 2u and 2u + 1's scales (lanes 0-1's and 2-3's) as the low and high halves.
    __device__ static __forceinline__ uint32_t entry(const uint8_t* b, int u) {
        uint32_t lo, hi, neg_min;
        scales(b, u, 0, lo, neg_min);
        scales(b, u, 2, hi, neg_min);
        return __byte_perm(lo, hi, 0x5410);
    }
    __device__ static __forceinline__ void table_scales(const uint8_t* table, int u, int t,
                                                        uint32_t& scale, uint32_t& neg_min) {
        scale = splat_low(ember::load_u16(table + 4 * u + 2 * (t >> 1)));
        neg_min = 0;
    }
};

// Unit u of the super-block at `block` as lane t's B fragment (SuperUnit's order): b[2h] and
// b[2h + 1] are codes 0, 1 and 2, 3 of half h's word.
// `scale` and `neg_min` are SuperUnit::scales' pairs for the lane and unit.
template <typename Block>
__device__ __forceinline__ void super_fragment(const uint8_t* block, int u, int t, uint32_t scale,
                                               uint32_t neg_min, uint32_t (&b)[4]) {
    using U = SuperUnit<Block>;
    constexpr uint32_t EXP = 0x64646464u;  // the exponent byte under each code
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const uint32_t codes = U::codes(block, u, t, h);
        b[2 * h] = ember::hfma2(ember::hsub2(__byte_perm(codes, EXP, 0x4140), U::OFFSET), scale,
                                neg_min);
        b[2 * h + 1] = ember::hfma2(ember::hsub2(__byte_perm(codes, EXP, 0x4342), U::OFFSET),
                                    scale, neg_min);
    }
}

template <typename Block, typename Shape, bool SLICED>
__device__ __forceinline__ void gemm(
    const uint8_t* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int m,
    int n, int k, int slices, float* __restrict__ partials, int* __restrict__ counters, int ldy,
    uint8_t* smem) {
    using T = Tile<Block, Shape>;
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int warp_mn = warp % T::WARPS_MN;
    const int wm = warp_mn / T::WARPS_N;
    const int wn = warp_mn % T::WARPS_N;
    const int wk = warp / T::WARPS_MN;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int m0 = blockIdx.x * T::BM;
    const int n0 = blockIdx.y * T::BN;
    const int blocks = k / (32 * T::UNITS);  // per row
    const int steps = (blocks + T::KB - 1) / T::KB;
    const int splits = gridDim.z;
    // The K shares: gridDim.z of them, one a block, or (unsplit) `slices`, all in this block.
    const int shares = SLICED && splits == 1 ? slices : splits;
    auto share_start = [&](int z) {
        return static_cast<int>(static_cast<long long>(z) * steps / shares);
    };
    // quant_gemm.py keeps W's and x's sizes below 2^31 bytes: 32-bit offsets save registers.
    const uint32_t row_bytes = static_cast<uint32_t>(blocks * T::BLOCK_BYTES);

    half* xs = reinterpret_cast<half*>(smem);
    uint8_t* stages = smem + T::X16_BYTES;

    // W rows of step s into stage `slot`: row r's bytes start at byte (start & 15) of its first
    // granule.
    auto copy_w = [&](int s, int slot) {
        const int kb0 = s * T::KB;
        const int bytes = min(T::KB, blocks - kb0) * T::BLOCK_BYTES;
        uint8_t* dst = stages + slot * T::STAGE;
#pragma unroll
        for (int i0 = 0; i0 < T::BN * T::W_GRANULES; i0 += THREADS) {
            const int i = i0 + tid;
            const int r = i / T::W_GRANULES;
            const int q = i - r * T::W_GRANULES;
            const uint32_t start = static_cast<uint32_t>(min(n0 + r, n - 1)) * row_bytes +
                                   static_cast<uint32_t>(kb0 * T::BLOCK_BYTES);
            const uint32_t shift = start & 15;
            if (r < T::BN && 16 * q < static_cast<int>(shift) + bytes)
                cp_async16(smem_addr(dst + r * T::W_ROW + 16 * q), w + (start - shift + 16 * q));
        }
    };

    // SCALE_TABLE: W step s's scale table (SuperUnit) into each row of stage `slot`, whose copies
    // are complete and visible. ROW_THREADS threads of one warp take a row, PER_THREAD units each.
    auto decode_scales = [&](int s, int slot) {
        if constexpr (T::SCALE_TABLE) {
            using U = SuperUnit<Block>;
            constexpr int ROW_THREADS = THREADS / T::BN;
            constexpr int PER_THREAD = T::UNITS / ROW_THREADS;
            static_assert(THREADS % T::BN == 0 && 32 % ROW_THREADS == 0 &&
                              T::UNITS % ROW_THREADS == 0,
                          "whole rows of the table per warp, whole entries per thread");
            static_assert(U::TABLE_AT % 16 == 0 && U::TABLE_AT + 4 * T::UNITS <= T::W_ROW,
                          "a row's table: aligned, within its stage row");
            const int r = tid / ROW_THREADS;
            const int u0 = tid % ROW_THREADS * PER_THREAD;
            uint8_t* row = stages + slot * T::STAGE + r * T::W_ROW;
            const uint32_t start = static_cast<uint32_t>(min(n0 + r, n - 1)) * row_bytes +
                                   static_cast<uint32_t>(s * T::BLOCK_BYTES);
            const uint8_t* block = row + (T::BLOCK_BYTES % 16 == 0 ? 0 : start & 15);
            uint32_t e[PER_THREAD];
#pragma unroll
            for (int i = 0; i < PER_THREAD; ++i) e[i] = U::entry(block, u0 + i);
            // Q6_K's table covers bytes that the row's other threads read.
            __syncwarp();
            uint32_t* table = reinterpret_cast<uint32_t*>(row + U::TABLE_AT) + u0;
            if constexpr (PER_THREAD % 4 == 0) {
#pragma unroll
                for (int i = 0; i < PER_THREAD; i += 4)
                    *reinterpret_cast<uint4*>(table + i) =
                        make_uint4(e[i], e[i + 1], e[i + 2], e[i + 3]);
            } else {
#pragma unroll
                for (int i = 0; i < PER_THREAD; ++i) table[i] = e[i];
            }
        }
    };

    // Element (r, c..c+3) of x step s's tile is this thread's float4 v: x_row(v) + s * KS is
    // its offset in x, valid while x_col(v) + s * KS < k. (x step s is W step s where PARTS is
    // one, else part s % PARTS of W step s / PARTS.)
    auto x_col = [&](int v) { return 4 * ((tid + v * THREADS) % (T::KS / 4)); };
    auto x_row = [&](int v) {
        const int r = (tid + v * THREADS) / (T::KS / 4);
        return static_cast<uint32_t>(min(m0 + r, m - 1) * k + x_col(v));
    };
    // Where this thread's float4 v of an x step goes in an x buffer (halves), worked out once:
    // (the compiler otherwise keeps, and spills, the parts of the sum).
    int x_place[T::X_VECS];
#pragma unroll
    for (int v = 0; v < T::X_VECS; ++v) {
        const int i = tid + v * THREADS;
        const int c = 4 * (i % (T::KS / 4));
        // Super-block formats: x[c .. c + 3] pair with codes 8 t' + 4 h .. of their unit
        // (super_fragment), which b[2 h] and b[2 h + 1] of lane t' hold: columns 2 t' + 16 h
        // (+ 1) and 2 t' + 16 h + 8 (+ 1).
        const int in_unit = c & 31;
        const int col =
            T::PERMUTED ? c - in_unit + 2 * (in_unit >> 3) + 16 * ((in_unit >> 2) & 1) : c;
        x_place[v] = i / (T::KS / 4) * T::XS + col;
    }
    auto store_x = [&](int buf, int v, float4 f) {
        half* at = xs + buf * T::BM * T::XS + x_place[v];
        if constexpr (T::PERMUTED) {
            *reinterpret_cast<uint32_t*>(at) = pack_half2(f.x, f.y);
            *reinterpret_cast<uint32_t*>(at + 8) = pack_half2(f.z, f.w);
        } else {
            *reinterpret_cast<uint2*>(at) = make_uint2(pack_half2(f.x, f.y), pack_half2(f.z, f.w));
        }
    };
    // X_ASYNC: this thread's float4s of step s into stage `slot` (columns past K are skipped:
    // no warp reads the quant blocks they would belong to).
    auto copy_x = [&](int s, int slot) {
        if constexpr (T::X_ASYNC) {
            float4* dst = reinterpret_cast<float4*>(stages + slot * T::STAGE + T::W_STAGE);
#pragma unroll
            for (int v = 0; v < T::X_VECS; ++v) {
                if (x_col(v) + s * T::KS < k)
                    cp_async16(smem_addr(dst + v * THREADS + tid), x + (x_row(v) + s * T::KS));
            }
        }
    };
    auto convert_x = [&](int slot, int buf) {
        if constexpr (T::X_ASYNC) {
            const float4* src =
                reinterpret_cast<const float4*>(stages + slot * T::STAGE + T::W_STAGE);
#pragma unroll
            for (int v = 0; v < T::X_VECS; ++v) store_x(buf, v, src[v * THREADS + tid]);
        }
    };
    // Otherwise x goes through registers, one x step ahead.
    float4 xv[T::X_ASYNC ? 1 : T::X_VECS];
    auto load_x = [&](int s) {
        if constexpr (!T::X_ASYNC) {
#pragma unroll
            for (int v = 0; v < T::X_VECS; ++v) {
                xv[v] = x_col(v) + s * T::KS < k
                            ? __ldg(reinterpret_cast<const float4*>(x + (x_row(v) + s * T::KS)))
                            : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
    };
    auto flush_x = [&](int buf) {
        if constexpr (!T::X_ASYNC) {
#pragma unroll
            for (int v = 0; v < T::X_VECS; ++v) store_x(buf, v, xv[v]);
        }
    };

    // This lane's B rows: n8 tile j of the warp, column g.
    // This K-warp's first block of a step is block wk, at byte wk * BLOCK_BYTES of a row and
    // column 32 wk of x.
    int w_row[T::NT];         // byte offset of the row's block wk in a stage
    uint32_t w_phase[T::NT];  // the row's start in W, mod 16
#pragma unroll
    for (int j = 0; j < T::NT; ++j) {
        const int r = wn * T::WN + 8 * j + g;
        // A unit format's K-warp takes unit wk of a block, at the block's bytes.
        w_row[j] = r * T::W_ROW + (T::UNITS == 1 ? wk * T::BLOCK_BYTES : 0);
        w_phase[j] = static_cast<uint32_t>(min(n0 + r, n - 1)) * row_bytes;
    }
    const uint32_t a_lane =
        smem_addr(xs) + 2 * ((wm * T::WM + (lane & 15)) * T::XS + 8 * (lane >> 4) + 32 * wk);

    float acc[T::MT][T::NT][4] = {};  // (the _sliced kernels zero it for every share)
    // Part p (units p * UK ..) of W step s, from stage `slot` and x buffer `buf`.
    auto compute = [&](int s, int p, int slot, int buf) {
        const int kb0 = s * T::KB;
        const int units = min(T::KB, blocks - kb0) * T::UNITS - p * T::UK;
        const uint8_t* src = stages + slot * T::STAGE;
        const uint32_t a_buf = a_lane + 2 * buf * T::BM * T::XS;
#pragma unroll
        for (int b = 0; b < T::UK; b += T::WARPS_K) {
            if (b + wk >= units) break;
            uint32_t frag[T::NT][4];
#pragma unroll
            for (int j = 0; j < T::NT; ++j) {
                // A row of whole 16-byte blocks starts its stage row (w_phase unused).
                // Super-blocks (Q6_K) take row j = 0's phase for every j: rows 8 apart start
                // 8 * row_bytes apart in W, a multiple of 16 (even block bytes), so they share
                // it, but rows past N, which copy_w clamps to the last: those read their stage row
                // at another offset, and their sums go to columns of y never stored (a row of W
                // is a column of the mma). Q6_K's tall tiles spilled the 3 registers this saves.
                static_assert(!T::PERMUTED || T::BLOCK_BYTES % 2 == 0, "rows 8 apart, one phase");
                const uint32_t phase = w_phase[T::PERMUTED ? 0 : j];
                const uint32_t shift =
                    T::BLOCK_BYTES % 16 == 0
                        ? 0
                        : (phase + static_cast<uint32_t>(kb0 * T::BLOCK_BYTES)) & 15;
                if constexpr (!BlockUnits<Block>::format) {
                    Fragment<Block>::load(src + w_row[j] + shift + b * T::BLOCK_BYTES, t, frag[j]);
                } else if constexpr (T::UNITS == 1) {
                    unit_fragment<Block>(src + w_row[j] + shift + b * T::BLOCK_BYTES, 0, t, frag[j]);
                } else {
                    using U = SuperUnit<Block>;
                    const int u = p * T::UK + b + wk;
                    uint32_t scale, neg_min;
                    if constexpr (T::SCALE_TABLE)
                        U::table_scales(src + w_row[j] + U::TABLE_AT, u, t, scale, neg_min);
                    else
                        U::scales(src + w_row[j] + shift, u, t, scale, neg_min);
                    super_fragment<Block>(src + w_row[j] + shift, u, t, scale, neg_min, frag[j]);
                }
            }
#pragma unroll
            for (int half_k = 0; half_k < 2; ++half_k) {
#pragma unroll
                for (int mi = 0; mi < T::MT; ++mi) {
                    uint32_t a[4];
                    ldmatrix_x4(a_buf + 2 * (16 * mi * T::XS + 32 * b + 16 * half_k), a);
#pragma unroll
                    for (int j = 0; j < T::NT; ++j)
                        mma(acc[mi][j], a, frag[j][2 * half_k], frag[j][2 * half_k + 1]);
                }
            }
        }
    };

    // acc = the sums of K steps first .. first + count - 1 (every K-warp's, in warp wk == 0).
    auto run = [&](int first, int count) {
        if constexpr (SLICED) {
#pragma unroll
            for (int mi = 0; mi < T::MT; ++mi)
#pragma unroll
                for (int j = 0; j < T::NT; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mi][j][e] = 0.0f;
        }
#pragma unroll
        for (int p = 0; p < T::STAGES - 1; ++p) {
            if (p < count) {
                copy_w(first + p, p);
                copy_x(first + p, p);
            }
            cp_async_commit();
        }
        load_x(first * T::PARTS);
        flush_x(0);
        if constexpr (T::SCALE_TABLE) {
            // W step `first`'s copies (group 0) done and visible, then its table, which the first
            // x step's barrier makes visible.
            cp_async_wait<T::STAGES - 2>();
            __syncthreads();
            if (count > 0) decode_scales(first, 0);
        }
        int read_slot = 0;
        int write_slot = T::STAGES - 1;
        // x step j (local) is part p of W step i. At each x step's barrier every warp is done
        // with the step before: its x buffer (flushed again after this step's compute) and, at
        // part 0, the W stage of the W step before (which the copies issued then overwrite).
        // The parts after the first read a W stage that part 0's wait and barrier made visible.
        // SCALE_TABLE: W step i + 1's stage is waited for at part PARTS - 1 of step i instead (the
        // same count of pending groups, as step i's group is committed by then), so that after
        // that part's barrier its table is decoded (while the warps compute part PARTS - 1 from
        // stage i) and step i + 1's first barrier makes it visible. No warp reads that stage
        // then: the last to was step i + 1 - STAGES, before an earlier barrier.
        for (int i = 0; i < count; ++i) {
            const int s = first + i;
            // Not unrolled: the parts' fragment loads then stay in their part (ptxas spilled
            // three times as many bytes of the tall K-quant tiles unrolled).
#pragma unroll 1
            for (int p = 0; p < T::PARTS; ++p) {
                const int j = i * T::PARTS + p;
                const bool decode_next = T::SCALE_TABLE && p == T::PARTS - 1 && i + 1 < count;
                if (j + 1 < count * T::PARTS) load_x(first * T::PARTS + j + 1);
                if (p == 0 && !T::SCALE_TABLE) {
                    // Copy group i (W step s) is done once at most STAGES - 2 newer groups are
                    // pending.
                    cp_async_wait<T::STAGES - 2>();
                    convert_x(read_slot, i & 1);
                }
                if (decode_next) cp_async_wait<T::STAGES - 2>();  // group i + 1
                __syncthreads();
                if (p == 0) {
                    if (i + T::STAGES - 1 < count) {
                        copy_w(s + T::STAGES - 1, write_slot);
                        copy_x(s + T::STAGES - 1, write_slot);
                    }
                    cp_async_commit();  // possibly empty: keeps one group per W step
                }
                if (decode_next)
                    decode_scales(s + 1, read_slot + 1 == T::STAGES ? 0 : read_slot + 1);
                compute(s, p, read_slot, j & 1);
                if (j + 1 < count * T::PARTS) flush_x((j + 1) & 1);
            }
            read_slot = read_slot + 1 == T::STAGES ? 0 : read_slot + 1;
            write_slot = write_slot + 1 == T::STAGES ? 0 : write_slot + 1;
        }

        if constexpr (T::WARPS_K > 1) {
            cp_async_wait<0>();
            __syncthreads();  // every warp is done with the buffers the partial sums now reuse
            float* red = reinterpret_cast<float*>(smem) + warp_mn * T::ACC * 32 + lane;
            constexpr int PART = T::WARPS_MN * T::ACC * 32;  // floats per K-warp
            if (wk > 0) {
#pragma unroll
                for (int mi = 0; mi < T::MT; ++mi)
#pragma unroll
                    for (int j = 0; j < T::NT; ++j)
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            red[(wk - 1) * PART + ((mi * T::NT + j) * 4 + e) * 32] = acc[mi][j][e];
            }
            __syncthreads();
            if (wk == 0) {
#pragma unroll
                for (int p = 0; p < T::WARPS_K - 1; ++p)
#pragma unroll
                    for (int mi = 0; mi < T::MT; ++mi)
#pragma unroll
                        for (int j = 0; j < T::NT; ++j)
#pragma unroll
                            for (int e = 0; e < 4; ++e)
                                acc[mi][j][e] += red[p * PART + ((mi * T::NT + j) * 4 + e) * 32];
            }
        }
    };

    // Accumulator e of tile (mi, j) is row 16 mi + g + 8 (e / 2), column 8 j + 2 t + e % 2.
    const bool pairs =
        (n & 1) == 0 && (ldy & 1) == 0 && (reinterpret_cast<uintptr_t>(y) & 7) == 0;
    if constexpr (SLICED) {
        if (splits == 1) {
#pragma unroll 1
            for (int z = 0; z < slices; ++z) {
                if (z > 0) {
                    cp_async_wait<0>();
                    __syncthreads();  // every warp is done with the buffers the next share refills
                }
                run(share_start(z), share_start(z + 1) - share_start(z));
                if (wk > 0) continue;
#pragma unroll
                for (int mi = 0; mi < T::MT; ++mi) {
#pragma unroll
                    for (int j = 0; j < T::NT; ++j) {
                        const int row = m0 + wm * T::WM + 16 * mi + g;
                        const int col = n0 + wn * T::WN + 8 * j + 2 * t;
                        add_pair(y, m, n, ldy, pairs, row, col, z == 0, acc[mi][j][0],
                                 acc[mi][j][1]);
                        add_pair(y, m, n, ldy, pairs, row + 8, col, z == 0, acc[mi][j][2],
                                 acc[mi][j][3]);
                    }
                }
            }
            return;
        }
    }
    run(share_start(blockIdx.z), share_start(blockIdx.z + 1) - share_start(blockIdx.z));
    if (splits == 1) {
        if (wk > 0) return;
#pragma unroll
        for (int mi = 0; mi < T::MT; ++mi) {
#pragma unroll
            for (int j = 0; j < T::NT; ++j) {
                const int row = m0 + wm * T::WM + 16 * mi + g;
                const int col = n0 + wn * T::WN + 8 * j + 2 * t;
                store_pair(y, m, n, ldy, pairs, row, col, acc[mi][j][0], acc[mi][j][1]);
                store_pair(y, m, n, ldy, pairs, row + 8, col, acc[mi][j][2], acc[mi][j][3]);
            }
        }
        return;
    }

    // Split-K: this split's sums, then the last split of the tile adds them all.
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    float4* tile_parts = reinterpret_cast<float4*>(partials) +
                         static_cast<long long>(tile) * splits * T::TILE_VECS;
    if (wk == 0) {
        float4* mine = tile_parts + static_cast<long long>(blockIdx.z) * T::TILE_VECS +
                       warp_mn * (T::ACC / 4) * 32 + lane;
#pragma unroll
        for (int mi = 0; mi < T::MT; ++mi)
#pragma unroll
            for (int j = 0; j < T::NT; ++j)
                mine[(mi * T::NT + j) * 32] =
                    make_float4(acc[mi][j][0], acc[mi][j][1], acc[mi][j][2], acc[mi][j][3]);
    }
    __threadfence();  // the sums are visible to the block that sees the counter's last value
    __syncthreads();  // and every warp is done with shared memory, whose first int is now free
    int* last = reinterpret_cast<int*>(smem);
    if (tid == 0) *last = atomicAdd(counters + tile, 1) == splits - 1;
    __syncthreads();
    if (!*last) return;
    __threadfence();
    if (tid == 0) counters[tile] = 0;  // every split of this launch has counted
#pragma unroll 1
    for (int f0 = 0; f0 < T::TILE_VECS; f0 += T::FIX * THREADS) {
        float4 sum[T::FIX];
#pragma unroll
        for (int u = 0; u < T::FIX; ++u) sum[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 2
        for (int z = 0; z < splits; ++z) {
#pragma unroll
            for (int u = 0; u < T::FIX; ++u) {
                const int f = f0 + u * THREADS + tid;
                if (f < T::TILE_VECS) add4(sum[u], __ldcg(tile_parts + z * T::TILE_VECS + f));
            }
        }
#pragma unroll
        for (int u = 0; u < T::FIX; ++u) {
            const int f = f0 + u * THREADS + tid;
            if (f >= T::TILE_VECS) continue;
            // f is (warp, (mi, j), lane) in the order the splits wrote their sums.
            const int l = f % 32;
            const int q = f / 32 % (T::ACC / 4);
            const int wmn = f / (32 * (T::ACC / 4));
            const int row = m0 + wmn / T::WARPS_N * T::WM + 16 * (q / T::NT) + (l >> 2);
            const int col = n0 + wmn % T::WARPS_N * T::WN + 8 * (q % T::NT) + 2 * (l & 3);
            store_pair(y, m, n, ldy, pairs, row, col, sum[u].x, sum[u].y);
            store_pair(y, m, n, ldy, pairs, row + 8, col, sum[u].z, sum[u].w);
        }
    }
}

}  // namespace ember_gemm

// Launch grid (ceil(m / BM), ceil(n / BN), splits), block 256 threads, SMEM bytes of dynamic
// shared memory (the exported layouts); w and x 16-byte aligned, k a positive multiple of 32;
// y's rows ldy >= n floats apart (a part of a stacked matrix writes its columns of one y).
// M tiles vary fastest, so the blocks that share a W tile run together and read it from DRAM
// once. With splits > 1, partials holds splits * BM * BN floats per tile (16-byte aligned) and
// counters one int per tile, zero before the launch (the launch leaves them zero).
#define EMBER_QUANT_GEMM_(TYPE, SHAPE, NAME, SLICED)                                           \
    extern "C" __global__ void __launch_bounds__(ember_gemm::THREADS,                          \
                                                 ember_gemm::SHAPE::MIN_BLOCKS)                \
        NAME(const uint8_t* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, \
             int m, int n, int k, int slices, float* __restrict__ partials,                    \
             int* __restrict__ counters, int ldy) {                                            \
        extern __shared__ __align__(16) uint8_t smem[];                                        \
        if constexpr (ember_gemm::Tile<ember::block_##TYPE, ember_gemm::SHAPE>::VALID)         \
            ember_gemm::gemm<ember::block_##TYPE, ember_gemm::SHAPE, SLICED>(                  \
                w, x, y, m, n, k, slices, partials, counters, ldy, smem);                      \
        else                                                                                   \
            __trap();                                                                          \
    }                                                                                          \
    EMBER_EXPORT_PARAMS(NAME)
#define EMBER_QUANT_GEMM(TYPE, SHAPE) \
    EMBER_QUANT_GEMM_(TYPE, SHAPE, quant_gemm_##TYPE##_##SHAPE, false)
#define EMBER_QUANT_GEMM_SLICED(TYPE, SHAPE) \
    EMBER_QUANT_GEMM_(TYPE, SHAPE, quant_gemm_##TYPE##_##SHAPE##_sliced, true)

// Every (type, shape) in quant_gemm.py's order: QuantType, then GemmTile.
#define EMBER_GEMM_SHAPES(X, TYPE) \
    X(TYPE, m16) X(TYPE, m32) X(TYPE, m64) X(TYPE, m128) X(TYPE, s16) X(TYPE, s32) X(TYPE, t64) \
    X(TYPE, w64) X(TYPE, t128) X(TYPE, w128)
#define EMBER_GEMM_ALL(X)                                                                    \
    EMBER_GEMM_SHAPES(X, q4_0) EMBER_GEMM_SHAPES(X, q4_1) EMBER_GEMM_SHAPES(X, q8_0)              \
    EMBER_GEMM_SHAPES(X, q5_0) EMBER_GEMM_SHAPES(X, q5_1) EMBER_GEMM_SHAPES(X, q4_k)              \
    EMBER_GEMM_SHAPES(X, q5_k) EMBER_GEMM_SHAPES(X, q6_k)

#define EMBER_GEMM_KERNEL(TYPE, SHAPE) EMBER_QUANT_GEMM(TYPE, SHAPE)
EMBER_GEMM_ALL(EMBER_GEMM_KERNEL)

// Batch-invariant mode's tiles (quant_gemm.py's INVARIANT_TILES) also as _sliced kernels, with
// the same layouts as their plain ones, for every block type. A new block type goes in both
// lists.
#define EMBER_GEMM_SLICED_SHAPES(X, TYPE) X(TYPE, s16) X(TYPE, s32) X(TYPE, t64)
#define EMBER_GEMM_SLICED_ALL(X)                                                  \
    EMBER_GEMM_SLICED_SHAPES(X, q4_0) EMBER_GEMM_SLICED_SHAPES(X, q4_1)           \
        EMBER_GEMM_SLICED_SHAPES(X, q8_0) EMBER_GEMM_SLICED_SHAPES(X, q5_0)       \
            EMBER_GEMM_SLICED_SHAPES(X, q5_1) EMBER_GEMM_SLICED_SHAPES(X, q4_k)   \
                EMBER_GEMM_SLICED_SHAPES(X, q5_k) EMBER_GEMM_SLICED_SHAPES(X, q6_k)
EMBER_GEMM_SLICED_ALL(EMBER_QUANT_GEMM_SLICED)

// The layout of every kernel, 7 ints each in EMBER_GEMM_ALL's order: block bytes, shape ID, BM,
// BN, KB, dynamic shared memory bytes, blocks per SM the registers were fitted for.
#define EMBER_GEMM_LAYOUT(TYPE, SHAPE)                                                     \
    ember_gemm::Tile<ember::block_##TYPE, ember_gemm::SHAPE>::BLOCK_BYTES,                 \
        ember_gemm::SHAPE::ID, ember_gemm::SHAPE::BM, ember_gemm::SHAPE::BN,               \
        ember_gemm::SHAPE::KB,                                                             \
        ember_gemm::Tile<ember::block_##TYPE, ember_gemm::SHAPE>::EXPORTED_SMEM,           \
        ember_gemm::SHAPE::MIN_BLOCKS,
EMBER_EXPORT_CONST(layouts, EMBER_GEMM_ALL(EMBER_GEMM_LAYOUT))
EMBER_EXPORT_CONST(threads, ember_gemm::THREADS)  // a block's
