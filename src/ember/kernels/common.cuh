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

// True when every pointer allows 16-byte (float4) accesses. Kernels test it once per thread;
// the result is the same for every thread of a launch, so the branch never diverges.
template <typename... Ptrs>
__device__ __forceinline__ bool aligned16(const Ptrs*... ptrs) {
    return ((reinterpret_cast<uintptr_t>(ptrs) | ...) & 15) == 0;
}

}  // namespace ember
