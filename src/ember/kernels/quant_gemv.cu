// Quantised GEMV for decode: y[b, n] = sum_k x[b, k] * W[n, k], W the raw GGUF bytes of a
// Q4_0, Q4_1 or Q8_0 tensor [N, K] (row-major, 32 weights per block), x and y float32.
//
// Meant to be bound by reading W once. Blocks are 18, 20 or 34 bytes, so a lane cannot load
// whole blocks with 16-byte loads; instead each warp copies a chunk of CHUNK_BLOCKS blocks of
// ROWS rows into its own shared memory with 16-byte loads (all in flight before the first
// store), then lane l takes weights 4l..4l+3 of each group of 4 blocks from there, so that the
// warp's loads of x are coalesced 16-byte loads; x is loaded once for all ROWS rows. Partial
// sums are reduced across the warp with shuffles at the end. 128 blocks of every type are a
// multiple of 16 bytes, so only a row's start can be misaligned; the copy then starts at the
// 16-byte boundary below it. Reading whole aligned 16-byte granules that hold a byte of W never
// leaves W's pages, so the few bytes read past either end of W cannot fault.
#include "common.cuh"

namespace {

constexpr int WARPS = 4;  // per block
constexpr int ROWS = 2;   // per warp
// Blocks of a row per chunk: each warp has 4.6-8.7 KB of loads in flight.
constexpr int CHUNK_BLOCKS = 128;

template <typename Block>
struct Chunk {
    static constexpr int bytes = CHUNK_BLOCKS * static_cast<int>(sizeof(Block));
    static_assert(bytes % 16 == 0, "a chunk must be whole 16-byte vectors");
    static constexpr int buffer = bytes + 32;  // room for a misaligned start and end
    static constexpr int loads = (buffer / 16 + 31) / 32;  // 16-byte loads per lane per row
};

template <typename Block, int MAX_BATCH>
__device__ __forceinline__ void gemv(
    const uint8_t* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int n,
    int k, int batch, uint8_t* smem) {
    using C = Chunk<Block>;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const long long row0 = (static_cast<long long>(blockIdx.x) * WARPS + warp) * ROWS;
    if (row0 >= n) return;
    uint8_t* buf = smem + warp * ROWS * C::buffer;
    const int blocks = k / 32;
    const long long row_bytes = static_cast<long long>(blocks) * sizeof(Block);
    float acc[ROWS][MAX_BATCH] = {};

    for (int c = 0; c < blocks; c += CHUNK_BLOCKS) {
        const int in_chunk = min(CHUNK_BLOCKS, blocks - c);
        uint4 v[ROWS][C::loads];
        int shift[ROWS];
        int vectors[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const long long start =
                (row0 + r) * row_bytes + c * static_cast<long long>(sizeof(Block));
            const long long base = start & ~15LL;
            shift[r] = static_cast<int>(start - base);
            const int bytes = shift[r] + in_chunk * static_cast<int>(sizeof(Block));
            vectors[r] = row0 + r < n ? (bytes + 15) >> 4 : 0;
            const uint4* src = reinterpret_cast<const uint4*>(w + base);
#pragma unroll
            for (int j = 0; j < C::loads; ++j) {
                const int i = lane + 32 * j;
                if (i < vectors[r]) v[r][j] = __ldcs(src + i);
            }
        }
        __syncwarp();  // the previous chunk's reads of buf are done
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
#pragma unroll
            for (int j = 0; j < C::loads; ++j) {
                const int i = lane + 32 * j;
                if (i < vectors[r]) reinterpret_cast<uint4*>(buf + r * C::buffer)[i] = v[r][j];
            }
        }
        __syncwarp();
        // Lane l takes weights 4l..4l+3 of each group of 4 blocks: blocks g + l / 8.
        const int j = (lane & 7) * 4;
        for (int g = 0; g < in_chunk; g += 4) {
            const int blk = g + (lane >> 3);
            if (blk >= in_chunk) break;
            const long long kx = (static_cast<long long>(c) + g) * 32 + lane * 4;
#pragma unroll
            for (int b = 0; b < MAX_BATCH; ++b) {
                if (b >= batch) break;
                const float4 xs = __ldg(reinterpret_cast<const float4*>(
                    x + b * static_cast<long long>(k) + kx));
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    const Block& block = *reinterpret_cast<const Block*>(
                        buf + r * C::buffer + shift[r] + blk * static_cast<int>(sizeof(Block)));
                    acc[r][b] += ember::QuantDot<Block>::dot4(block, j, xs);
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int b = 0; b < MAX_BATCH; ++b) {
            float s = acc[r][b];
            for (int offset = 16; offset > 0; offset >>= 1)
                s += __shfl_xor_sync(0xffffffffu, s, offset);
            if (lane == 0 && b < batch && row0 + r < n)
                y[b * static_cast<long long>(n) + row0 + r] = s;
        }
    }
}

}  // namespace

// One kernel per block type and batch tier: registers grow with the batch, so batch 1 must not
// pay for batch 8. Launch grid ceil(n / (WARPS * ROWS)), block 32 * WARPS; batch <= MAX_BATCH.
#define EMBER_QUANT_GEMV(TYPE, MAX_BATCH)                                                     \
    extern "C" __global__ void __launch_bounds__(32 * WARPS) quant_gemv_##TYPE##_b##MAX_BATCH( \
        const uint8_t* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,      \
        int n, int k, int batch) {                                                              \
        __shared__ __align__(16) uint8_t smem[WARPS * ROWS * Chunk<ember::block_##TYPE>::buffer]; \
        gemv<ember::block_##TYPE, MAX_BATCH>(w, x, y, n, k, batch, smem);                       \
    }

EMBER_QUANT_GEMV(q4_0, 1)
EMBER_QUANT_GEMV(q4_0, 2)
EMBER_QUANT_GEMV(q4_0, 4)
EMBER_QUANT_GEMV(q4_0, 8)
EMBER_QUANT_GEMV(q4_1, 1)
EMBER_QUANT_GEMV(q4_1, 2)
EMBER_QUANT_GEMV(q4_1, 4)
EMBER_QUANT_GEMV(q4_1, 8)
EMBER_QUANT_GEMV(q8_0, 1)
EMBER_QUANT_GEMV(q8_0, 2)
EMBER_QUANT_GEMV(q8_0, 4)
EMBER_QUANT_GEMV(q8_0, 8)
