// quant_gemv.cu's stage loop for Q5_0 and Q5_1 (the 32-weight formats of quant_formats.cuh),
// included by quant_gemv.cu after its own loop, whose helpers (the x quantisation, the copies,
// RowMap) it shares; only the weights are read another way. The K-quants have their own loop
// (quant_gemv_super.cuh) and share this file's unit_accumulate.
//
// A stage is still 256 weights of 32 rows (8 x blocks): 8 Q5_0/Q5_1 blocks. Its bytes are
// copied into the warp's ring as quant_gemv copies unaligned rows, with the start taken per
// stage. Each lane then reads its row's units (32 weights) as 8 words of signed codes and its
// scales (ember::Format) and takes one dp4a dot per half unit with x's int8 block; x's scale,
// the units' scales and the minimum term are applied in float.
//
// Batch invariance: a row's sum runs over its stages in the order each warp takes them and
// over the warps in order, with integer dots per half unit, so it depends on the warp count
// alone. quant_gemv.py picks that count for these formats without looking at the batch (the
// same for every tier), so a row's result is the same whatever the batch and wherever the row
// sits in it.
// Included inside namespace ember_gemv.
#pragma once

template <typename Block>
struct UnitStage {
    using F = ember::Format<Block>;
    static constexpr int block_bytes = static_cast<int>(sizeof(Block));
    static constexpr int blocks = STAGE_BLOCKS * 32 / F::WEIGHTS;  // GGUF blocks a stage
    static constexpr int piece = blocks * block_bytes;
    static constexpr int granules = (piece + 14 + 15) / 16;  // a start up to 14 bytes in
    static constexpr int ring = STAGES * 32 * 16 * granules;
};

// acc[b] += a unit's codes q (8 words of 4 signed bytes, weight order) with scales s . x block
// `x_block` of the stage, for every batch row b: one dp4a chain per half unit, then floats.
// With OFFSET, q holds code + OFFSET per byte (< 128) and each chain starts at -OFFSET times
// its x's sum: the same integer, so the same bits, for 4 dp4a a half unit and batch row
// instead of a per-byte subtraction of each word (3 operations, whatever the batch).
template <int MAX_BATCH, bool HAS_MIN, int OFFSET = 0>
__device__ __forceinline__ void unit_accumulate(
    const uint32_t (&q)[8], const ember::UnitScales& s, int x_block, int batch,
    const uint8_t* xs, float (&acc)[MAX_BATCH]) {
    const uint4* xq = reinterpret_cast<const uint4*>(xs);
    const XRecord* records = reinterpret_cast<const XRecord*>(xs + MAX_BATCH * STAGE_BLOCKS * 32);
#pragma unroll
    for (int b = 0; b < MAX_BATCH; ++b) {
        // The wrapper runs a batch on the smallest tier that holds it, so rows up to
        // MAX_BATCH / 2 always exist.
        if (b > MAX_BATCH / 2 && b >= batch) break;
        const int pair = b * STAGE_BLOCKS + x_block;
        const uint4 x0 = xq[2 * pair];
        const uint4 x1 = xq[2 * pair + 1];
        int lo = 0;
        int hi = 0;
        if constexpr (OFFSET != 0) {
            constexpr int minus = static_cast<int>(0x01010101u * static_cast<uint8_t>(-OFFSET));
            lo = __dp4a(minus, static_cast<int>(x0.x), lo);
            lo = __dp4a(minus, static_cast<int>(x0.y), lo);
            lo = __dp4a(minus, static_cast<int>(x0.z), lo);
            lo = __dp4a(minus, static_cast<int>(x0.w), lo);
            hi = __dp4a(minus, static_cast<int>(x1.x), hi);
            hi = __dp4a(minus, static_cast<int>(x1.y), hi);
            hi = __dp4a(minus, static_cast<int>(x1.z), hi);
            hi = __dp4a(minus, static_cast<int>(x1.w), hi);
        }
        lo = __dp4a(static_cast<int>(q[0]), static_cast<int>(x0.x), lo);
        lo = __dp4a(static_cast<int>(q[1]), static_cast<int>(x0.y), lo);
        lo = __dp4a(static_cast<int>(q[2]), static_cast<int>(x0.z), lo);
        lo = __dp4a(static_cast<int>(q[3]), static_cast<int>(x0.w), lo);
        hi = __dp4a(static_cast<int>(q[4]), static_cast<int>(x1.x), hi);
        hi = __dp4a(static_cast<int>(q[5]), static_cast<int>(x1.y), hi);
        hi = __dp4a(static_cast<int>(q[6]), static_cast<int>(x1.z), hi);
        hi = __dp4a(static_cast<int>(q[7]), static_cast<int>(x1.w), hi);
        const XRecord r = records[pair];
        // |lo|, |hi| <= 16 * 63 * 127 < 2^24: exact as floats.
        const float dot = fmaf(s.lo, static_cast<float>(lo), s.hi * static_cast<float>(hi));
        acc[b] = fmaf(r.d, dot, acc[b]);
        if constexpr (HAS_MIN) acc[b] = fmaf(s.m, r.sum, acc[b]);
    }
}

// acc[b] += unit u of the block at `w` (2-byte aligned) . x block `x_block` of batch row b.
template <typename Block, int MAX_BATCH>
__device__ __forceinline__ void unit_dot(
    const uint8_t* w, int u, int x_block, int batch, const uint8_t* xs,
    float (&acc)[MAX_BATCH]) {
    using F = ember::Format<Block>;
    uint32_t q[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = F::word(w, u, i);
    unit_accumulate<MAX_BATCH, F::HAS_MIN>(q, F::scales(w, u), x_block, batch, xs, acc);
}

// warp_rows for a unit format: `ready` as there.
template <typename Block, int MAX_BATCH, typename Ready>
__device__ __forceinline__ void warp_rows_units(
    const uint8_t* __restrict__ w, const float* __restrict__ x, const RowMap& rows, int k,
    int batch, uint8_t* ring, uint8_t* xs, float (&acc)[MAX_BATCH],
    const float* __restrict__ g, const float* scale, Ready ready) {
    using S = UnitStage<Block>;
    using F = ember::Format<Block>;
    constexpr int G = S::granules;
    constexpr int STAGE_BYTES = 32 * G * 16;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    const int blocks = k / F::WEIGHTS;  // per row
    const long long row_bytes = static_cast<long long>(blocks) * S::block_bytes;
    const int stages = (blocks + S::blocks - 1) / S::blocks;
    const int mine = warp < stages ? (stages - warp + warps - 1) / warps : 0;

    // The rows' starts, from the 16-byte boundary at or below the first row's (the rows of a
    // thread block lie within 4 GB of each other).
    const long long first = (rows.row(0) * row_bytes) & ~15LL;
    uint32_t start[G];
#pragma unroll
    for (int j = 0; j < G; ++j)
        start[j] = static_cast<uint32_t>(rows.row((lane + 32 * j) / G) * row_bytes - first);
    const uint32_t my_start = static_cast<uint32_t>(rows.row(lane) * row_bytes - first);
    const uint32_t ring_address = smem_address(ring) + 16 * lane;

    auto issue = [&](int t) {
        if (t >= mine) return;
        const int first_block = (warp + t * warps) * S::blocks;
        const uint32_t at = static_cast<uint32_t>(first_block * S::block_bytes);
        const int piece = min(S::blocks, blocks - first_block) * S::block_bytes;
        const uint32_t dst = ring_address + (t % STAGES) * STAGE_BYTES;
#pragma unroll
        for (int j = 0; j < G; ++j) {
            const int granule = (lane + 32 * j) % G;
            const uint32_t src = start[j] + at;
            // Granules past the piece may lie past the end of W: skipped.
            if (16 * granule < static_cast<int>(src & 15) + piece)
                copy16(dst + 512 * j, opaque(w + first) + ((src & ~15u) + 16 * granule));
        }
    };

#pragma unroll
    for (int t = 0; t < STAGES; ++t) {
        issue(t);
        commit();
    }
    ready();
    const uint8_t* my_slot = ring + lane * G * 16;
    for (int t = 0; t < mine; ++t) {
        const int first_block = (warp + t * warps) * S::blocks;
        const int in_stage = min(S::blocks, blocks - first_block);
        const int x_first = first_block * F::WEIGHTS / 32;
        quantize_x<Block, MAX_BATCH>(
            x, k, batch, x_first, in_stage * F::UNITS, xs, lane, g, scale);
        wait_copies<STAGES - 1>();
        __syncwarp();
        const uint32_t shift = (my_start + static_cast<uint32_t>(first_block * S::block_bytes)) & 15;
        const uint8_t* piece = my_slot + (t % STAGES) * STAGE_BYTES + shift;
#pragma unroll
        for (int i = 0; i < S::blocks; ++i) {
            if (i >= in_stage) break;
#pragma unroll
            for (int u = 0; u < F::UNITS; ++u)
                unit_dot<Block, MAX_BATCH>(
                    piece + i * S::block_bytes, u, i * F::UNITS + u, batch, xs, acc);
        }
        __syncwarp();  // the ring slot and xs are free again
        issue(t + STAGES);
        commit();
    }
    wait_copies<0>();
}

