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

// True when every pointer allows 16-byte (float4) accesses. Kernels test it once per thread;
// the result is the same for every thread of a launch, so the branch never diverges.
template <typename... Ptrs>
__device__ __forceinline__ bool aligned16(const Ptrs*... ptrs) {
    return ((reinterpret_cast<uintptr_t>(ptrs) | ...) & 15) == 0;
}

}  // namespace ember
