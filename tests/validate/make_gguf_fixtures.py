#!/usr/bin/env python3
"""Tiny GGUF files for the validation rules of `llama-causal-lm` (stdlib only).

A one-layer Llama (hidden 32, 2 heads, 1 key/value head, feed-forward 64,
vocabulary 8, f32 tensors), then broken variants: a truncated copy, another
architecture, and a tensor of an unread quantization type (Q5_K).
Run from the repository root: python3 tests/validate/make_gguf_fixtures.py
"""
import struct
from pathlib import Path

OUT = Path(__file__).parent / "models"
ALIGN = 32


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, ty, payload):
    return s(key) + struct.pack("<I", ty) + payload


def u32(k, v):
    return kv(k, 4, struct.pack("<I", v))


def f32(k, v):
    return kv(k, 6, struct.pack("<f", v))


def string(k, v):
    return kv(k, 8, s(v))


def gguf(arch="llama", odd_type=None):
    d, ff, vocab, kvd = 32, 64, 8, 16
    meta = [
        string("general.architecture", arch),
        u32(f"{arch}.block_count", 1),
        u32(f"{arch}.context_length", 64),
        u32(f"{arch}.embedding_length", d),
        u32(f"{arch}.feed_forward_length", ff),
        u32(f"{arch}.attention.head_count", 2),
        u32(f"{arch}.attention.head_count_kv", 1),
        f32(f"{arch}.rope.freq_base", 10000.0),
        f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
    ]
    tensors = [
        ("token_embd.weight", [d, vocab]),
        ("output_norm.weight", [d]),
        ("blk.0.attn_norm.weight", [d]),
        ("blk.0.ffn_norm.weight", [d]),
        ("blk.0.attn_q.weight", [d, d]),
        ("blk.0.attn_k.weight", [d, kvd]),
        ("blk.0.attn_v.weight", [d, kvd]),
        ("blk.0.attn_output.weight", [d, d]),
        ("blk.0.ffn_gate.weight", [d, ff]),
        ("blk.0.ffn_up.weight", [d, ff]),
        ("blk.0.ffn_down.weight", [ff, d]),
    ]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(meta)
    data = b""
    for name, dims in tensors:
        n = 1
        for x in dims:
            n *= x
        ty = 0
        if odd_type is not None and name == "blk.0.attn_q.weight":
            # Q5_K: 256 values in 176 bytes; dims padded to a whole block.
            ty, nbytes = 13, 176 * 4
        else:
            nbytes = 4 * n
        head += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", x) for x in dims)
        head += struct.pack("<IQ", ty, len(data))
        data += bytes(nbytes) if ty else struct.pack(f"<{n}f", *[((i % 7) - 3) * 0.01 for i in range(n)])
        data += bytes(-len(data) % ALIGN)
    head += bytes(-len(head) % ALIGN)
    return head + data


OUT.mkdir(exist_ok=True)
good = gguf()
(OUT / "tiny-llama.gguf").write_bytes(good)
(OUT / "truncated.gguf").write_bytes(good[: len(good) - 100])
(OUT / "gpt2-arch.gguf").write_bytes(gguf(arch="gpt2"))
(OUT / "q5k.gguf").write_bytes(gguf(odd_type=13))
