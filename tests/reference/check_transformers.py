#!/usr/bin/env python3
"""Loads a `lora export --merge --format safetensors` folder with transformers
and compares it with the project's own answers.

    check_transformers.py bert FOLDER PREDICTIONS.jsonl
        PREDICTIONS: `lora predict` lines; every class probability within 1e-4.
    check_transformers.py bert-probs FOLDER TEXT...
        prints transformers' class probabilities (the fixture of
        crates/lora-cli/tests/export.rs, tests/reference/fixtures/export-bert.json).
    check_transformers.py vit-probs FOLDER IMAGE...
        prints transformers' class probabilities for PNG/JPEG files, the
        pixels through the folder's preprocessor_config.json (ViTImageProcessor).
    check_transformers.py llama FOLDER PROMPT N EXPECTED
        the greedy continuation of PROMPT (N new tokens, stopping at the end of
        turn) must equal EXPECTED (`lora generate` on the run's adapter).
Prints one JSON line.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def bert(folder, predictions):
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    worst = 0.0
    rows = [json.loads(l) for l in open(predictions)]
    for row in rows:
        enc = tok(row["text"], return_tensors="pt", truncation=True, max_length=64)
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0].double(), -1)
        for i, p in enumerate(probs.tolist()):
            label = model.config.id2label[i]
            worst = max(worst, abs(p - row["probabilities"][label]))
    print(json.dumps({"model": "bert", "texts": len(rows), "max_abs_diff": worst}))
    assert worst < 1e-4, worst


def bert_probs(folder, *texts):
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt", truncation=True, max_length=64)
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0].double(), -1).tolist()
        out.append({model.config.id2label[i]: p for i, p in enumerate(probs)})
    print(json.dumps(out))


def vit_probs(folder, *images):
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    proc = AutoImageProcessor.from_pretrained(folder)
    out = []
    for path in images:
        img = Image.open(path)
        img = img.convert("L" if model.config.num_channels == 1 else "RGB")
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        pixels = proc(arr, return_tensors="pt", input_data_format="channels_last").pixel_values
        with torch.no_grad():
            probs = torch.softmax(model(pixel_values=pixels).logits[0].double(), -1).tolist()
        out.append({model.config.id2label[i]: p for i, p in enumerate(probs)})
    print(json.dumps(out))


def llama(folder, prompt, n, expected):
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=int(n), do_sample=False, eos_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(json.dumps({"model": "llama", "prompt_tokens": ids.shape[1], "text": text, "expected": expected}))
    assert text.strip() == expected.strip(), (text, expected)


if __name__ == "__main__":
    {"bert": bert, "bert-probs": bert_probs, "vit-probs": vit_probs, "llama": llama}[sys.argv[1]](*sys.argv[2:])
