// Random weights generated on the device, for benchmarking model shapes without their files.
//
// Values come from a counter-based hash of (seed, index), so a synthetic model is the same on
// every run and no host memory or PCIe transfer is involved even for an 8B shape. Quantised
// blocks get scales like real weights' (d in [scale/2, scale)) and uniformly random codes, so
// the kernels do exactly the work they do on a real file of that type.
#include "common.cuh"
#include "interface.cuh"

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

// out[i] = lo + (hi - lo) * u_i for a norm's weights. Any grid.
extern "C" __global__ void synthetic_f32(float* __restrict__ out, long long count,
                                         unsigned long long seed, float lo, float hi) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += stride)
        out[i] = lo + (hi - lo) * ember_synthetic::unit(ember_synthetic::random_bits(seed, i));
}
EMBER_EXPORT_PARAMS(synthetic_f32)
