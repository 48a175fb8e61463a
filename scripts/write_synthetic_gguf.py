"""Write a synthetic model (`ember bench --model synthetic:NAME`'s shapes and block types) as a
GGUF file, so that llama.cpp can run the very same weights beside Ember (issue 19's table).

    python scripts/write_synthetic_gguf.py llama-8b-q4_k_m /tmp/llama-8b-q4_k_m.gguf

Needs a GPU: the random blocks come from the same generator as `CudaLlama.synthetic`
(synthetic.cu), one tensor at a time, copied back and written with the gguf package. The
file holds each tensor under llama.cpp's name in its own type (llama-quantize's `_K_M` mix
for the k_m presets), the architecture's metadata and the synthetic byte-level tokenizer, so
`ember bench --model FILE` and `llama-bench -m FILE` read the same bytes. The text is
meaningless; speed does not depend on it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.stream import Stream
from ember.kernels.quant_gemv import QuantType
from ember.kernels.synthetic import Synthetic
from ember.model.config import ModelConfig
from ember.model.cuda.weights import tensor_shapes
from ember.model.synthetic import PRESETS, TypeRule, synthetic_vocabulary


def write_metadata(writer: gguf.GGUFWriter, config: ModelConfig) -> None:
    c = config
    writer.add_name(c.name)
    writer.add_block_count(c.n_layers)
    writer.add_context_length(c.context_length)
    writer.add_embedding_length(c.d_model)
    writer.add_feed_forward_length(c.ffn_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_layer_norm_rms_eps(c.rms_eps)
    writer.add_rope_freq_base(c.rope.base)
    writer.add_rope_dimension_count(c.rope.dim)
    writer.add_vocab_size(c.vocab_size)
    meta = synthetic_vocabulary(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(meta.tokens)
    writer.add_token_types(meta.token_types)
    writer.add_token_merges(meta.merges)
    writer.add_eos_token_id(meta.eos_id)


def write(name: str, out: Path) -> None:
    config, types = PRESETS[name]
    device = Device.get(0)
    context = device.retain_primary_context()
    context.make_current()
    stream = Stream.create()
    generator = Synthetic.load(device)
    writer = gguf.GGUFWriter(out, arch=config.architecture)
    write_metadata(writer, config)
    try:
        for seed, (tensor, shape) in enumerate(tensor_shapes(config)):
            data, kind = _random_tensor(generator, stream, types, config, tensor, shape, seed)
            if kind is GGMLQuantizationType.F32:
                writer.add_tensor(tensor, data)
            else:
                writer.add_tensor(tensor, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
    finally:
        writer.close()
        generator.unload()
        stream.destroy()
        context.release()


def _random_tensor(
    generator: Synthetic,
    stream: Stream,
    types: TypeRule,
    config: ModelConfig,
    tensor: str,
    shape: tuple[int, ...],
    seed: int,
) -> tuple[np.ndarray, GGMLQuantizationType]:
    """A tensor's host bytes (uint8 [rows, row bytes] for blocks, float32 for a norm) and type,
    made on the device as CudaLlama.synthetic makes them."""
    if len(shape) == 1:
        with DeviceArray.empty(shape, np.float32) as values:
            generator.fill_f32(values, seed, 0.9, 1.1, stream)
            stream.synchronize()
            return values.to_numpy(), GGMLQuantizationType.F32
    rows, cols = shape
    quant = QuantType[types((tensor,), config)]
    with DeviceArray.empty((rows, quant.row_bytes(cols)), np.uint8) as blocks:
        generator.fill_quant(blocks, quant, seed, 0.5 / math.sqrt(cols), stream)
        stream.synchronize()
        return blocks.to_numpy(), GGMLQuantizationType[quant.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    write(args.preset, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
