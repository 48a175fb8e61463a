"""GGUFFile on small files written with gguf-py's GGUFWriter: round trip, then every way a file
can be broken, each of which must be a ModelFormatError that names the file and the culprit."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType, GGUFValueType, quants

from ember.errors import ModelFormatError, ModelNotFoundError
from ember.model.default_model import default_model_path
from ember.model.gguf_file import GGUFFile, TensorInfo

from .test_quant import random_blocks

T = GGMLQuantizationType
F32_EPS = float(np.float32(1e-5))  # what a FLOAT32 key written as 1e-5 reads back as

METADATA: dict[str, object] = {
    "general.name": "tiny test model",
    "llama.block_count": 2,
    "llama.context_length": 256,
    "llama.rope.freq_base": 10000.0,
    "llama.attention.layer_norm_rms_epsilon": F32_EPS,
    "tokenizer.ggml.add_bos_token": True,
    "tokenizer.ggml.tokens": ["<s>", "</s>", "héllo", "wörld", ""],
    "tokenizer.ggml.token_type": [3, 3, 1, 1, 1],
    "tokenizer.ggml.scores": [0.0, -1.5, -2.25, 3.5, 1.0],
    "test.uint64": 2**40 + 3,
    "test.int8": -7,
    "test.float64": 0.1,
}

# name -> (type, NumPy shape); the Q4_1 one spans several of dequantize's 4096-block chunks.
TENSORS: dict[str, tuple[GGMLQuantizationType, tuple[int, ...]]] = {
    "token_embd.weight": (T.Q8_0, (16, 64)),
    "blk.0.attn_norm.weight": (T.F32, (64,)),
    "blk.0.attn_q.weight": (T.Q4_0, (64, 64)),
    "blk.0.ffn_up.weight": (T.Q4_1, (576, 256)),
    "blk.0.ffn_down.weight": (T.F16, (64, 96)),
    "blk.0.attn_k.weight": (T.BF16, (32, 64)),
    "blk.0.conv.weight": (T.F32, (2, 3, 32)),
    "blk.1.attn_q.weight": (T.Q4_K, (64, 512)),
    "blk.1.attn_k.weight": (T.Q5_K, (16, 256)),
    "blk.1.attn_v.weight": (T.Q6_K, (16, 256)),
    "blk.1.ffn_gate.weight": (T.Q2_K, (8, 256)),
    "blk.1.ffn_up.weight": (T.Q3_K, (8, 256)),
    "blk.1.ffn_down.weight": (T.Q5_0, (32, 96)),
    "blk.1.attn_output.weight": (T.Q5_1, (32, 64)),
}
# Types gguf-py cannot quantize: written as random blocks with finite scales.
RANDOM_BLOCK_TYPES = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K}


def encode(
    values: npt.NDArray[np.float32], ggml_type: GGMLQuantizationType
) -> npt.NDArray[np.generic]:
    if ggml_type == T.F32:
        return values
    if ggml_type == T.F16:
        return values.astype(np.float16)
    return quants.quantize(values, ggml_type)


# name -> (data, the type to record for uint8 block data; None lets the writer infer it)
Encoded = dict[str, tuple[npt.NDArray[np.generic], GGMLQuantizationType | None]]


def write_gguf(path: Path, tensors: Encoded) -> Path:
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_string("general.name", str(METADATA["general.name"]))
    writer.add_uint32("llama.block_count", 2)
    writer.add_uint64("llama.context_length", 256)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "héllo", "wörld", ""])
    writer.add_key_value(
        "tokenizer.ggml.token_type", [3, 3, 1, 1, 1], GGUFValueType.ARRAY, GGUFValueType.INT32
    )
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.25, 3.5, 1.0])
    writer.add_uint64("test.uint64", 2**40 + 3)
    writer.add_int8("test.int8", -7)
    writer.add_float64("test.float64", 0.1)
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sample_tensors() -> tuple[Encoded, dict[str, npt.NDArray[np.float32]]]:
    """Encoded tensors for the writer, and what each must load back as (gguf's reference)."""
    rng = np.random.default_rng(1234)
    encoded: Encoded = {}
    expected: dict[str, npt.NDArray[np.float32]] = {}
    for name, (ggml_type, shape) in TENSORS.items():
        values = (rng.standard_normal(shape) * rng.uniform(0.1, 2.0) + 0.3).astype(np.float32)
        if ggml_type in RANDOM_BLOCK_TYPES:
            n_blocks = values.size // gguf.GGML_QUANT_SIZES[ggml_type][0]
            data = random_blocks(ggml_type, n_blocks, seed=len(encoded)).reshape(shape[0], -1)
        else:
            data = encode(values, ggml_type)
        encoded[name] = (data, None if ggml_type in (T.F32, T.F16) else ggml_type)
        expected[name] = quants.dequantize(data, ggml_type).reshape(shape)
    return encoded, expected


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, dict[str, npt.NDArray[np.float32]]]:
    encoded, expected = sample_tensors()
    return write_gguf(tmp_path / "tiny.gguf", encoded), expected


def test_metadata_round_trip(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    path, _ = sample
    model = GGUFFile.open(path)
    assert model.path == path
    assert model.version == 3
    assert model.architecture == "llama"
    assert {key: model.metadata[key] for key in METADATA} == METADATA
    assert not any(key.startswith("GGUF.") for key in model.metadata)
    assert model.require_int("llama.block_count") == 2
    assert model.require_int("test.uint64") == 2**40 + 3
    assert model.require_float("llama.rope.freq_base") == 10000.0
    assert model.require_float("llama.context_length") == 256.0  # ints widen to float
    assert model.require_str("general.name") == "tiny test model"
    assert model.require("tokenizer.ggml.add_bos_token") is True
    assert model.get("no.such.key") is None
    assert model.get("no.such.key", 5) == 5


def test_metadata_matches_gguf_reader(
    sample: tuple[Path, dict[str, npt.NDArray[np.float32]]],
) -> None:
    path, _ = sample
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert dict(GGUFFile.open(path).metadata) == fields


def test_tensors_round_trip(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    path, expected = sample
    model = GGUFFile.open(path)
    assert list(model.tensors) == list(TENSORS)
    for name, (ggml_type, shape) in TENSORS.items():
        block_size, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        n_bytes = int(np.prod(shape)) // block_size * type_size
        assert model.tensors[name] == TensorInfo(name, ggml_type, shape, n_bytes)
        assert model.has_tensor(name)
        raw = model.raw(name)
        assert raw.nbytes == n_bytes
        assert not raw.flags.writeable  # a view of the read-only memory map, not a copy
        loaded = model.load(name, expected_shape=shape)
        assert loaded.dtype == np.float32 and loaded.flags.c_contiguous
        np.testing.assert_array_equal(loaded, expected[name])
    assert not model.has_tensor("output.weight")


def test_default_model() -> None:
    try:
        path = default_model_path()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    model = GGUFFile.open(path)
    assert len(model.tensors) == 272
    assert model.architecture == "llama"
    assert model.require_int("llama.block_count") == 30
    tokens = model.require("tokenizer.ggml.tokens")
    assert isinstance(tokens, list) and len(tokens) == 49152
    embedding = model.tensors["token_embd.weight"]
    assert (embedding.ggml_type, embedding.shape) == (T.Q8_0, (49152, 576))
    norm = model.load("blk.0.attn_norm.weight", expected_shape=(576,))
    assert norm.dtype == np.float32 and np.isfinite(norm).all()


def assert_format_error(path: Path, *fragments: str) -> str:
    with pytest.raises(ModelFormatError) as error:
        GGUFFile.open(path)
    message = str(error.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        GGUFFile.open(tmp_path / "missing.gguf")
    with pytest.raises(ModelNotFoundError, match="not a file"):
        GGUFFile.open(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    assert_format_error(path, "empty")


def test_too_short_file(tmp_path: Path) -> None:
    path = tmp_path / "short.gguf"
    path.write_bytes(b"GG")
    assert_format_error(path, "too short")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.gguf"
    path.write_bytes(b"\x00\x01" + np.random.default_rng(5).bytes(4096))
    assert_format_error(path, "not a GGUF file")


def test_wrong_magic(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    path, _ = sample
    path.write_bytes(b"GGML" + path.read_bytes()[4:])
    assert_format_error(path, "not a GGUF file", "b'GGML'")


def test_unsupported_version(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    path, _ = sample
    data = path.read_bytes()
    path.write_bytes(data[:4] + (7).to_bytes(4, "little") + data[8:])
    assert_format_error(path, "unsupported GGUF version 7")
    path.write_bytes(data[:4] + (3).to_bytes(4, "big") + data[8:])
    assert_format_error(path, "big-endian")


def truncate(path: Path, size: int) -> Path:
    cut = path.with_name(f"cut-{size}.gguf")
    cut.write_bytes(path.read_bytes()[:size])
    return cut


def test_truncated_at_each_part(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    path, _ = sample
    reader = gguf.GGUFReader(path)
    assert_format_error(truncate(path, 20), "truncated", "24-byte GGUF header")
    tokens = reader.fields["tokenizer.ggml.tokens"]
    message = assert_format_error(truncate(path, tokens.offset + 60), "truncated", "metadata")
    assert "'tokenizer.ggml.add_bos_token'" in message  # the last key read whole
    second = reader.tensors[1].field.offset
    assert_format_error(truncate(path, second + 5), "truncated", "tensor directory")
    last = reader.tensors[-1]
    assert_format_error(
        truncate(path, last.data_offset + last.n_bytes // 2), "truncated", repr(last.name)
    )
    first = reader.tensors[0]
    assert_format_error(truncate(path, first.data_offset + 3), "truncated", repr(first.name))


def test_truncated_anywhere(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    path, _ = sample
    reader = gguf.GGUFReader(path)
    # Past the end of the last tensor's data only alignment padding is missing: still valid.
    data_end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    for size in [*range(0, reader.data_offset, 7), *range(reader.data_offset, data_end, 997)]:
        assert_format_error(truncate(path, size))
    GGUFFile.open(truncate(path, data_end))


def test_corrupt_header_bytes(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    """Flipped bytes anywhere before the tensor data: either still a valid file or a
    ModelFormatError, never a raw NumPy/struct/Unicode error."""
    path, _ = sample
    data = path.read_bytes()
    header_end = gguf.GGUFReader(path).data_offset
    rng = np.random.default_rng(99)
    corrupt = path.with_name("corrupt.gguf")
    for _ in range(60):
        mutated = bytearray(data)
        for offset in rng.integers(8, header_end, size=3):
            mutated[offset] = int(rng.integers(0, 256))
        corrupt.write_bytes(bytes(mutated))
        try:
            GGUFFile.open(corrupt)
        except ModelFormatError as exc:
            assert str(corrupt) in str(exc)


def test_invalid_utf8_metadata(tmp_path: Path) -> None:
    encoded, _ = sample_tensors()
    path = write_gguf(tmp_path / "utf8.gguf", encoded)
    data = path.read_bytes()
    at = data.index(b"tiny test model")
    path.write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    assert_format_error(path, "'general.name'")


def test_missing_tensor(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    path, _ = sample
    model = GGUFFile.open(path)
    for access in (model.load, model.raw):
        with pytest.raises(ModelFormatError) as error:
            access("blk.0.attn_v.weight")
        message = str(error.value)
        assert str(path) in message and "'blk.0.attn_v.weight'" in message
    with pytest.raises(ModelFormatError, match=re.escape("similar names: blk.0.attn_q.weight")):
        model.load("blk.0.attn_q.weights")


def test_shape_mismatch(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    path, _ = sample
    model = GGUFFile.open(path)
    with pytest.raises(ModelFormatError) as error:
        model.load("blk.0.attn_q.weight", expected_shape=(64, 32))
    message = str(error.value)
    assert str(path) in message and "'blk.0.attn_q.weight'" in message
    assert "(64, 64)" in message and "(64, 32)" in message


def test_unsupported_tensor_types(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    iq2_bytes = gguf.GGML_QUANT_SIZES[T.IQ2_XXS][1]
    positions = rng.integers(1, 1000, size=(8,), dtype=np.int32)
    tensors: Encoded = {
        "blk.0.attn_norm.weight": (rng.standard_normal(64).astype(np.float32), None),
        "blk.0.iq2.weight": (rng.integers(1, 255, (2, iq2_bytes), dtype=np.uint8), T.IQ2_XXS),
        "blk.0.positions": (positions, None),  # the writer records int32 data as I32
    }
    path = write_gguf(tmp_path / "odd.gguf", tensors)
    model = GGUFFile.open(path)  # opening is fine: only loading needs a dequantizer
    assert model.tensors["blk.0.iq2.weight"].shape == (2, 256)
    np.testing.assert_array_equal(model.raw("blk.0.positions"), positions)
    for name, type_name in [("blk.0.iq2.weight", "IQ2_XXS"), ("blk.0.positions", "I32")]:
        with pytest.raises(ModelFormatError) as error:
            model.load(name)
        message = str(error.value)
        assert str(path) in message and repr(name) in message and type_name in message
        assert "Q4_K" in message  # the supported list


def directory_entry_offsets(path: Path, name: str) -> tuple[int, int]:
    """Byte offsets of a tensor's first dimension and of its type id in the directory."""
    entry = next(t for t in gguf.GGUFReader(path).tensors if t.name == name).field
    name_len, name_bytes, n_dims, dims, _, _ = entry.parts
    dims_at = entry.offset + name_len.nbytes + name_bytes.nbytes + n_dims.nbytes
    return dims_at, dims_at + dims.nbytes


def test_unknown_tensor_type_id(
    sample: tuple[Path, dict[str, npt.NDArray[np.float32]]],
) -> None:
    """A type id from a newer llama.cpp: refused at open, naming the tensor and the id."""
    path, _ = sample
    _, type_at = directory_entry_offsets(path, "blk.1.attn_v.weight")
    data = bytearray(path.read_bytes())
    data[type_at : type_at + 4] = (250).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    message = assert_format_error(path, "'blk.1.attn_v.weight'", "unknown tensor type id 250")
    assert "Q6_K" in message  # what Ember does read


@pytest.mark.parametrize(
    "name, row, block",
    [("blk.1.attn_q.weight", 384, "256-weight Q4_K block"), ("token_embd.weight", 48, "32-weight")],
)
def test_row_length_not_whole_blocks(
    sample: tuple[Path, dict[str, npt.NDArray[np.float32]]], name: str, row: int, block: str
) -> None:
    path, _ = sample
    dims_at, _ = directory_entry_offsets(path, name)
    data = bytearray(path.read_bytes())
    data[dims_at : dims_at + 8] = row.to_bytes(8, "little")
    path.write_bytes(bytes(data))
    assert_format_error(path, repr(name), f"row length {row} is not a multiple of the {block}")


def test_duplicate_tensor_name(sample: tuple[Path, dict[str, npt.NDArray[np.float32]]]) -> None:
    path, _ = sample
    data = path.read_bytes()
    # A name of the same length, so the directory stays well formed: two blk.1.attn_k.weight.
    path.write_bytes(data.replace(b"blk.1.ffn_up.weight", b"blk.1.attn_k.weight", 1))
    assert_format_error(path, "'blk.1.attn_k.weight'", "twice")


def test_missing_and_ill_typed_keys(
    sample: tuple[Path, dict[str, npt.NDArray[np.float32]]],
) -> None:
    path, _ = sample
    model = GGUFFile.open(path)
    with pytest.raises(
        ModelFormatError, match=re.escape("missing metadata key 'llama.vocab_size'")
    ) as error:
        model.require_int("llama.vocab_size")
    assert str(path) in str(error.value)
    cases: list[tuple[Callable[[str], object], str, str]] = [
        (model.require_int, "general.name", "should be an integer, found str"),
        (model.require_int, "tokenizer.ggml.add_bos_token", "should be an integer, found bool"),
        (model.require_int, "llama.rope.freq_base", "should be an integer, found float"),
        (model.require_float, "general.name", "should be a number, found str"),
        (model.require_str, "llama.block_count", "should be a string, found int"),
        (model.require_str, "tokenizer.ggml.tokens", "should be a string, found list"),
    ]
    for require, key, fragment in cases:
        with pytest.raises(ModelFormatError) as error:
            require(key)
        message = str(error.value)
        assert str(path) in message and repr(key) in message and fragment in message
    assert len(message) < 300  # a long list value is shortened, not dumped


def test_missing_architecture(tmp_path: Path) -> None:
    encoded, _ = sample_tensors()
    path = write_gguf(tmp_path / "arch.gguf", encoded)
    data = path.read_bytes()
    # Rename the key in place (same length) so the file stays well formed.
    path.write_bytes(data.replace(b"general.architecture", b"general.architecturX", 1))
    model = GGUFFile.open(path)
    with pytest.raises(
        ModelFormatError, match=re.escape("missing metadata key 'general.architecture'")
    ):
        _ = model.architecture
