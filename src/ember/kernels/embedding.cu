// Token embedding lookup: out[t, :] = the dequantised row token_ids[t] of a GGUF table.
//
// One block per token. Tables are stored as GGUF has them (Q8_0 for the default model's tied
// embedding), so the lookup dequantises on the fly instead of keeping a float copy of a
// vocabulary-sized matrix. An id outside [0, vocab) gives a zero row rather than reading out
// of bounds: padded rows of a captured batch carry such ids (-1). An id of -2 - r is a
// placeholder for `previous[r]`, the token the previous step sampled in row r (asynchronous
// scheduling: the host launches a step before it has seen the previous step's tokens).
#include "common.cuh"
#include "interface.cuh"
#include "quant_formats.cuh"

namespace ember_embedding {

template <typename Block>
__device__ __forceinline__ float dequant(const Block& b, int j);

template <>
__device__ __forceinline__ float dequant(const ember::block_q8_0& b, int j) {
    return __half2float(b.d) * static_cast<float>(b.qs[j]);
}

template <>
__device__ __forceinline__ float dequant(const ember::block_q4_0& b, int j) {
    const int q = j < 16 ? b.qs[j] & 0xF : b.qs[j - 16] >> 4;
    return __half2float(b.d) * static_cast<float>(q - 8);
}

template <>
__device__ __forceinline__ float dequant(const ember::block_q4_1& b, int j) {
    const int q = j < 16 ? b.qs[j] & 0xF : b.qs[j - 16] >> 4;
    return fmaf(__half2float(b.d), static_cast<float>(q), __half2float(b.m));
}

__device__ __forceinline__ int token_id(
    const int* __restrict__ ids, const int* __restrict__ previous, long long t) {
    const int id = ids[t];
    return id <= -2 && previous != nullptr ? previous[-2 - id] : id;
}

template <typename Block>
__device__ __forceinline__ void embed_quant(
    const uint8_t* __restrict__ table, const int* __restrict__ ids,
    const int* __restrict__ previous, float* __restrict__ out, int d, int vocab) {
    const long long t = blockIdx.x;
    const int id = token_id(ids, previous, t);
    float* row_out = out + t * d;
    if (id < 0 || id >= vocab) {
        for (int i = threadIdx.x; i < d; i += blockDim.x) row_out[i] = 0.0f;
        return;
    }
    const Block* row = reinterpret_cast<const Block*>(
        table + static_cast<long long>(id) * (d / 32) * static_cast<long long>(sizeof(Block)));
    for (int i = threadIdx.x; i < d; i += blockDim.x) row_out[i] = dequant(row[i >> 5], i & 31);
}

// The formats of quant_formats.cuh: a row is d / WEIGHTS blocks.
template <typename Block>
__device__ __forceinline__ void embed_format(
    const uint8_t* __restrict__ table, const int* __restrict__ ids,
    const int* __restrict__ previous, float* __restrict__ out, int d, int vocab) {
    constexpr int WEIGHTS = ember::Format<Block>::WEIGHTS;
    constexpr long long BYTES = sizeof(Block);
    const long long t = blockIdx.x;
    const int id = token_id(ids, previous, t);
    float* row_out = out + t * d;
    if (id < 0 || id >= vocab) {
        for (int i = threadIdx.x; i < d; i += blockDim.x) row_out[i] = 0.0f;
        return;
    }
    const uint8_t* row = table + static_cast<long long>(id) * (d / WEIGHTS) * BYTES;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        row_out[i] = ember::weight_at<Block>(row + i / WEIGHTS * BYTES, i % WEIGHTS);
}

template <typename T>
__device__ __forceinline__ void embed_float(
    const T* __restrict__ table, const int* __restrict__ ids, const int* __restrict__ previous,
    float* __restrict__ out, int d, int vocab) {
    const long long t = blockIdx.x;
    const int id = token_id(ids, previous, t);
    float* row_out = out + t * d;
    const bool valid = id >= 0 && id < vocab;
    const T* row = table + static_cast<long long>(valid ? id : 0) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        row_out[i] = valid ? static_cast<float>(row[i]) : 0.0f;
}

}  // namespace ember_embedding

// table: raw GGUF bytes [vocab, row bytes]; ids [T]; previous: int32 sampled ids of the
// previous step (or null: no placeholders); out float32 [T, d]. Grid (T), any block. EMBED:
// embed_quant for common.cuh's blocks, embed_format for quant_formats.cuh's.
#define EMBER_EMBEDDING_OF(TYPE, EMBED)                                                    \
    extern "C" __global__ void embedding_##TYPE(                                           \
        const uint8_t* __restrict__ table, const int* __restrict__ ids,                    \
        const int* __restrict__ previous, float* __restrict__ out, int d, int vocab) {     \
        ember::await_prior_grid();                                                         \
        ember_embedding::EMBED<ember::block_##TYPE>(table, ids, previous, out, d, vocab);  \
    }                                                                                      \
    EMBER_EXPORT_PARAMS(embedding_##TYPE)

EMBER_EMBEDDING_OF(q4_0, embed_quant)
EMBER_EMBEDDING_OF(q4_1, embed_quant)
EMBER_EMBEDDING_OF(q8_0, embed_quant)

EMBER_EMBEDDING_OF(q5_0, embed_format)
EMBER_EMBEDDING_OF(q5_1, embed_format)
EMBER_EMBEDDING_OF(q4_k, embed_format)
EMBER_EMBEDDING_OF(q5_k, embed_format)
EMBER_EMBEDDING_OF(q6_k, embed_format)

// The same for a float32 or float16 table [vocab, d].
#define EMBER_EMBEDDING_FLOAT(NAME, T)                                                     \
    extern "C" __global__ void embedding_##NAME(                                           \
        const T* __restrict__ table, const int* __restrict__ ids,                          \
        const int* __restrict__ previous, float* __restrict__ out, int d, int vocab) {     \
        ember::await_prior_grid();                                                         \
        ember_embedding::embed_float(table, ids, previous, out, d, vocab);                 \
    }                                                                                      \
    EMBER_EXPORT_PARAMS(embedding_##NAME)

EMBER_EMBEDDING_FLOAT(f32, float)
EMBER_EMBEDDING_FLOAT(f16, half)
