// quant_gemv.cu's stage loop for the K-quants (Q4_K, Q5_K, Q6_K), included by quant_gemv.cu
// after quant_gemv_units.cuh, whose unit accumulation (unit_accumulate: the integer dots and
// the float operations after them) it shares, so that both paths round alike.
//
// A stage is one super-block (256 weights) of 32 rows. Lane l's slot in the warp's ring is an
// ODD number of 16-byte granules, and the lane reads its super-block with 16-byte loads at
// compile-time granule offsets: a quarter-warp's 8 lanes then hit 8 different groups of 4
// banks, free of conflicts (an even slot, as the unit path's, makes every 4-byte load 8-way
// conflicted for Q4_K). The lane decodes the super-block's scales and minimums once, then
// takes its 8 units' dots.
//
//  - Q4_K (144 bytes, 9 granules) and Q5_K (176, 11): a row is K / 256 super-blocks, so every
//    super-block starts on a granule and its slot is exactly its granules. Granule 0 is d,
//    dmin and the 12 bytes of packed 6-bit scales and minimums, decoded with a few bit
//    operations on its words; Q5_K's fifth bits are granules 1-2; the nibbles follow, 2
//    granules per pair of units (unit 2p: low nibbles, 2p + 1: high).
//  - Q6_K (210 bytes): super-blocks start at every even byte of a granule, per row and per
//    stage. The 14 granules holding one are copied into a 15-granule slot (odd), read with
//    16-byte loads at compile-time offsets as above, and the lane's start `shift` (even,
//    < 16) is taken out in registers: a word at piece offset 4c is bytes 4c + shift.. of the
//    loaded words, picked by two selects on shift's bits 3 and 2 and one byte_perm on bit 1
//    (3 operations a word, for the 53 words a super-block reads). Chosen over variants
//    compiled per word offset (4 copies of the decode, 1 operation a word): a warp's lanes
//    hold rows whose starts differ unless K is a multiple of 2048, so variants would diverge
//    and run up to 4 times over; the selects cost the same in every case and keep one copy
//    of the code. Over 4-byte loads at the lane's own offset (the unit path's): no slot of
//    16-byte granules makes those conflict-free.
//
// Measured in the SASS (sm_90 cubin, nvcc 13.0), the stage loop of one super-block per lane:
//   quant_gemv_q4_k_b1, weight reads: before (the unit path, whose slot pointer the compiler
//     could not prove shared) 66 generic 32-bit LD + 24 generic 64-bit LD + 12 LDS.U8, 8-way
//     conflicted; now 9 LDS.128, conflict-free. The loop: 926 instructions -> 543 (Q4_0's
//     stage of the same bytes: ~590). x's 16 LDS.128 and 16 LDS of records are unchanged.
//   q5_k_b1: 99 + 28 generic LD + 12 LDS.U8 -> 11 LDS.128; 1396 instructions -> 679.
//   q6_k_b1: 190 generic LD + 16 LDS.S8 + 1 LDS.U16 -> 14 LDS.128; 1797 instructions -> 933.
//   At batch 8: q4_k 2525 -> 2058, q5_k 3014 -> 2183, q6_k 3212 -> 2399 (and its 9 local
//   loads gone). No spills at tiers 1, 2 and 8; q6_k_b4 spills 4 bytes (128 registers).
// Exact as the unit path: the same integers from one dp4a chain per half unit, and the same
// float operations in the same order (unit_accumulate), so a row's bits are what they were;
// the batch invariance of quant_gemv_units.cuh holds as there (warps chosen without the batch).
// Included inside namespace ember_gemv.
#pragma once

template <typename Block>
struct SuperStage {
    static constexpr int block_bytes = static_cast<int>(sizeof(Block));
    // Q4_K and Q5_K super-blocks are whole granules, so every one starts on a granule.
    static constexpr bool aligned = block_bytes % 16 == 0;
    // Granules holding one super-block: a Q6_K one may start up to 14 bytes into its first.
    static constexpr int copied = aligned ? block_bytes / 16 : (block_bytes + 14 + 15) / 16;
    static constexpr int granules = copied | 1;  // a lane's slot: odd
    static constexpr int ring = STAGES * 32 * 16 * granules;
    static_assert(ember::Format<Block>::WEIGHTS == STAGE_BLOCKS * 32, "a stage: one super-block");
};

// Byte `i` of w, as a float (exact).
__device__ __forceinline__ float byte_float(uint32_t w, int i) {
    return static_cast<float>((w >> (8 * i)) & 0xFFu);
}

// Signed byte `i` of w, as a float (exact).
__device__ __forceinline__ float signed_byte_float(uint32_t w, int i) {
    return static_cast<float>(static_cast<int8_t>(w >> (8 * i)));
}

// Q4_K / Q5_K: the super-block in `slot` (16-byte aligned) . x, added to acc.
template <typename Block, int MAX_BATCH>
__device__ __forceinline__ void super_dot_q45k(
    const uint4* slot, int batch, const uint8_t* xs, float (&acc)[MAX_BATCH]) {
    constexpr bool Q5 = std::is_same_v<Block, ember::block_q5_k>;
    constexpr int NIBBLES = Q5 ? 3 : 1;  // the first granule of the nibbles
    // d and dmin, then scales[0..11] (model/quant_k.py's _scale_min_6bit): sub-blocks 0-3's
    // scale and minimum are the low 6 bits of bytes 0-3 and 4-7; 4-7's are the nibbles of bytes
    // 8-11 with the top 2 bits of bytes 0-3 (scale) and 4-7 (minimum) above them.
    const uint4 head = slot[0];
    const float d = half_bits_to_float(head.x);
    const float dmin = half_bits_to_float(head.x >> 16);
    const uint32_t sc[2] = {head.y & 0x3F3F3F3Fu,
                            (head.w & 0x0F0F0F0Fu) | ((head.y >> 2) & 0x30303030u)};
    const uint32_t mn[2] = {head.z & 0x3F3F3F3Fu,
                            ((head.w >> 4) & 0x0F0F0F0Fu) | ((head.z >> 2) & 0x30303030u)};
    uint32_t qh[8];
    if constexpr (Q5) {
        const uint4 h0 = slot[1];
        const uint4 h1 = slot[2];
        const uint32_t words[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) qh[i] = words[i];
    }
#pragma unroll
    for (int pair = 0; pair < 4; ++pair) {
        const uint4 g0 = slot[NIBBLES + 2 * pair];
        const uint4 g1 = slot[NIBBLES + 2 * pair + 1];
        const uint32_t qs[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int u = 2 * pair + half;
            uint32_t q[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                q[i] = (qs[i] >> (4 * half)) & 0x0F0F0F0Fu;
                if constexpr (Q5) q[i] |= ((qh[i] >> u) & 0x01010101u) << 4;
            }
            // Format<block_q4_k>::scales' products, rounded alike.
            const float scale = d * byte_float(sc[u >> 2], u & 3);
            const ember::UnitScales s{scale, scale, -(dmin * byte_float(mn[u >> 2], u & 3))};
            unit_accumulate<MAX_BATCH, true>(q, s, u, batch, xs, acc);
        }
    }
}

// Granule `i` of a lane's slot, loaded as the asm says: the compiler may not turn a select
// between two loaded words into one 4-byte load from a selected address (which it does with
// plain loads, bringing back the bank conflicts), nor repeat a load; each is issued once.
__device__ __forceinline__ uint4 load_granule(const uint4* slot, int i) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(smem_address(slot + i)));
    return v;
}

// The words of a Q6_K piece that starts `shift` bytes (even, < 16) into a lane's slot, from
// the slot's granules held in registers.
template <int GRANULES>
struct ShiftedPiece {
    uint4 granule[GRANULES];  // loaded by the caller before the words that need them
    bool up8;  // shift's bit 3: the piece's words start 2 words into the slot's (or more)
    bool up4;  // bit 2: one word more
    uint32_t select;  // bit 1: each word straddles two of the slot's (byte_perm's selector)

    __device__ __forceinline__ explicit ShiftedPiece(uint32_t shift)
        : up8(shift & 8), up4(shift & 4), select(shift & 2 ? 0x5432u : 0x3210u) {}

    __device__ __forceinline__ void load(const uint4* slot, int first, int last) {
#pragma unroll
        for (int i = first; i <= last; ++i) granule[i] = load_granule(slot, i);
    }

    // The slot's word j (a compile-time index once unrolled).
    __device__ __forceinline__ uint32_t raw(int j) const {
        const uint4 g = granule[j >> 2];
        switch (j & 3) {
            case 0: return g.x;
            case 1: return g.y;
            case 2: return g.z;
            default: return g.w;
        }
    }

    // The slot's word j + (shift >> 2).
    __device__ __forceinline__ uint32_t pick(int j) const {
        const uint32_t a = up8 ? raw(j + 2) : raw(j);
        const uint32_t b = up8 ? raw(j + 3) : raw(j + 1);
        return up4 ? b : a;
    }

    // The piece's word c (bytes 4c..4c + 3).
    __device__ __forceinline__ uint32_t word(int c) const {
        return __byte_perm(pick(c), pick(c + 1), select);
    }
};

// Q6_K: the super-block starting `shift` bytes into `slot` . x, added to acc.
template <int MAX_BATCH>
__device__ __forceinline__ void super_dot_q6k(
    const uint4* slot, uint32_t shift, int batch, const uint8_t* xs, float (&acc)[MAX_BATCH]) {
    // Up to batch 2 the codes' -32 goes into the dp4a chains (unit_accumulate's OFFSET);
    // above, subtracting it once per word costs less than 8 dp4a a unit per batch row.
    constexpr bool OFFSET_IN_X = MAX_BATCH <= 2;
    ShiftedPiece<SuperStage<ember::block_q6_k>::copied> piece(shift);
    // scales[16] at bytes 192-207 (words 48-51), d at 208: the 2 bytes at shift within the
    // slot's words 52-55 (the piece's word 52 would read a granule past the 14 copied).
    piece.load(slot, 12, 13);
    uint32_t scale_words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) scale_words[i] = piece.word(48 + i);
    const float d = half_bits_to_float(piece.pick(52) >> (8 * (shift & 2)));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        // Half h: ql bytes 64 h.. (words 16 h.., granules 4 h to 4 h + 4 with the shift), qh
        // bytes 128 + 32 h.. (words 32 + 8 h.., granules 8 + 2 h to 10 + 2 h). Each granule
        // is loaded once: half 1 finds 4, 8, 10 and 12 loaded.
        if (h == 0) {
            piece.load(slot, 8, 10);
            piece.load(slot, 0, 4);
        } else {
            piece.load(slot, 11, 11);
            piece.load(slot, 5, 7);
        }
        uint32_t qh[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) qh[i] = piece.word(32 + 8 * h + i);
#pragma unroll
        for (int lo = 0; lo < 2; ++lo) {
            uint32_t ql[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) ql[i] = piece.word(16 * h + 8 * lo + i);
#pragma unroll
            for (int nibble = 0; nibble < 2; ++nibble) {
                const int p = 2 * nibble + lo;  // Format<block_q6_k>: unit 4 h + p
                const int u = 4 * h + p;
                uint32_t q[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const uint32_t v = ((ql[i] >> (4 * nibble)) & 0x0F0F0F0Fu) |
                                       (((qh[i] >> (2 * p)) & 0x03030303u) << 4);
                    q[i] = OFFSET_IN_X ? v : __vsub4(v, 0x20202020u);  // code = v - 32
                }
                const uint32_t sw = scale_words[u >> 1];
                const ember::UnitScales s{d * signed_byte_float(sw, 2 * (u & 1)),
                                          d * signed_byte_float(sw, 2 * (u & 1) + 1), 0.0f};
                unit_accumulate<MAX_BATCH, false, OFFSET_IN_X ? 32 : 0>(q, s, u, batch, xs, acc);
            }
        }
    }
}

// warp_rows for a K-quant: `ready` as there.
template <typename Block, int MAX_BATCH, typename Ready>
__device__ __forceinline__ void warp_rows_super(
    const uint8_t* __restrict__ w, const float* __restrict__ x, const RowMap& rows, int k,
    int batch, uint8_t* ring, uint8_t* xs, float (&acc)[MAX_BATCH],
    const float* __restrict__ g, const float* scale, Ready ready) {
    using S = SuperStage<Block>;
    constexpr int G = S::granules;
    constexpr int STAGE_BYTES = 32 * G * 16;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    const int stages = k / (STAGE_BLOCKS * 32);  // super-blocks a row (K % 256 == 0)
    const long long row_bytes = static_cast<long long>(stages) * S::block_bytes;
    const int mine = warp < stages ? (stages - warp + warps - 1) / warps : 0;

    // The rows' starts, from the 16-byte boundary at or below the first row's (the rows of a
    // thread block lie within 4 GB of each other). Lane l copies granules l + 32 j of the
    // stage's [32 rows][G]; a slot's granules from `copied` on are never read.
    const long long first = (rows.row(0) * row_bytes) & ~15LL;
    uint32_t start[G];
#pragma unroll
    for (int j = 0; j < G; ++j)
        start[j] = static_cast<uint32_t>(rows.row((lane + 32 * j) / G) * row_bytes - first);
    const uint32_t my_start = static_cast<uint32_t>(rows.row(lane) * row_bytes - first);
    const uint32_t ring_address = smem_address(ring) + 16 * lane;

    auto issue = [&](int t) {
        if (t >= mine) return;
        const uint32_t at = static_cast<uint32_t>((warp + t * warps) * S::block_bytes);
        const uint32_t dst = ring_address + (t % STAGES) * STAGE_BYTES;
#pragma unroll
        for (int j = 0; j < G; ++j) {
            const int granule = (lane + 32 * j) % G;
            const uint32_t src = start[j] + at;
            const uint32_t from = S::aligned ? src : src & ~15u;
            if (granule < S::copied)
                copy16(dst + 512 * j, opaque(w + first) + (from + 16 * granule));
        }
    };

#pragma unroll
    for (int t = 0; t < STAGES; ++t) {
        issue(t);
        commit();
    }
    ready();
    // Tier 1 loads the x of stage t + 1 before computing stage t, as warp_rows does.
    constexpr bool PREFETCH = MAX_BATCH == 1;
    PrefetchedX<PREFETCH ? MAX_BATCH : 1> next;
    auto prefetch = [&](int t) {
        next.load(x, k, batch, (warp + t * warps) * STAGE_BLOCKS, STAGE_BLOCKS, lane, g);
    };
    if (PREFETCH && mine > 0) prefetch(0);
    const uint8_t* my_slot = ring + lane * G * 16;
    for (int t = 0; t < mine; ++t) {
        const int stage = warp + t * warps;
        if constexpr (PREFETCH) {
            next.template quantize<Block>(batch, xs, lane, g != nullptr, scale);
            if (t + 1 < mine) prefetch(t + 1);
        } else {
            quantize_x<Block, MAX_BATCH>(
                x, k, batch, stage * STAGE_BLOCKS, STAGE_BLOCKS, xs, lane, g, scale);
        }
        wait_copies<STAGES - 1>();
        __syncwarp();
        const uint4* slot = reinterpret_cast<const uint4*>(my_slot + (t % STAGES) * STAGE_BYTES);
        if constexpr (S::aligned) {
            super_dot_q45k<Block, MAX_BATCH>(slot, batch, xs, acc);
        } else {
            const uint32_t shift =
                (my_start + static_cast<uint32_t>(stage * S::block_bytes)) & 15u;
            super_dot_q6k<MAX_BATCH>(slot, shift, batch, xs, acc);
        }
        __syncwarp();  // the ring slot and xs are free again
        issue(t + STAGES);
        commit();
    }
    wait_copies<0>();
}
