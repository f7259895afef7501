#!/usr/bin/env python3
"""PyTorch + PEFT baseline for `lora bench --causal`: LoRA on SmolLM2-135M-Instruct,
the same pinned Q4_1 GGUF that `lora` reads, loaded by transformers (`gguf_file=`
dequantizes it to f32 and undoes llama.cpp's q/k row permutation; the tokenizer
comes from the same file). Offline: nothing from the Hub.

The set-up mirrors `crates/lora-cli/src/bench_causal.rs` so that the two time the
same work:
  * LoRA r=8, alpha=16, dropout 0 on all seven linears of every layer
    (q/k/v/o_proj, gate/up/down_proj; PEFT's "all-linear" minus the tied lm_head);
  * a training step on seeded random token ids in 100..49000, every position a
    target (next token), mean cross-entropy over the 49,152-word vocabulary,
    AdamW lr 1e-3, fp32, SDPA attention;
  * gradient checkpointing (`_ckpt` cases) through transformers' own
    `gradient_checkpointing_enable` (non-reentrant), like `--checkpointing`;
  * generation: a 32-token prompt (ids 100 + 7i), then 48 greedy tokens fed one
    at a time through the key/value cache, no stop token.
Timing: WARMUP untimed steps, then the median of STEPS.

Prints one JSON line: per case its figures, plus the load time of the model, the
versions and the threads. `cargo xtask bench --causal --against-torch` runs it
one case per process, alternating with `lora bench --causal`, and reads
`step_s_median` (training) and `s_per_token` (generation).

    python3 xtask/bench/peft_smollm2.py \\
        --gguf ~/.cache/lora-scripts/assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --only train_b1_s256,generate --warmup 1 --steps 3
"""
import argparse
import json
import os
import platform
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> (batch, sequence length, gradient checkpointing); None: generation
CASES = {
    "train_b1_s256": (1, 256, False),
    "train_b4_s256": (4, 256, False),
    "train_b1_s256_ckpt": (1, 256, True),
    "train_b4_s256_ckpt": (4, 256, True),
    "generate": None,
}
PROMPT_LEN, NEW_TOKENS = 32, 48


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(gguf, checkpointing):
    folder, name = os.path.split(os.path.abspath(gguf))
    t = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(
        folder, gguf_file=name, torch_dtype=torch.float32, attn_implementation="sdpa"
    )
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                          task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, cfg)
    if checkpointing:
        # The embedding is frozen: without this its output needs no gradient and
        # the checkpointed layers would not backpropagate into the LoRA matrices.
        model.enable_input_require_grads()
    return model, time.perf_counter() - t


def random_batch(batch, seq_len, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, 49_000, (batch * seq_len + 1,), generator=g)
    return ids[:-1].view(batch, seq_len), ids[1:].view(batch, seq_len)


def bench_train(model, batch, seq_len, warmup, steps):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    times, losses = [], []
    for i in range(warmup + steps):
        ids, targets = random_batch(batch, seq_len, i)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if i >= warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "batch": batch, "seq": seq_len, "steps_timed": steps, "warmup": warmup,
        "step_s_median": med, "step_s_min": min(times),
        "tokens_per_s": batch * seq_len / med,
        "trainable_params": sum(p.numel() for p in params),
        "loss_first": losses[0], "loss_last": losses[-1],
    }


@torch.inference_mode()
def bench_generate(model):
    model.eval()
    prompt = torch.tensor([[100 + 7 * i for i in range(PROMPT_LEN)]])
    t = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    prefill = time.perf_counter() - t
    cache, logits = out.cache, out.logits[:, -1]
    t = time.perf_counter()
    for _ in range(NEW_TOKENS):
        nxt = logits.argmax(-1, keepdim=True)
        out = model(input_ids=nxt, cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
    decode = time.perf_counter() - t
    return {
        "prompt_tokens": PROMPT_LEN, "new_tokens": NEW_TOKENS, "prefill_s": prefill,
        "s_per_token": decode / NEW_TOKENS, "tokens_per_s": NEW_TOKENS / decode,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--only", default=",".join(CASES), help="comma list of: " + ", ".join(CASES))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown or args.steps < 1 or args.warmup < 0:
        ap.error(f"unknown case(s) {unknown}" if unknown else "--steps must be >= 1, --warmup >= 0")
    if not os.path.isfile(args.gguf):
        ap.error(f"no such file: {args.gguf}")
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)

    result = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
    }
    # One model per checkpointing setting; each case in its own process is what
    # `cargo xtask bench` does, so that the peak RSS belongs to one case.
    models = {}
    for name in names:
        case = CASES[name]
        ckpt = bool(case and case[2])
        if ckpt not in models:
            models[ckpt], secs = load(args.gguf, ckpt)
            result.setdefault("load_s", secs)
            result.setdefault("rss_after_load_mib", peak_rss_mib())
        model = models[ckpt]
        figures = bench_generate(model) if case is None else bench_train(model, case[0], case[1], args.warmup,
                                                                          args.steps)
        figures["checkpointing"] = ckpt
        figures["peak_rss_mib_so_far"] = peak_rss_mib()
        result[name] = figures
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
