// Shared definitions for Ember's kernels: quantised block layouts and small device helpers.
//
// The block layouts are GGML's (ggml-common.h), so weights copied byte for byte out of a GGUF
// file can be read in place. Each block holds QK values; `d` is the scale and, for Q4_1, `m`
// the minimum: x = d * q (Q8_0), d * (q - 8) (Q4_0), d * q + m (Q4_1).
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

namespace ember {

constexpr int QK4_0 = 32;
constexpr int QK4_1 = 32;
constexpr int QK8_0 = 32;

struct block_q4_0 {
    half d;
    uint8_t qs[QK4_0 / 2];  // two 4-bit values per byte: low nibble first half, high second
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must match GGML's 18-byte layout");

struct block_q4_1 {
    half d;
    half m;
    uint8_t qs[QK4_1 / 2];
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 must match GGML's 20-byte layout");

struct block_q8_0 {
    half d;
    int8_t qs[QK8_0];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must match GGML's 34-byte layout");

// sum(w[j + i] * x_i, i < 4) for weights j..j+3 of one block (j a multiple of 4). A warp reads
// 4 consecutive weights per lane so that its loads of x are coalesced. The quantised values
// are read two bytes at a time, as blocks are only 2-byte aligned within a row. Q4_0 subtracts
// 8 before converting, so no large terms cancel; Q4_1 is d * sum(q x) + m * sum(x).
template <typename Block>
struct QuantDot;

// Four 4-bit values j..j+3 of a Q4 block: low nibbles of bytes j.. for j < 16, else high
// nibbles of bytes j - 16.. (GGML's layout).
__device__ __forceinline__ void nibbles4(const uint8_t* qs, int j, int (&q)[4]) {
    const uint16_t* pair = reinterpret_cast<const uint16_t*>(qs + (j & 15));
    const int shift = j & 16 ? 4 : 0;
    const int lo = pair[0] >> shift;
    const int hi = pair[1] >> shift;
    q[0] = lo & 0xF;
    q[1] = (lo >> 8) & 0xF;
    q[2] = hi & 0xF;
    q[3] = (hi >> 8) & 0xF;
}

template <>
struct QuantDot<block_q4_0> {
    __device__ static __forceinline__ float dot4(const block_q4_0& b, int j, float4 x) {
        int q[4];
        nibbles4(b.qs, j, q);
        float acc = static_cast<float>(q[0] - 8) * x.x;
        acc = fmaf(static_cast<float>(q[1] - 8), x.y, acc);
        acc = fmaf(static_cast<float>(q[2] - 8), x.z, acc);
        acc = fmaf(static_cast<float>(q[3] - 8), x.w, acc);
        return __half2float(b.d) * acc;
    }
};

template <>
struct QuantDot<block_q4_1> {
    __device__ static __forceinline__ float dot4(const block_q4_1& b, int j, float4 x) {
        int q[4];
        nibbles4(b.qs, j, q);
        float acc = static_cast<float>(q[0]) * x.x;
        acc = fmaf(static_cast<float>(q[1]), x.y, acc);
        acc = fmaf(static_cast<float>(q[2]), x.z, acc);
        acc = fmaf(static_cast<float>(q[3]), x.w, acc);
        return fmaf(__half2float(b.d), acc, __half2float(b.m) * ((x.x + x.y) + (x.z + x.w)));
    }
};

template <>
struct QuantDot<block_q8_0> {
    __device__ static __forceinline__ float dot4(const block_q8_0& b, int j, float4 x) {
        const uint16_t* pair = reinterpret_cast<const uint16_t*>(b.qs + j);
        const int lo = pair[0];
        const int hi = pair[1];
        float acc = static_cast<float>(static_cast<int8_t>(lo & 0xFF)) * x.x;
        acc = fmaf(static_cast<float>(static_cast<int8_t>(lo >> 8)), x.y, acc);
        acc = fmaf(static_cast<float>(static_cast<int8_t>(hi & 0xFF)), x.z, acc);
        acc = fmaf(static_cast<float>(static_cast<int8_t>(hi >> 8)), x.w, acc);
        return __half2float(b.d) * acc;
    }
};

// fp16x2 arithmetic on packed registers, rounded to nearest (.rn also keeps ptxas from fusing a
// sub and a mul into an fma, which would round once where these round twice).
__device__ __forceinline__ uint32_t hsub2(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

__device__ __forceinline__ uint32_t hfma2(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Two bytes from a 2-byte-aligned address (a block's fields are no better aligned in a row).
__device__ __forceinline__ uint32_t load_u16(const void* p) {
    return *reinterpret_cast<const uint16_t*>(p);
}

// An fp16 scale in both halves of a register.
__device__ __forceinline__ uint32_t splat_half(const half& h) {
    const uint32_t bits = load_u16(&h);
    return bits | bits << 16;
}

// fp16 1024 + q for the 4-bit values q in bits 0-3 and 16-19 of v: 0x6400 is 1024, whose ulp is
// 1, so or-ing an integer below 1024 into the mantissa adds it exactly.
__device__ __forceinline__ uint32_t nibble_pair(uint32_t v) {
    return (v & 0x000F000Fu) | 0x64006400u;
}

// The B operand of mma.sync.m16n8k16 (.col, f16) for one block of one weight row, in fp16: lane
// (g, t) = (lane / 4, lane % 4), whose column is row g of a group of 8 weight rows, gets weights
// {2t, 2t+1}, {2t+8, 2t+9} (registers b[0], b[1]: the first k16 step) and {16+2t, 17+2t},
// {24+2t, 25+2t} (b[2], b[3]: the second), each pair low half first (PTX ISA, "Matrix Fragments
// for mma.m16n8k16 with floating point type"). `block` may be only 2-byte aligned. Each weight
// is rounded to fp16 once: the integer q (or q - 8) is exact in fp16 and the scale is applied by
// one rounded mul (Q4_1: one rounded fma with the minimum).
template <typename Block>
struct MmaFragment;

// Weights j and j + 16 are the low and high nibbles of byte j, so a lane's 8 weights are the
// nibbles of bytes 2t, 2t+1, 2t+8, 2t+9; they are gathered into v = [2t, 2t+8, 2t+1, 2t+9] so
// that each pair is one mask of v shifted by 0 (b[0]), 8 (b[1]), 4 (b[2]) or 12 (b[3]) bits.
__device__ __forceinline__ uint32_t q4_fragment_bytes(const uint8_t* qs, int t) {
    return __byte_perm(load_u16(qs + 2 * t), load_u16(qs + 2 * t + 8), 0x5140);
}

template <>
struct MmaFragment<block_q4_0> {
    __device__ static __forceinline__ void load(const uint8_t* block, int t, uint32_t (&b)[4]) {
        const block_q4_0& blk = *reinterpret_cast<const block_q4_0*>(block);
        const uint32_t v = q4_fragment_bytes(blk.qs, t);
        const uint32_t d = splat_half(blk.d);
        constexpr uint32_t bias = 0x64086408u;  // 1032: 1024 + q - 1032 = q - 8, exactly
        b[0] = hmul2(hsub2(nibble_pair(v), bias), d);
        b[1] = hmul2(hsub2(nibble_pair(v >> 8), bias), d);
        b[2] = hmul2(hsub2(nibble_pair(v >> 4), bias), d);
        b[3] = hmul2(hsub2(nibble_pair(v >> 12), bias), d);
    }
};

template <>
struct MmaFragment<block_q4_1> {
    __device__ static __forceinline__ void load(const uint8_t* block, int t, uint32_t (&b)[4]) {
        const block_q4_1& blk = *reinterpret_cast<const block_q4_1*>(block);
        const uint32_t v = q4_fragment_bytes(blk.qs, t);
        const uint32_t d = splat_half(blk.d);
        const uint32_t m = splat_half(blk.m);
        constexpr uint32_t bias = 0x64006400u;  // 1024
        b[0] = hfma2(hsub2(nibble_pair(v), bias), d, m);
        b[1] = hfma2(hsub2(nibble_pair(v >> 8), bias), d, m);
        b[2] = hfma2(hsub2(nibble_pair(v >> 4), bias), d, m);
        b[3] = hfma2(hsub2(nibble_pair(v >> 12), bias), d, m);
    }
};

// Two int8 weights (low byte first) as fp16 q * d: xor 0x80 makes q + 128 in [0, 255], which
// goes under the 0x64 exponent byte as 1024 + q + 128; subtracting 1152 leaves q exactly.
__device__ __forceinline__ uint32_t q8_pair(const int8_t* qs, uint32_t d) {
    const uint32_t biased = __byte_perm(load_u16(qs) ^ 0x8080u, 0x64646464u, 0x4140);
    return hmul2(hsub2(biased, 0x64806480u), d);
}

template <>
struct MmaFragment<block_q8_0> {
    __device__ static __forceinline__ void load(const uint8_t* block, int t, uint32_t (&b)[4]) {
        const block_q8_0& blk = *reinterpret_cast<const block_q8_0*>(block);
        const uint32_t d = splat_half(blk.d);
        b[0] = q8_pair(blk.qs + 2 * t, d);
        b[1] = q8_pair(blk.qs + 2 * t + 8, d);
        b[2] = q8_pair(blk.qs + 2 * t + 16, d);
        b[3] = q8_pair(blk.qs + 2 * t + 24, d);
    }
};

// True when every pointer allows 16-byte (float4) accesses. Kernels test it once per thread;
// the result is the same for every thread of a launch, so the branch never diverges.
template <typename... Ptrs>
__device__ __forceinline__ bool aligned16(const Ptrs*... ptrs) {
    return ((reinterpret_cast<uintptr_t>(ptrs) | ...) & 15) == 0;
}

// Programmatic dependent launch (sm_90 and newer). Every Ember kernel calls this first, before
// it touches global memory: it waits until the grid launched before it on the stream has
// completed and its writes are visible, then lets the next grid start launching its blocks, so
// that a launch's setup overlaps the end of the previous kernel instead of following it. The
// host asks for this overlap (CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION) only where
// it loaded sm_90+ machine code; elsewhere, and without the attribute, both are no-ops.
__device__ __forceinline__ void await_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace ember
