// The block formats after Q4_0/Q4_1/Q8_0 (common.cuh): Q5_0 and Q5_1 (32 weights a block) and
// the K-quants Q4_K, Q5_K and Q6_K (256-weight super-blocks), GGML's layouts (ggml-common.h,
// gguf-py's quants.py; model/quant_legacy.py and model/quant_k.py decode the same bytes with
// NumPy and say where each weight's bits sit).
//
// Every kernel reads these formats through one view: a block is UNITS units of 32 weights, and
// unit u gives (`Format<Block>::word`) its 32 integer codes as 8 words of 4 signed bytes in
// weight order (word i: weights 4i..4i+3), with (`Format<Block>::scales`) a scale for its first
// and its last 16 weights and an additive term: weight j = scale(j) * code(j) + m. Codes fit in
// int8 (|code| <= 63), so a unit's dot with int8 x is dp4a throughout (quant_gemv.cu) and a code
// times its scale is one float product (quant_gemm.cu, embedding.cu). The scale is the product
// the NumPy reference forms (d * sub-block scale), so a dequantised weight rounds as it does.
#pragma once

#include "common.cuh"

namespace ember {

constexpr int QK_K = 256;

struct block_q5_0 {
    half d;
    uint8_t qh[4];   // bit j: weight j's fifth bit
    uint8_t qs[16];  // weight j in byte j's low nibble, weight j + 16 in its high one
};
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 must match GGML's 22-byte layout");

struct block_q5_1 {
    half d;
    half m;
    uint8_t qh[4];
    uint8_t qs[16];
};
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 must match GGML's 24-byte layout");

struct block_q4_k {
    half d;
    half dmin;
    uint8_t scales[12];  // 8 6-bit scales and 8 6-bit minimums, packed (scale_min below)
    uint8_t qs[128];     // 64 weights per 32 bytes: low nibbles, then high nibbles
};
static_assert(sizeof(block_q4_k) == 144, "block_q4_k must match GGML's 144-byte layout");

struct block_q5_k {
    half d;
    half dmin;
    uint8_t scales[12];
    uint8_t qh[32];   // bit u of byte i: weight 32 u + i's fifth bit
    uint8_t qs[128];
};
static_assert(sizeof(block_q5_k) == 176, "block_q5_k must match GGML's 176-byte layout");

struct block_q6_k {
    uint8_t ql[128];    // low 4 bits: per half of 128 weights, 64 bytes' low then high nibbles
    uint8_t qh[64];     // top 2 bits: per half, bit pair p of 32 bytes is weights 32 p..
    int8_t scales[16];  // one per 16 weights
    half d;
};
static_assert(sizeof(block_q6_k) == 210, "block_q6_k must match GGML's 210-byte layout");

// The 4 bytes at a 2-byte-aligned address (every field of every format is at an even offset,
// and rows are whole blocks). Reads the 4-byte words around it: 2 bytes past the block at most.
__device__ __forceinline__ uint32_t load_u32_even(const uint8_t* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const uint32_t* w = reinterpret_cast<const uint32_t*>(a & ~static_cast<uintptr_t>(3));
    return (a & 2) ? __byte_perm(w[0], w[1], 0x5432) : w[0];
}

__device__ __forceinline__ float half_at(const uint8_t* p) {
    return __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short*>(p)));
}

// Bits 0-3 of v to bit 4 of bytes 0-3 (the shifted copies of v do not overlap: no carries).
__device__ __forceinline__ uint32_t spread_fifth_bits(uint32_t v) {
    return ((v & 0xFu) * 0x00204081u & 0x01010101u) << 4;
}

// Q4_K/Q5_K's 6-bit scale and minimum of sub-block u (model/quant_k.py's _scale_min_6bit).
__device__ __forceinline__ void scale_min(const uint8_t* s, int u, int& sc, int& mn) {
    if (u < 4) {
        sc = s[u] & 63;
        mn = s[u + 4] & 63;
    } else {
        sc = (s[u + 4] & 0xF) | ((s[u - 4] >> 6) << 4);
        mn = (s[u + 4] >> 4) | ((s[u] >> 6) << 4);
    }
}

// A unit's scales: weight j = (j < 16 ? lo : hi) * code(j) + m.
struct UnitScales {
    float lo;
    float hi;
    float m;
};

template <typename Block>
struct Format;

template <>
struct Format<block_q5_0> {
    static constexpr int WEIGHTS = 32, UNITS = 1;
    static constexpr bool HAS_MIN = false;
    __device__ static __forceinline__ uint32_t word(const uint8_t* b, int, int i) {
        const uint32_t qs = load_u32_even(b + 6 + 4 * (i & 3));
        const uint32_t nib = (i < 4 ? qs : qs >> 4) & 0x0F0F0F0Fu;
        const uint32_t q = nib | spread_fifth_bits(load_u32_even(b + 2) >> (4 * i));
        return __vsub4(q, 0x10101010u);  // q - 16, per byte
    }
    __device__ static __forceinline__ UnitScales scales(const uint8_t* b, int) {
        const float d = half_at(b);
        return {d, d, 0.0f};
    }
};

template <>
struct Format<block_q5_1> {
    static constexpr int WEIGHTS = 32, UNITS = 1;
    static constexpr bool HAS_MIN = true;
    __device__ static __forceinline__ uint32_t word(const uint8_t* b, int, int i) {
        const uint32_t qs = load_u32_even(b + 8 + 4 * (i & 3));
        const uint32_t nib = (i < 4 ? qs : qs >> 4) & 0x0F0F0F0Fu;
        return nib | spread_fifth_bits(load_u32_even(b + 4) >> (4 * i));
    }
    __device__ static __forceinline__ UnitScales scales(const uint8_t* b, int) {
        const float d = half_at(b);
        return {d, d, half_at(b + 2)};
    }
};

template <>
struct Format<block_q4_k> {
    static constexpr int WEIGHTS = QK_K, UNITS = 8;
    static constexpr bool HAS_MIN = true;
    __device__ static __forceinline__ uint32_t word(const uint8_t* b, int u, int i) {
        const uint32_t qs = load_u32_even(b + 16 + 32 * (u >> 1) + 4 * i);
        return (qs >> (4 * (u & 1))) & 0x0F0F0F0Fu;
    }
    __device__ static __forceinline__ UnitScales scales(const uint8_t* b, int u) {
        int sc, mn;
        scale_min(b + 4, u, sc, mn);
        const float d = half_at(b) * static_cast<float>(sc);
        return {d, d, -(half_at(b + 2) * static_cast<float>(mn))};
    }
};

template <>
struct Format<block_q5_k> {
    static constexpr int WEIGHTS = QK_K, UNITS = 8;
    static constexpr bool HAS_MIN = true;
    __device__ static __forceinline__ uint32_t word(const uint8_t* b, int u, int i) {
        const uint32_t qs = load_u32_even(b + 48 + 32 * (u >> 1) + 4 * i);
        const uint32_t qh = load_u32_even(b + 16 + 4 * i);
        return ((qs >> (4 * (u & 1))) & 0x0F0F0F0Fu) | (((qh >> u) & 0x01010101u) << 4);
    }
    __device__ static __forceinline__ UnitScales scales(const uint8_t* b, int u) {
        return Format<block_q4_k>::scales(b, u);
    }
};

template <>
struct Format<block_q6_k> {
    static constexpr int WEIGHTS = QK_K, UNITS = 8;
    static constexpr bool HAS_MIN = false;
    // Unit u = 4 h + p: weights 32 p.. of half h.
    __device__ static __forceinline__ uint32_t word(const uint8_t* b, int u, int i) {
        const int h = u >> 2, p = u & 3;
        const uint32_t ql = load_u32_even(b + 64 * h + 32 * (p & 1) + 4 * i);
        const uint32_t qh = load_u32_even(b + 128 + 32 * h + 4 * i);
        const uint32_t q = ((ql >> (4 * (p >> 1))) & 0x0F0F0F0Fu) |
                           (((qh >> (2 * p)) & 0x03030303u) << 4);
        return __vsub4(q, 0x20202020u);  // q - 32, per byte
    }
    __device__ static __forceinline__ UnitScales scales(const uint8_t* b, int u) {
        const float d = half_at(b + 208);
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
        return {d * static_cast<float>(sc[2 * u]), d * static_cast<float>(sc[2 * u + 1]), 0.0f};
    }
};

// Signed byte `byte` of w as a float.
__device__ __forceinline__ float code_at(uint32_t w, int byte) {
    return static_cast<float>(static_cast<int8_t>(w >> (8 * byte)));
}

// Weight j (< WEIGHTS) of a block, dequantised.
template <typename Block>
__device__ __forceinline__ float weight_at(const uint8_t* b, int j) {
    using F = Format<Block>;
    const int u = j >> 5, i = j & 31;
    const UnitScales s = F::scales(b, u);
    return fmaf(i < 16 ? s.lo : s.hi, code_at(F::word(b, u, i >> 2), i & 3), s.m);
}

}  // namespace ember
