#!/usr/bin/env python3
"""The PEFT cross-check in transformers and PEFT themselves: transformers'
`LlamaForCausalLM` built from the GGUF (its `gguf_file=` loading dequantizes
the Q4_1 blocks and undoes llama.cpp's q/k row permutation), the adapter that
`lora run` saved loaded by `peft.PeftModel.from_pretrained`, and the mean NLL
over the assistant tokens (content and end-of-turn token) of a JSONL chat file,
with the base alone and with the adapter. Offline: the model comes from the
local file, nothing from the Hub.

Writes the figures as JSON (stdout, and OUT when given); the committed fixture
tests/fixtures/causal_peft/reference.json is its output for the fixture adapter
on tests/validate/data/chat.jsonl, which `tests/causal.rs` checks `lora`
against (CI has no torch).

    pip install torch transformers peft gguf safetensors
    python3 tests/reference/llama_peft_transformers.py \\
        ~/.cache/lora-scripts/assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \\
        tests/validate/data/chat.jsonl tests/fixtures/causal_peft [OUT.json]
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402


def assistant_mask(tok, messages):
    """Token ids of the rendered conversation and, per token, whether it lies in
    an assistant turn (its content through its end-of-turn token)."""
    render = lambda msgs, gen: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    text = render(messages, False)
    eos = tok.eos_token
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            before, upto = render(messages[:i], True), render(messages[: i + 1], False)
            turn = upto[len(before):]
            spans.append((len(before), len(before) + turn.rindex(eos) + len(eos)))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    weights = [any(a <= s < b for a, b in spans) for (s, _) in enc["offset_mapping"]]
    return enc["input_ids"], weights


@torch.no_grad()
def mean_nll(model, examples):
    total, count = 0.0, 0
    for ids, weights in examples:
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0].double()
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        keep = torch.tensor(weights[1:])
        total += nll[keep].sum().item()
        count += int(keep.sum())
    return total / count, count


def main(model_path, chat_path, adapter_dir, out=None):
    folder, name = os.path.split(os.path.abspath(model_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
    examples = [assistant_mask(tok, json.loads(line)["messages"]) for line in open(chat_path) if line.strip()]

    base, count = mean_nll(model, examples)
    lora = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
    # Every saved tensor must have landed in a LoRA layer (PEFT only warns on a missing key).
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    loaded = {k: v for k, v in lora.state_dict().items() if "lora_" in k}
    for key, value in saved.items():
        live = key.replace(".weight", ".default.weight")
        if live not in loaded or not torch.equal(loaded[live], value):
            sys.exit(f"adapter tensor {key} was not loaded by PEFT")
    if len(loaded) != len(saved):
        sys.exit(f"PEFT made {len(loaded)} LoRA tensors, the adapter has {len(saved)}")
    adapted, _ = mean_nll(lora, examples)

    result = {
        "chat_file": os.path.basename(chat_path),
        "conversations": len(examples),
        "target_tokens": count,
        "base_loss": base,
        "adapter_loss": adapted,
        "lora_tensors": len(saved),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(*sys.argv[1:])
