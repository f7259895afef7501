#!/usr/bin/env python3
"""An independent reference for the causal LM: Hugging Face's LlamaForCausalLM
forward written in numpy over the GGUF dequantized by the `gguf` package (with
transformers' q/k `reverse_permute`), PEFT's LoRA semantics applied from a saved
`adapter_model.safetensors` by its PEFT keys, the tokenizer rebuilt with the
`tokenizers` package and the chat template rendered with `jinja2`.

Prints the mean NLL over the assistant tokens (content and end-of-turn token) of
a JSONL chat file: compare with `lora eval` on the same file.

    pip install numpy gguf tokenizers jinja2 safetensors
    python3 tests/reference/llama_peft_numpy.py MODEL.gguf CHAT.jsonl [ADAPTER_DIR]
"""
import json
import sys

import jinja2
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def field(r, key):
    f = r.fields[key]
    if f.types[0].name == "ARRAY":
        return [bytes(f.parts[i]).decode() if f.types[-1].name == "STRING" else f.parts[i].tolist()[0] for i in f.data]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0].name == "STRING" else v.tolist()[0]


def reverse_permute(w, n_head):
    # transformers/integrations/ggml.py: undo llama.cpp's interleaving of q/k rows.
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def main(model_path, chat_path, adapter_dir=None):
    r = GGUFReader(model_path)
    T = {t.name: t for t in r.tensors}

    def W(name):
        t = T[name]
        return dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)]).astype(np.float32)

    L = field(r, "llama.block_count")
    H = field(r, "llama.attention.head_count")
    KV = field(r, "llama.attention.head_count_kv")
    D = field(r, "llama.embedding_length")
    theta = field(r, "llama.rope.freq_base")
    eps = field(r, "llama.attention.layer_norm_rms_epsilon")
    hd = D // H

    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(r, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])
    eos = tokens[field(r, "tokenizer.ggml.eos_token_id")]
    template = jinja2.Environment().from_string(field(r, "tokenizer.chat_template"))

    def render(messages, gen):
        return template.render(messages=messages, add_generation_prompt=gen)

    lora = {}
    if adapter_dir:
        cfg = json.load(open(f"{adapter_dir}/adapter_config.json"))
        scale = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
        for k, v in load_file(f"{adapter_dir}/adapter_model.safetensors").items():
            lora[k] = v.astype(np.float32)

    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    layers = []
    for i in range(L):
        lay = {}
        for hf, g in names.items():
            w = W(f"blk.{i}.{g}.weight")
            if hf == "q_proj":
                w = reverse_permute(w, H)
            if hf == "k_proj":
                w = reverse_permute(w, KV)
            part = "self_attn" if hf in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{i}.{part}.{hf}"
            if f"{key}.lora_A.weight" in lora:
                w = w + scale * lora[f"{key}.lora_B.weight"] @ lora[f"{key}.lora_A.weight"]
            lay[hf] = w
        lay["in_norm"] = W(f"blk.{i}.attn_norm.weight")
        lay["post_norm"] = W(f"blk.{i}.ffn_norm.weight")
        layers.append(lay)
    emb = W("token_embd.weight")
    out_norm = W("output_norm.weight")

    def rms(x, w):
        return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32) * w

    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)

    def rope(x, n):  # x [heads, n, hd]; rotate_half
        ang = np.arange(n)[:, None] * inv[None, :]
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    def logits(ids):
        n = len(ids)
        x = emb[ids]
        mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
        for lay in layers:
            h = rms(x, lay["in_norm"])
            q = rope((h @ lay["q_proj"].T).reshape(n, H, hd).transpose(1, 0, 2), n)
            k = rope((h @ lay["k_proj"].T).reshape(n, KV, hd).transpose(1, 0, 2), n)
            v = (h @ lay["v_proj"].T).reshape(n, KV, hd).transpose(1, 0, 2)
            k, v = np.repeat(k, H // KV, 0), np.repeat(v, H // KV, 0)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            a = (p @ v).transpose(1, 0, 2).reshape(n, D)
            x = x + a @ lay["o_proj"].T
            h = rms(x, lay["post_norm"])
            g = h @ lay["gate_proj"].T
            x = x + ((g / (1 + np.exp(-g))) * (h @ lay["up_proj"].T)) @ lay["down_proj"].T
        return rms(x, out_norm) @ emb.T

    total, count = 0.0, 0
    for line in open(chat_path):
        if not line.strip():
            continue
        msgs = json.loads(line)["messages"]
        text = render(msgs, False)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                before, upto = render(msgs[:i], True), render(msgs[: i + 1], False)
                turn = upto[len(before):]
                spans.append((len(before), len(before) + turn.rindex(eos) + len(eos)))
        enc = tok.encode(text, add_special_tokens=False)
        ids = enc.ids
        # tokenizers' offsets are in characters; the spans are too (Python strings).
        w = [any(a <= s < b for a, b in spans) for (s, _) in enc.offsets]
        lg = logits(np.array(ids[:-1])).astype(np.float64)
        lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
        nll = lse - lg[np.arange(len(ids) - 1), ids[1:]]
        keep = np.array(w[1:])
        total += nll[keep].sum()
        count += keep.sum()
    print(json.dumps({"target_tokens": int(count), "loss": total / count, "perplexity": float(np.exp(total / count))}))


if __name__ == "__main__":
    main(*sys.argv[1:])
