// Random weights generated on the device, for benchmarking model shapes without their files.
//
// Values come from a counter-based hash of (seed, index), so a synthetic model is the same on
// every run and no host memory or PCIe transfer is involved even for an 8B shape. Quantised
// blocks get scales like real weights' (d in [scale/2, scale)) and uniformly random codes, so
// the kernels do exactly the work they do on a real file of that type.
#include "common.cuh"
#include "interface.cuh"
#include "quant_formats.cuh"

namespace ember_synthetic {

__device__ __forceinline__ uint32_t mix(unsigned long long x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return static_cast<uint32_t>(x);
}

__device__ __forceinline__ uint32_t random_bits(unsigned long long seed, long long i) {
    return mix(seed * 0x9E3779B97F4A7C15ULL + static_cast<unsigned long long>(i));
}

__device__ __forceinline__ float unit(uint32_t bits) {  // [0, 1)
    return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

template <typename Block>
__device__ __forceinline__ void fill(Block* blocks, long long count, unsigned long long seed,
                                     float scale) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long b = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; b < count;
         b += stride) {
        Block& blk = blocks[b];
        const long long base = b * 64;
        blk.d = __float2half(scale * (0.5f + 0.5f * unit(random_bits(seed, base))));
        if constexpr (sizeof(Block) == sizeof(ember::block_q4_1)) {
            blk.m = __float2half(-8.0f * __half2float(blk.d));
        }
        uint8_t* qs = reinterpret_cast<uint8_t*>(&blk) + sizeof(Block) - sizeof(blk.qs);
        for (int j = 0; j < static_cast<int>(sizeof(blk.qs)); j += 4) {
            const uint32_t bits = random_bits(seed, base + 1 + j);
            for (int k = 0; k < 4 && j + k < static_cast<int>(sizeof(blk.qs)); ++k) {
                uint8_t q = static_cast<uint8_t>(bits >> (8 * k));
                if constexpr (sizeof(Block) == sizeof(ember::block_q8_0)) {
                    if (q == 0x80) q = 0x81;  // int8 codes in [-127, 127], as GGML's
                }
                qs[j + k] = q;
            }
        }
    }
}

// The formats of quant_formats.cuh: random bytes, then each scale field set so that weights
// spread about as widely as a 32-weight type's of the same `scale` (d * code): the sub-block
// scales (6 bits, or Q6_K's int8) and codes stay random, and each minimum's super-scale is
// the one that centres an average sub-block near zero.
__device__ __forceinline__ void set_half(uint8_t* p, float v) {
    *reinterpret_cast<half*>(p) = __float2half(v);
}

template <typename Block>
__device__ __forceinline__ void set_scales(uint8_t* b, float d);

template <>
__device__ __forceinline__ void set_scales<ember::block_q5_0>(uint8_t* b, float d) {
    set_half(b, d / 2);  // codes -16..15
}
template <>
__device__ __forceinline__ void set_scales<ember::block_q5_1>(uint8_t* b, float d) {
    set_half(b, d / 2);
    set_half(b + 2, -8.0f * d);  // codes 0..31, centred at 16
}
template <>
__device__ __forceinline__ void set_scales<ember::block_q4_k>(uint8_t* b, float d) {
    set_half(b, d / 32);          // sub-scales average 31.5
    set_half(b + 2, 7.5f * d / 32);  // minimum = dmin * m, m averaging sc's 31.5
}
template <>
__device__ __forceinline__ void set_scales<ember::block_q5_k>(uint8_t* b, float d) {
    set_half(b, d / 64);
    set_half(b + 2, 15.5f * d / 64);
}
template <>
__device__ __forceinline__ void set_scales<ember::block_q6_k>(uint8_t* b, float d) {
    set_half(b + 208, d / 256);  // |sub-scale| averages 64, codes -32..31
}

template <typename Block>
__device__ __forceinline__ void fill_format(uint8_t* out, long long count,
                                            unsigned long long seed, float scale) {
    constexpr int BYTES = static_cast<int>(sizeof(Block));
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long b = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; b < count;
         b += stride) {
        uint8_t* blk = out + b * BYTES;
        const long long base = b * 256;
        for (int j = 0; j < BYTES; j += 2) {  // blocks are 2-byte aligned
            const uint32_t bits = random_bits(seed, base + 1 + j);
            *reinterpret_cast<uint16_t*>(blk + j) = static_cast<uint16_t>(bits);
        }
        set_scales<Block>(blk, scale * (0.5f + 0.5f * unit(random_bits(seed, base))));
    }
}

}  // namespace ember_synthetic

// Fill `count` blocks with random codes and scales in [scale / 2, scale). Any grid.
#define EMBER_SYNTHETIC(TYPE)                                                                \
    extern "C" __global__ void synthetic_##TYPE(uint8_t* __restrict__ out, long long count,  \
                                                unsigned long long seed, float scale) {      \
        ember_synthetic::fill(reinterpret_cast<ember::block_##TYPE*>(out), count, seed,      \
                              scale);                                                        \
    }                                                                                        \
    EMBER_EXPORT_PARAMS(synthetic_##TYPE)

EMBER_SYNTHETIC(q4_0)
EMBER_SYNTHETIC(q4_1)
EMBER_SYNTHETIC(q8_0)

#define EMBER_SYNTHETIC_FORMAT(TYPE)                                                         \
    extern "C" __global__ void synthetic_##TYPE(uint8_t* __restrict__ out, long long count,  \
                                                unsigned long long seed, float scale) {      \
        ember_synthetic::fill_format<ember::block_##TYPE>(out, count, seed, scale);          \
    }                                                                                        \
    EMBER_EXPORT_PARAMS(synthetic_##TYPE)

EMBER_SYNTHETIC_FORMAT(q5_0)
EMBER_SYNTHETIC_FORMAT(q5_1)
EMBER_SYNTHETIC_FORMAT(q4_k)
EMBER_SYNTHETIC_FORMAT(q5_k)
EMBER_SYNTHETIC_FORMAT(q6_k)

// out[i] = lo + (hi - lo) * u_i for a norm's weights. Any grid.
extern "C" __global__ void synthetic_f32(float* __restrict__ out, long long count,
                                         unsigned long long seed, float lo, float hi) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += stride)
        out[i] = lo + (hi - lo) * ember_synthetic::unit(ember_synthetic::random_bits(seed, i));
}
EMBER_EXPORT_PARAMS(synthetic_f32)
