// Quantised GEMM on int8 tensor cores ("MMQ", as llama.cpp's mmq.cuh) for the K-quants, for
// prefill and large batches: y[m, n] = sum_k x[m, k] * W[n, k], W the raw GGUF bytes of a Q4_K,
// Q5_K or Q6_K tensor [N, K] (K a multiple of 256), x [M, K] and y [M, N] float32 row-major.
//
// Two kernels:
// - quantize_x_q8: x to int8 per 32 values, as quant_gemv.cu does (d = max|x| / 127 kept to 22
//   bits, q = x * (127 / max|x|) rounded to nearest even by an fma onto 1.5 * 2^23), into a
//   workspace laid out for the GEMM's 16-byte copies: int8 codes [M_pad][K], then per 32-value
//   unit u and row r the float2 (d, sum of the 32 x values) at [u][M_pad] + r. M_pad rounds M
//   up to the tallest tile (MMQ_ROWS), and its extra rows hold zeros, so the GEMM's loads of x
//   need no clamping. The sum is of x itself, not of d * q: a unit's additive term (Q4_K, Q5_K)
//   then multiplies exact sums, as in quant_gemv.cu.
// - quant_mmq_<type>_<tile>: each K step is one 256-weight super-block (8 units of 32). Every
//   unit's weight j is scale(j) * code(j) + m (quant_formats.cuh's view) with int8 codes, so
//       sum_j w_j x_j = d_x * (scale * isum) + m * sum(x)        (Q4_K, Q5_K: one scale a unit)
//       sum_j w_j x_j = d_x * (lo * isum_lo + hi * isum_hi)      (Q6_K: one scale per 16)
//   where the isums are exact int32 dot products of codes and x's int8 values, taken by
//   mma.sync.m16n8k32.s8 (Q6_K: two m16n8k16, one per half) and scaled in float32.
//
// A block of 256 threads computes a BM x 128 tile of y: 8 warps as 2 (M) x 4 (N), each a
// (BM / 2) x 32 warp tile, MT = BM / 32 m16 tiles by 4 n8 tiles. Per unit a warp decodes each of
// its 4 B fragments once (bit operations only: a code is a byte of a word as the block holds it)
// and feeds it to MT mmas; each A fragment (one ldmatrix.x4 of 16 rows x 32 int8) feeds 4.
//
// The K loop moves one super-block per step through shared memory, STAGES steps deep with
// cp.async: W's raw bytes (as quant_gemm.cu: a row's block starts up to 14 bytes into its first
// granule, Q6_K's 210-byte blocks being only 2-byte aligned), x's int8 values and its units'
// (d, sum). After a step's copies land, the block decodes the super-blocks' scales (and
// minimums) once into a float table, [unit][column] (scale, m) or Q6_K's (lo, hi), which the
// lanes read for the columns their accumulators hold. Two barriers a step: after the copies
// (which also ends every warp's use of the previous step's buffers) and after the table.
//
// Rows of W past N are clamped to the last on loads, and nothing past M or N is stored. y's
// rows are ldy floats apart (a part of a stacked matrix writes its columns of one y).
#include "common.cuh"
#include "interface.cuh"
#include "quant_formats.cuh"

// A named namespace (an anonymous one would put a path hash in the PTX; see quant_gemm.cu).
namespace ember_mmq {

constexpr int THREADS = 256;
constexpr int UNITS = 8;  // 32-weight units a super-block (a K step)
constexpr int STEP = 32 * UNITS;
// The tallest tile's rows: the workspace's rows of x are a multiple of it.
constexpr int MMQ_ROWS = 128;
// 1.5 * 2^23: a float of magnitude below 2^22 added to it lands, rounded to nearest even, as
// an integer in the low mantissa bits (quant_gemv.cu's MAGIC).
constexpr float MAGIC_F = 12582912.0f;
constexpr int SM_SHARED = 227 * 1024;  // an H100's or H200's shared memory a block (opt-in)
constexpr int TABLE_BYTES = UNITS * 128 * 8;

constexpr int cmin(int a, int b) { return a < b ? a : b; }

// A tile: ID is its position in quant_mmq.py's MmqTile, BM its rows of x; 128 columns of W.
template <int ID_, int BM_, int MIN_BLOCKS_>
struct Shape {
    static constexpr int ID = ID_, BM = BM_, BN = 128, MIN_BLOCKS = MIN_BLOCKS_;
    static constexpr int WARPS_M = 2, WARPS_N = 4;
};
struct t64 : Shape<0, 64, 2> {};
struct t128 : Shape<1, 128, 1> {};

template <typename Block, typename S>
struct Tile {
    static constexpr int BM = S::BM, BN = S::BN;
    static constexpr int WM = BM / S::WARPS_M, WN = BN / S::WARPS_N;
    static constexpr int MT = WM / 16, NT = WN / 8;
    static constexpr int BLOCK_BYTES = static_cast<int>(sizeof(Block));
    // Whole 16-byte granules (Q4_K, Q5_K): every block starts its stage row.
    static constexpr bool ALIGNED = BLOCK_BYTES % 16 == 0;
    static constexpr int W_GRANULES = (ALIGNED ? BLOCK_BYTES : 14 + BLOCK_BYTES + 15) / 16;
    // Odd multiples of 16 bytes: 8 rows' reads at one offset fall in distinct bank quads.
    static constexpr int W_ROW = 16 * (W_GRANULES | 1);
    static constexpr int X_ROW = STEP + 16;
    static constexpr int W_BYTES = BN * W_ROW;
    static constexpr int X_BYTES = BM * X_ROW;
    static constexpr int XS_BYTES = UNITS * BM * 8;  // (d, sum) a row and unit
    static constexpr int STAGE = W_BYTES + X_BYTES + XS_BYTES;
    static constexpr int BUDGET = SM_SHARED / S::MIN_BLOCKS - (S::MIN_BLOCKS - 1) * 1024;
    static constexpr int STAGES = cmin((BUDGET - TABLE_BYTES) / STAGE, 4);
    static constexpr int SMEM = TABLE_BYTES + STAGES * STAGE;
    static_assert(S::WARPS_M * S::WARPS_N * 32 == THREADS, "8 warps");
    static_assert(WM % 16 == 0 && WN % 8 == 0, "whole mma tiles a warp");
    static_assert(STAGES >= 2, "double buffering at least");
    static_assert(BN * UNITS * 8 == TABLE_BYTES && 2 * BN == THREADS, "table: 4 units a thread");
    static_assert(W_BYTES % 16 == 0 && X_BYTES % 16 == 0 && STAGE % 16 == 0, "aligned buffers");
    static_assert(SMEM <= BUDGET, "shared memory");
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes, cached in L2 only.
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

// Lane l gives row l % 16, bytes 16 (l / 16).. of a 16 x 32 int8 tile: a[0..3] are then mma
// m16n8k32's A fragment (rows g, g + 8 of bytes 4t.., then of bytes 16 + 4t..).
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&a)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(addr)
                 : "memory");
}

// c = a * b for a 16 x 32 int8 A, 32 x 8 int8 B (column-major), int32 C from zero.
__device__ __forceinline__ void mma_k32(int (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %10, %10, %10};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

// c = a * b for a 16 x 16 int8 A (a0: row g, a1: row g + 8, bytes 4t..), 16 x 8 B, from zero.
__device__ __forceinline__ void mma_k16(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
        "{%7, %7, %7, %7};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(b), "r"(0));
}

// A super-block format as MMQ reads it from a stage row (`b`: the block's first byte there).
// `codes` gives lane t's B words of unit u: codes 4t..4t+3 (h = 0) and 16 + 4t.. (h = 1), as
// signed bytes (Format<Block>::word(b, u, t + 4h)'s values); `entry` the unit's table entry.
template <typename Block>
struct MmqFormat;

// Q4_K/Q5_K: (d * sc, -(dmin * mn)), each exact in float32 (11 by 6 significant bits).
__device__ __forceinline__ float2 scale_min_entry(const uint8_t* b, int u) {
    int sc, mn;
    ember::scale_min(b + 4, u, sc, mn);
    return make_float2(ember::half_at(b) * static_cast<float>(sc),
                       -(ember::half_at(b + 2) * static_cast<float>(mn)));
}

template <>
struct MmqFormat<ember::block_q4_k> {
    static constexpr bool HALVES = false;  // one scale a unit
    __device__ static __forceinline__ void codes(const uint8_t* b, int u, int t, uint32_t& c0,
                                                 uint32_t& c1) {
        const uint32_t* q = reinterpret_cast<const uint32_t*>(b + 16 + 32 * (u >> 1)) + t;
        const int shift = 4 * (u & 1);
        c0 = (q[0] >> shift) & 0x0F0F0F0Fu;
        c1 = (q[4] >> shift) & 0x0F0F0F0Fu;
    }
    __device__ static __forceinline__ float2 entry(const uint8_t* b, int u) {
        return scale_min_entry(b, u);
    }
};

template <>
struct MmqFormat<ember::block_q5_k> {
    static constexpr bool HALVES = false;
    __device__ static __forceinline__ void codes(const uint8_t* b, int u, int t, uint32_t& c0,
                                                 uint32_t& c1) {
        const uint32_t* q = reinterpret_cast<const uint32_t*>(b + 48 + 32 * (u >> 1)) + t;
        const uint32_t* qh = reinterpret_cast<const uint32_t*>(b + 16) + t;
        const int shift = 4 * (u & 1);
        c0 = ((q[0] >> shift) & 0x0F0F0F0Fu) | (((qh[0] >> u) & 0x01010101u) << 4);
        c1 = ((q[4] >> shift) & 0x0F0F0F0Fu) | (((qh[4] >> u) & 0x01010101u) << 4);
    }
    __device__ static __forceinline__ float2 entry(const uint8_t* b, int u) {
        return scale_min_entry(b, u);
    }
};

template <>
struct MmqFormat<ember::block_q6_k> {
    static constexpr bool HALVES = true;  // one scale per 16 weights
    // q (0..63, a byte each) less 32 as signed bytes: q ^ 32 is q - 32 for q >= 32 and q + 32
    // below, whose bit 5 is then set; adding 6 times that bit sets bits 6 and 7 (no carries out
    // of a byte: at most 63 + 192).
    __device__ static __forceinline__ uint32_t centred(uint32_t q) {
        const uint32_t s = q ^ 0x20202020u;
        return s + (s & 0x20202020u) * 6u;
    }
    // Unit u = 4 h + p: weights 32 p.. of half h (quant_formats.cuh). The block is 2-byte
    // aligned in its row: each word is two aligned words and a PRMT (quant_gemm.cu's SuperUnit).
    __device__ static __forceinline__ uint32_t word(const uint8_t* b, int at) {
        const uint32_t off = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(b)) & 2;
        const uint32_t* w = reinterpret_cast<const uint32_t*>(b - off + at);
        return __byte_perm(w[0], w[1], 0x3210u + off * 0x1111u);
    }
    __device__ static __forceinline__ void codes(const uint8_t* b, int u, int t, uint32_t& c0,
                                                 uint32_t& c1) {
        const int half = u >> 2, p = u & 3;
        const int lo_at = 64 * half + 32 * (p & 1) + 4 * t;
        const int hi_at = 128 + 32 * half + 4 * t;
        const int lo_shift = 4 * (p >> 1), hi_shift = 2 * p;
        const uint32_t q0 = ((word(b, lo_at) >> lo_shift) & 0x0F0F0F0Fu) |
                            (((word(b, hi_at) >> hi_shift) & 0x03030303u) << 4);
        const uint32_t q1 = ((word(b, lo_at + 16) >> lo_shift) & 0x0F0F0F0Fu) |
                            (((word(b, hi_at + 16) >> hi_shift) & 0x03030303u) << 4);
        c0 = centred(q0);
        c1 = centred(q1);
    }
    // (d * sc[2u], d * sc[2u + 1]): Format<block_q6_k>::scales' lo and hi.
    __device__ static __forceinline__ float2 entry(const uint8_t* b, int u) {
        const float d = ember::half_at(b + 208);
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
        return make_float2(d * static_cast<float>(sc[2 * u]), d * static_cast<float>(sc[2 * u + 1]));
    }
};

// Outputs (row, col) and (row, col + 1), skipping those past M and N.
__device__ __forceinline__ void store_pair(float* y, int m, int n, int ldy, bool pairs, int row,
                                           int col, float a, float b) {
    if (row >= m || col >= n) return;
    float* out = y + static_cast<long long>(row) * ldy + col;
    if (pairs) {
        *reinterpret_cast<float2*>(out) = make_float2(a, b);
    } else {
        out[0] = a;
        if (col + 1 < n) out[1] = b;
    }
}

template <typename Block, typename Shape>
__device__ __forceinline__ void mmq(const uint8_t* __restrict__ w,
                                    const int8_t* __restrict__ xq,
                                    const float2* __restrict__ xs, float* __restrict__ y, int m,
                                    int n, int k, int m_pad, int ldy, uint8_t* smem) {
    using T = Tile<Block, Shape>;
    using F = MmqFormat<Block>;
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp / Shape::WARPS_N;
    const int wn = warp % Shape::WARPS_N;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int m0 = blockIdx.x * T::BM;
    const int n0 = blockIdx.y * T::BN;
    const int steps = k / STEP;
    // quant_mmq.py keeps W's bytes and the workspace's below 2^31: 32-bit offsets.
    const uint32_t row_bytes = static_cast<uint32_t>(steps * T::BLOCK_BYTES);

    float2* table = reinterpret_cast<float2*>(smem);  // [UNITS][BN]
    uint8_t* stages = smem + TABLE_BYTES;

    auto copy = [&](int s, int slot) {
        uint8_t* stage = stages + slot * T::STAGE;
        // W: row r's block s from the 16-byte granule that holds its first byte.
#pragma unroll
        for (int i0 = 0; i0 < T::BN * T::W_GRANULES; i0 += THREADS) {
            const int i = i0 + tid;
            const int r = i / T::W_GRANULES;
            const int q = i - r * T::W_GRANULES;
            const uint32_t start = static_cast<uint32_t>(min(n0 + r, n - 1)) * row_bytes +
                                   static_cast<uint32_t>(s * T::BLOCK_BYTES);
            const uint32_t shift = start & 15;
            if (r < T::BN && 16 * q < static_cast<int>(shift) + T::BLOCK_BYTES)
                cp_async16(smem_addr(stage + r * T::W_ROW + 16 * q), w + (start - shift + 16 * q));
        }
        // x: BM rows of 256 int8 values (16 granules each).
        uint8_t* xdst = stage + T::W_BYTES;
#pragma unroll
        for (int i0 = 0; i0 < T::BM * 16; i0 += THREADS) {
            const int i = i0 + tid;
            const int r = i >> 4, q = i & 15;
            cp_async16(smem_addr(xdst + r * T::X_ROW + 16 * q),
                       xq + (static_cast<uint32_t>(m0 + r) * static_cast<uint32_t>(k) +
                             static_cast<uint32_t>(s * STEP + 16 * q)));
        }
        // (d, sum) of units 8 s.. of rows m0..: BM / 2 granules a unit.
        uint8_t* sdst = xdst + T::X_BYTES;
#pragma unroll
        for (int i0 = 0; i0 < UNITS * T::BM / 2; i0 += THREADS) {
            const int i = i0 + tid;
            const int u = i / (T::BM / 2), q = i % (T::BM / 2);
            cp_async16(smem_addr(sdst + u * T::BM * 8 + 16 * q),
                       xs + (static_cast<uint32_t>(s * UNITS + u) * static_cast<uint32_t>(m_pad) +
                             static_cast<uint32_t>(m0 + 2 * q)));
        }
    };

    // The byte where row r's block s starts in its stage row.
    auto block_at = [&](int r, int s) -> int {
        if constexpr (T::ALIGNED) return 0;
        const uint32_t start = static_cast<uint32_t>(min(n0 + r, n - 1)) * row_bytes +
                               static_cast<uint32_t>(s * T::BLOCK_BYTES);
        return static_cast<int>(start & 15);
    };

    // Step s's table from stage `slot`: thread (r, half) decodes units 4 half.. of row r.
    auto decode_table = [&](int s, int slot) {
        const int r = tid >> 1;
        const int u0 = 4 * (tid & 1);
        const uint8_t* b = stages + slot * T::STAGE + r * T::W_ROW + block_at(r, s);
#pragma unroll
        for (int i = 0; i < 4; ++i) table[(u0 + i) * T::BN + r] = F::entry(b, u0 + i);
    };

    float acc[T::MT][T::NT][4] = {};
    const int a_row = wm * T::WM + (lane & 15);
    // This lane's B rows (W rows of the stage) are wn * WN + 8 j + g; rows 8 apart share their
    // block's offset in a stage row (8 * row_bytes is a multiple of 16), but rows past N, which
    // copy clamps: their sums go to columns never stored.
    const int b_row = wn * T::WN + g;

    auto compute = [&](int s, int slot) {
        const uint8_t* stage = stages + slot * T::STAGE;
        const uint8_t* brow = stage + b_row * T::W_ROW + block_at(b_row, s);
        const uint32_t a_base =
            smem_addr(stage + T::W_BYTES + a_row * T::X_ROW + 16 * (lane >> 4));
        const float2* xsc = reinterpret_cast<const float2*>(stage + T::W_BYTES + T::X_BYTES);
        // Two units an iteration where they share their code bytes (Q4_K, Q5_K: the low and
        // high nibbles of one word); one for Q6_K, whose two mmas a unit need more registers.
#pragma unroll(F::HALVES ? 1 : 2)
        for (int u = 0; u < UNITS; ++u) {
            uint32_t a[T::MT][4];
            float2 xr[T::MT][2];  // (d, sum) of rows g and g + 8 of each m16 tile
#pragma unroll
            for (int mi = 0; mi < T::MT; ++mi) {
                ldmatrix_x4(a_base + (16 * mi * T::X_ROW + 32 * u), a[mi]);
                const int row = wm * T::WM + 16 * mi + g;
                xr[mi][0] = xsc[u * T::BM + row];
                xr[mi][1] = xsc[u * T::BM + row + 8];
            }
#pragma unroll
            for (int j = 0; j < T::NT; ++j) {
                uint32_t c0, c1;
                F::codes(brow + 8 * j * T::W_ROW, u, t, c0, c1);
                // (scale, m) or (lo, hi) of columns 2t and 2t + 1 of n8 tile j.
                const float4 sw = *reinterpret_cast<const float4*>(
                    table + u * T::BN + wn * T::WN + 8 * j + 2 * t);
#pragma unroll
                for (int mi = 0; mi < T::MT; ++mi) {
                    float* o = acc[mi][j];
                    if constexpr (!F::HALVES) {
                        int c[4];
                        mma_k32(c, a[mi], c0, c1);
                        // e: row g + 8 (e / 2), column 2t + e % 2.
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const float2 dx = xr[mi][e >> 1];
                            const float scale = e & 1 ? sw.z : sw.x;
                            const float minimum = e & 1 ? sw.w : sw.y;
                            o[e] = fmaf(static_cast<float>(c[e]), dx.x * scale, o[e]);
                            o[e] = fmaf(dx.y, minimum, o[e]);
                        }
                    } else {
                        int lo[4], hi[4];
                        mma_k16(lo, a[mi][0], a[mi][1], c0);
                        mma_k16(hi, a[mi][2], a[mi][3], c1);
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const float dx = xr[mi][e >> 1].x;
                            const float s_lo = e & 1 ? sw.z : sw.x;
                            const float s_hi = e & 1 ? sw.w : sw.y;
                            o[e] = fmaf(static_cast<float>(lo[e]), dx * s_lo, o[e]);
                            o[e] = fmaf(static_cast<float>(hi[e]), dx * s_hi, o[e]);
                        }
                    }
                }
            }
        }
    };

#pragma unroll
    for (int p = 0; p < T::STAGES - 1; ++p) {
        if (p < steps) copy(p, p);
        cp_async_commit();
    }
    int slot = 0;
#pragma unroll 1
    for (int s = 0; s < steps; ++s) {
        // Step s's group is done once at most STAGES - 2 newer ones are pending.
        cp_async_wait<T::STAGES - 2>();
        __syncthreads();  // step s visible; every warp done with step s - 1's buffers and table
        const int ahead = s + T::STAGES - 1;
        if (ahead < steps) copy(ahead, ahead % T::STAGES);
        cp_async_commit();  // possibly empty: one group a step
        decode_table(s, slot);
        __syncthreads();
        compute(s, slot);
        slot = slot + 1 == T::STAGES ? 0 : slot + 1;
    }

    const bool pairs =
        (n & 1) == 0 && (ldy & 1) == 0 && (reinterpret_cast<uintptr_t>(y) & 7) == 0;
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
}

__device__ __forceinline__ float max_nan(float a, float b) {
    float d;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
    return d;
}

}  // namespace ember_mmq

// x [m, k] float32 (16-byte aligned, k a multiple of 256) into the workspace: int8 [m_pad][k]
// at xq, then float2 [k / 32][m_pad] at xs (see the top of the file); rows m.. m_pad - 1 zero.
// Grid (ceil(k / 2048), m_pad), 256 threads a block: warp i takes the row's values
// 256 (8 blockIdx.x + i).., lane l values 8 l.. of them, four lanes a unit.
extern "C" __global__ void __launch_bounds__(256)
    quantize_x_q8(const float* __restrict__ x, int8_t* __restrict__ xq, float2* __restrict__ xs,
                  int m, int k, int m_pad) {
    ember::await_prior_grid();
    using ember_mmq::MAGIC_F;
    const int lane = threadIdx.x & 31;
    const int chunk = blockIdx.x * 8 + (threadIdx.x >> 5);
    const int row = blockIdx.y;
    if (chunk >= k / ember_mmq::STEP) return;  // whole warps: the shuffles below stay full
    const int col = chunk * ember_mmq::STEP + 8 * lane;
    float v[8] = {};
    if (row < m) {
        const float4* src = reinterpret_cast<const float4*>(x + static_cast<long long>(row) * k + col);
        const float4 a = __ldg(src), b = __ldg(src + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
        v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
    float amax = 0.0f;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        amax = ember_mmq::max_nan(amax, fabsf(v[j]));
        sum += v[j];
    }
#pragma unroll
    for (int offset = 1; offset < 4; offset <<= 1) {
        amax = ember_mmq::max_nan(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    // quant_gemv.cu's rounding: below 1e-30 a unit is zeros (127 / amax would overflow); d
    // keeps 22 significant bits; a NaN or inf makes d NaN or inf, and so the unit's products.
    const bool zero = amax < 1e-30f;
    const float d = zero ? 0.f : __uint_as_float(__float_as_uint(amax * (1.0f / 127)) & ~3u);
    const float inverse = zero ? 0.f : __fdiv_rn(127.0f, amax);
    uint32_t packed[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        // Rounded to nearest even by the add: the int lands in the low bits (|q| <= 127).
        const uint32_t q0 = __float_as_uint(fmaf(v[4 * j], inverse, MAGIC_F));
        const uint32_t q1 = __float_as_uint(fmaf(v[4 * j + 1], inverse, MAGIC_F));
        const uint32_t q2 = __float_as_uint(fmaf(v[4 * j + 2], inverse, MAGIC_F));
        const uint32_t q3 = __float_as_uint(fmaf(v[4 * j + 3], inverse, MAGIC_F));
        packed[j] = __byte_perm(__byte_perm(q0, q1, 0x0040), __byte_perm(q2, q3, 0x0040), 0x5410);
    }
    *reinterpret_cast<uint2*>(xq + static_cast<long long>(row) * k + col) =
        make_uint2(packed[0], packed[1]);
    if ((lane & 3) == 0)
        xs[static_cast<long long>(col / 32) * m_pad + row] = make_float2(d, sum);
}
EMBER_EXPORT_PARAMS(quantize_x_q8)

// Launch grid (ceil(m / BM), ceil(n / 128)), block 256 threads, SMEM bytes of dynamic shared
// memory (the exported layouts); w 16-byte aligned; xq and xs quantize_x_q8's workspace for
// m_pad >= the grid's rows of x; y's rows ldy >= n floats apart.
#define EMBER_QUANT_MMQ(TYPE, SHAPE)                                                            \
    extern "C" __global__ void __launch_bounds__(ember_mmq::THREADS,                            \
                                                 ember_mmq::SHAPE::MIN_BLOCKS)                  \
        quant_mmq_##TYPE##_##SHAPE(const uint8_t* __restrict__ w,                               \
                                   const int8_t* __restrict__ xq,                               \
                                   const float2* __restrict__ xs, float* __restrict__ y, int m, \
                                   int n, int k, int m_pad, int ldy) {                          \
        extern __shared__ __align__(16) uint8_t smem[];                                         \
        ember::await_prior_grid();                                                              \
        ember_mmq::mmq<ember::block_##TYPE, ember_mmq::SHAPE>(w, xq, xs, y, m, n, k, m_pad,    \
                                                               ldy, smem);                      \
    }                                                                                           \
    EMBER_EXPORT_PARAMS(quant_mmq_##TYPE##_##SHAPE)

// Every (type, tile) in quant_mmq.py's order: MMQ_TYPES, then MmqTile.
#define EMBER_MMQ_SHAPES(X, TYPE) X(TYPE, t64) X(TYPE, t128)
#define EMBER_MMQ_ALL(X) EMBER_MMQ_SHAPES(X, q4_k) EMBER_MMQ_SHAPES(X, q5_k) EMBER_MMQ_SHAPES(X, q6_k)
EMBER_MMQ_ALL(EMBER_QUANT_MMQ)

// 6 ints a kernel in EMBER_MMQ_ALL's order: block bytes, tile ID, rows, columns, dynamic shared
// memory bytes, blocks per SM the registers were fitted for.
#define EMBER_MMQ_LAYOUT(TYPE, SHAPE)                                                       \
    ember_mmq::Tile<ember::block_##TYPE, ember_mmq::SHAPE>::BLOCK_BYTES,                    \
        ember_mmq::SHAPE::ID, ember_mmq::SHAPE::BM, ember_mmq::SHAPE::BN,                   \
        ember_mmq::Tile<ember::block_##TYPE, ember_mmq::SHAPE>::SMEM,                       \
        ember_mmq::SHAPE::MIN_BLOCKS,
EMBER_EXPORT_CONST(layouts, EMBER_MMQ_ALL(EMBER_MMQ_LAYOUT))
EMBER_EXPORT_CONST(threads, ember_mmq::THREADS)
EMBER_EXPORT_CONST(rows_multiple, ember_mmq::MMQ_ROWS)  // the workspace's rows of x
