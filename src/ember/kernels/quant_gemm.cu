// Quantised GEMM with tensor cores, for prefill and large decode batches:
// y[m, n] = sum_k x[m, k] * W[n, k], W the raw GGUF bytes of a Q4_0, Q4_1 or Q8_0 tensor [N, K]
// (row-major, 32 weights per block), x [M, K] and y [M, N] float32 row-major.
//
// A block of threads computes a BM x BN tile of y with mma.sync.m16n8k16 (fp16 in, fp32
// accumulate). Its warps split the tile's columns (WARPS_N) and, for small tiles, the quant
// blocks of each K step (WARPS_K, reduced through shared memory at the end); every warp covers
// all BM rows, so each weight is dequantised by exactly one warp.
//
// The K loop moves KB quant blocks (32 * KB weights) per step through shared memory:
// - W: raw bytes, STAGES steps deep, copied with cp.async. A row's KB blocks are contiguous but
//   only 2-byte aligned, so each row is copied as the 8-byte-aligned granules that hold it and
//   remembers its offset (< 8) in the first one. Each lane then reads the bytes of its own mma
//   B fragment straight from there and dequantises them in registers (MmaFragment in
//   common.cuh): no fp16 copy of W, no second barrier.
// - x: float32 loaded into registers one step ahead, rounded to fp16 and stored into a double
//   buffer that ldmatrix reads as mma A fragments.
// One __syncthreads per step: after it, the step's W and x are visible, and every warp is done
// with the previous step's buffers, which that step's copies then overwrite.
//
// Granules are 8-byte aligned and hold at least one byte of W, so the few bytes copied past
// either end of a row's blocks never leave W's pages. Rows and columns past M and N are clamped
// to the last ones on loads and skipped on stores.
#include "common.cuh"

// A named namespace, not an anonymous one: internal-linkage names embed a hash of the source
// path, which would make the PTX differ between checkouts and fail the artifact check.
namespace ember_gemm {

// Static shared memory per block; more would need the opt-in launch attribute.
constexpr int SMEM_BUDGET = 48 * 1024;
constexpr int MAX_STAGES = 8;

// Tile shapes, one per kernel suffix; quant_gemm.py's GemmTile repeats each BM and BN and
// picks one by M (and, above M 64, by how many blocks the largest would make).
// M <= 16 and <= 32: decode batches, bound by reading W. Narrow column tiles (32) give N / 32
// blocks (128 for N 4096); two K-warps per column warp give 8 warps to hide latency, and 4
// blocks per step up to 8 steps deep keep ~28 blocks of each row in flight (2 MB for N 4096).
struct m16 {
    static constexpr int BM = 16, BN = 32, WARPS_N = 4, WARPS_K = 2, KB = 4, MIN_BLOCKS = 2;
};
struct m32 {
    static constexpr int BM = 32, BN = 32, WARPS_N = 4, WARPS_K = 2, KB = 4, MIN_BLOCKS = 2;
};
// M 33-256: compute-bound from ~M 64 on, yet too few 128 x 128 tiles to fill the GPU unless
// N is large; each warp does 64 x 16 (8 mma per dequantised fragment).
struct m64 {
    static constexpr int BM = 64, BN = 64, WARPS_N = 4, WARPS_K = 2, KB = 2, MIN_BLOCKS = 2;
};
// Prefill: 128 x 128 tiles, each warp 128 x 16 (16 mma per dequantised fragment). KB 1 keeps
// the fp16 x buffers (20 KB) and four W steps within the static budget.
struct m128 {
    static constexpr int BM = 128, BN = 128, WARPS_N = 8, WARPS_K = 1, KB = 1, MIN_BLOCKS = 2;
};

template <typename Block, typename Shape>
struct Tile {
    static constexpr int BM = Shape::BM, BN = Shape::BN;
    static constexpr int WARPS_N = Shape::WARPS_N, WARPS_K = Shape::WARPS_K, KB = Shape::KB;
    static constexpr int THREADS = 32 * WARPS_N * WARPS_K;
    static constexpr int WN = BN / WARPS_N;  // columns per warp
    static constexpr int MT = BM / 16;       // m16 tiles per warp
    static constexpr int NT = WN / 8;        // n8 tiles per warp
    static constexpr int BLOCK_BYTES = static_cast<int>(sizeof(Block));
    // x: fp16 [2][BM][XS]. 16 bytes of padding per row put the 8 rows of an ldmatrix matrix in
    // distinct bank quads (the row pitch is an odd multiple of 16 bytes).
    static constexpr int KS = 32 * KB;
    static constexpr int XS = KS + 8;
    static constexpr int X_BYTES = 2 * BM * XS * 2;
    static constexpr int X_VECS = BM * KS / 4 / THREADS;  // float4 per thread per step
    // W: raw [STAGES][BN][W_ROW]. A row's bytes start up to 6 bytes into its first granule; the
    // pitch is an odd multiple of 16 bytes, so the fragment reads of 8 rows (at most 14 bytes
    // each) fall in distinct banks.
    static constexpr int W_GRANULES = (6 + KB * BLOCK_BYTES + 7) / 8;  // most copies per row
    static constexpr int W_ROW = 16 * (((KB * BLOCK_BYTES + 6 + 15) / 16) | 1);
    static constexpr int W_STAGE = BN * W_ROW;
    static constexpr int STAGES_FIT = (SMEM_BUDGET - X_BYTES) / W_STAGE;
    static constexpr int STAGES = STAGES_FIT < MAX_STAGES ? STAGES_FIT : MAX_STAGES;
    // The K-warps' partial sums, [WARPS_K - 1][WARPS_N][ACC][32], reuse the buffers at the end.
    static constexpr int ACC = MT * NT * 4;
    static constexpr int RED_BYTES = (WARPS_K - 1) * WARPS_N * ACC * 32 * 4;
    static constexpr int LOOP_BYTES = X_BYTES + STAGES * W_STAGE;
    static constexpr int SMEM = LOOP_BYTES > RED_BYTES ? LOOP_BYTES : RED_BYTES;

    static_assert(THREADS == 256, "quant_gemm.py launches 256 threads");
    static_assert(BM % 16 == 0 && WN % 8 == 0 && BN % WARPS_N == 0, "whole mma tiles per warp");
    static_assert(KB % WARPS_K == 0, "every K-warp takes the same number of blocks per step");
    static_assert(BM * KS / 4 % THREADS == 0, "x tile is whole float4s per thread");
    static_assert(W_ROW >= 8 * W_GRANULES && W_ROW % 32 == 16, "W row pitch");
    static_assert(STAGES >= 2, "W needs at least double buffering");
    static_assert(SMEM <= SMEM_BUDGET, "static shared memory");
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async8(uint32_t dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(dst), "l"(src) : "memory");
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

template <typename Block, typename Shape>
__device__ __forceinline__ void gemm(
    const uint8_t* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int m,
    int n, int k, uint8_t* smem) {
    using T = Tile<Block, Shape>;
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wn = warp % T::WARPS_N;
    const int wk = warp / T::WARPS_N;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int m0 = blockIdx.x * T::BM;
    const int n0 = blockIdx.y * T::BN;
    const int blocks = k / 32;  // per row
    const int steps = (blocks + T::KB - 1) / T::KB;
    const long long row_bytes = static_cast<long long>(blocks) * T::BLOCK_BYTES;

    half* xs = reinterpret_cast<half*>(smem);
    uint8_t* ws = smem + T::X_BYTES;

    // W rows of step s into stage buffer `slot`: row r's bytes start at byte (start & 7) of
    // its first granule.
    auto copy_w = [&](int s, int slot) {
        const int kb0 = s * T::KB;
        const int bytes = min(T::KB, blocks - kb0) * T::BLOCK_BYTES;
        uint8_t* dst = ws + slot * T::W_STAGE;
#pragma unroll
        for (int i0 = 0; i0 < T::BN * T::W_GRANULES; i0 += T::THREADS) {
            const int i = i0 + tid;
            const int r = i / T::W_GRANULES;
            const int q = i - r * T::W_GRANULES;
            const long long start =
                min(n0 + r, n - 1) * row_bytes + static_cast<long long>(kb0) * T::BLOCK_BYTES;
            const int shift = static_cast<int>(start & 7);
            if (r < T::BN && 8 * q < shift + bytes)
                cp_async8(smem_addr(dst + r * T::W_ROW + 8 * q), w + (start - shift) + 8 * q);
        }
    };

    float4 xv[T::X_VECS];
    auto load_x = [&](int s) {
        const int k0 = s * T::KS;
#pragma unroll
        for (int v = 0; v < T::X_VECS; ++v) {
            const int i = tid + v * T::THREADS;
            const int r = i / (T::KS / 4);
            const int c = 4 * (i % (T::KS / 4));
            xv[v] = k0 + c < k ? __ldg(reinterpret_cast<const float4*>(
                                     x + static_cast<long long>(min(m0 + r, m - 1)) * k + k0 + c))
                               : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    };
    auto store_x = [&](int buf) {
        half* dst = xs + buf * T::BM * T::XS;
#pragma unroll
        for (int v = 0; v < T::X_VECS; ++v) {
            const int i = tid + v * T::THREADS;
            const int r = i / (T::KS / 4);
            const int c = 4 * (i % (T::KS / 4));
            *reinterpret_cast<uint2*>(dst + r * T::XS + c) =
                make_uint2(pack_half2(xv[v].x, xv[v].y), pack_half2(xv[v].z, xv[v].w));
        }
    };

    // This lane's B rows: n8 tile j of the warp, column g.
    int w_row[T::NT];        // byte offset of the row in a stage buffer
    uint32_t w_phase[T::NT];  // its start in W, mod 8
#pragma unroll
    for (int j = 0; j < T::NT; ++j) {
        const int r = wn * T::WN + 8 * j + g;
        w_row[j] = r * T::W_ROW;
        w_phase[j] = static_cast<uint32_t>(min(n0 + r, n - 1)) * static_cast<uint32_t>(row_bytes);
    }
    const uint32_t a_lane = smem_addr(xs) + 2 * ((lane & 15) * T::XS + 8 * (lane >> 4));

    float acc[T::MT][T::NT][4] = {};
    auto compute = [&](int s, int slot, int buf) {
        const int kb0 = s * T::KB;
        const int nblk = min(T::KB, blocks - kb0);
        const uint8_t* src = ws + slot * T::W_STAGE;
        const uint32_t a_buf = a_lane + 2 * buf * T::BM * T::XS;
#pragma unroll
        for (int b0 = 0; b0 < T::KB; b0 += T::WARPS_K) {
            const int b = b0 + wk;
            if (b >= nblk) break;
            uint32_t frag[T::NT][4];
#pragma unroll
            for (int j = 0; j < T::NT; ++j) {
                const uint32_t shift =
                    (w_phase[j] + static_cast<uint32_t>(kb0 * T::BLOCK_BYTES)) & 7;
                ember::MmaFragment<Block>::load(
                    src + w_row[j] + shift + b * T::BLOCK_BYTES, t, frag[j]);
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

#pragma unroll
    for (int s = 0; s < T::STAGES - 1; ++s) {
        if (s < steps) copy_w(s, s);
        cp_async_commit();
    }
    load_x(0);
    store_x(0);
    int read_slot = 0;
    int write_slot = T::STAGES - 1;
    for (int s = 0; s < steps; ++s) {
        if (s + 1 < steps) load_x(s + 1);
        // Copy group s (step s) is done once at most STAGES - 2 newer groups are pending.
        cp_async_wait<T::STAGES - 2>();
        __syncthreads();
        if (s + T::STAGES - 1 < steps) copy_w(s + T::STAGES - 1, write_slot);
        cp_async_commit();  // possibly empty: keeps one group per step
        compute(s, read_slot, s & 1);
        if (s + 1 < steps) store_x((s + 1) & 1);
        read_slot = read_slot + 1 == T::STAGES ? 0 : read_slot + 1;
        write_slot = write_slot + 1 == T::STAGES ? 0 : write_slot + 1;
    }

    if constexpr (T::WARPS_K > 1) {
        cp_async_wait<0>();
        __syncthreads();  // every warp is done with the buffers the partial sums now reuse
        float* red = reinterpret_cast<float*>(smem) + wn * T::ACC * 32 + lane;
        constexpr int PART = T::WARPS_N * T::ACC * 32;  // floats per K-warp
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
        if (wk > 0) return;
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

    // Accumulator e of tile (mi, j) is row 16 mi + g + 8 (e / 2), column 8 j + 2 t + e % 2.
    const bool pairs = (n & 1) == 0 && (reinterpret_cast<uintptr_t>(y) & 7) == 0;
#pragma unroll
    for (int mi = 0; mi < T::MT; ++mi) {
#pragma unroll
        for (int j = 0; j < T::NT; ++j) {
            const int col = n0 + wn * T::WN + 8 * j + 2 * t;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = m0 + 16 * mi + g + 8 * h;
                if (row >= m || col >= n) continue;
                float* out = y + static_cast<long long>(row) * n + col;
                if (pairs) {
                    *reinterpret_cast<float2*>(out) =
                        make_float2(acc[mi][j][2 * h], acc[mi][j][2 * h + 1]);
                } else {
                    out[0] = acc[mi][j][2 * h];
                    if (col + 1 < n) out[1] = acc[mi][j][2 * h + 1];
                }
            }
        }
    }
}

}  // namespace ember_gemm

// Launch grid (ceil(m / BM), ceil(n / BN)), block 32 * WARPS_N * WARPS_K threads (256 for every
// shape); w and x 16-byte aligned, k a positive multiple of 32. M tiles vary fastest, so the
// blocks that share a W tile run together and read it from DRAM once.
#define EMBER_QUANT_GEMM(TYPE, SHAPE)                                                          \
    extern "C" __global__ void __launch_bounds__(                                              \
        32 * ember_gemm::SHAPE::WARPS_N * ember_gemm::SHAPE::WARPS_K,                          \
        ember_gemm::SHAPE::MIN_BLOCKS)                                                         \
        quant_gemm_##TYPE##_##SHAPE(const uint8_t* __restrict__ w, const float* __restrict__ x, \
                                    float* __restrict__ y, int m, int n, int k) {              \
        using T = ember_gemm::Tile<ember::block_##TYPE, ember_gemm::SHAPE>;                    \
        __shared__ __align__(16) uint8_t smem[T::SMEM];                                        \
        ember_gemm::gemm<ember::block_##TYPE, ember_gemm::SHAPE>(w, x, y, m, n, k, smem);      \
    }

EMBER_QUANT_GEMM(q4_0, m16)
EMBER_QUANT_GEMM(q4_0, m32)
EMBER_QUANT_GEMM(q4_0, m64)
EMBER_QUANT_GEMM(q4_0, m128)
EMBER_QUANT_GEMM(q4_1, m16)
EMBER_QUANT_GEMM(q4_1, m32)
EMBER_QUANT_GEMM(q4_1, m64)
EMBER_QUANT_GEMM(q4_1, m128)
EMBER_QUANT_GEMM(q8_0, m16)
EMBER_QUANT_GEMM(q8_0, m32)
EMBER_QUANT_GEMM(q8_0, m64)
EMBER_QUANT_GEMM(q8_0, m128)
