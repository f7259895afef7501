#!/usr/bin/env python3
"""Reads exported GGUF files with the `gguf` package (llama.cpp's own Python
reader, PyPI) and checks them independently of the project's code.

    check_gguf.py REFERENCE.gguf FILE.gguf [FILE.gguf ...]

REFERENCE is the f32 merged export. For every FILE: every metadata field is
read (its contents decoded), every tensor is dequantized by gguf's numpy
code; tensors of the types gguf can quantize (Q8_0, Q4_0, Q4_1, Q5_0, F16)
must be byte-identical to gguf's own quantization of REFERENCE's values
(gguf states its quantizers are bit-exact with ggml's reference), and every
tensor (Q4_K and Q6_K too, which gguf only dequantizes) must dequantize close to REFERENCE. An adapter GGUF
(general.type = adapter) is checked for llama.cpp's required keys and the
lora_a/lora_b pairs' shapes instead. A FILE written as `calibrated:PATH`
(`lora export --calibrate`) chose its Q4_0/Q5_0 levels from the inputs, so
those tensors are checked by their rms error against REFERENCE (within
CALIBRATED_RMS of the tensor's largest magnitude), not by bytes. Prints one
JSON line per file.
"""
import json
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

EXACT = {T.F16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0}
# Worst absolute error allowed against the f32 values, relative to the tensor's largest magnitude.
# Q4_0 and Q5_0 clamp the value opposite a block's largest one, a whole step (1/8, 1/16) off.
# rms error of a calibrated Q4_0/Q5_0 tensor, relative to the tensor's largest magnitude
# (error feedback may move single values by more than a step; on average it stays near one).
CALIBRATED_RMS = 0.1
TOL = {T.F32: 0.0, T.F16: 1e-3, T.Q8_0: 1e-2, T.Q5_0: 0.064, T.Q4_0: 0.126, T.Q4_1: 0.1, T.Q4_K: 0.1, T.Q6_K: 0.03}


def fields(reader):
    out = {}
    for name, f in reader.fields.items():
        out[name] = f.contents()
    return out


def check_adapter(reader, meta):
    assert meta["general.type"] == "adapter", meta.get("general.type")
    assert meta["adapter.type"] == "lora"
    alpha = float(meta["adapter.lora.alpha"])
    names = {t.name: t for t in reader.tensors}
    pairs = 0
    for name, t in names.items():
        if name.endswith(".lora_a"):
            b = names[name[:-1] + "b"]
            a_np, b_np = dequantize(t.data, t.tensor_type), dequantize(b.data, b.tensor_type)
            # llama.cpp's check: a is [r, in] (numpy order), b is [out, r].
            assert a_np.shape[0] == b_np.shape[1], (name, a_np.shape, b_np.shape)
            assert np.isfinite(a_np).all() and np.isfinite(b_np).all()
            pairs += 1
    assert pairs > 0 and 2 * pairs == len(names), (pairs, len(names))
    return {"adapter_pairs": pairs, "alpha": alpha}


def main():
    ref = gguf.GGUFReader(sys.argv[1])
    ref_t = {t.name: dequantize(t.data, t.tensor_type) for t in ref.tensors}
    for path in sys.argv[2:]:
        calibrated = path.startswith("calibrated:")
        path = path.removeprefix("calibrated:")
        r = gguf.GGUFReader(path)
        meta = fields(r)
        summary = {"file": path, "fields": len(meta), "tensors": len(r.tensors), "types": {}}
        if meta.get("general.type") == "adapter":
            summary.update(check_adapter(r, meta))
            print(json.dumps(summary))
            continue
        assert meta["general.architecture"] == "llama"
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"):
            if key in ref.fields:
                assert meta[key] == ref.fields[key].contents(), key
        exact = 0
        for t in r.tensors:
            ty = T(t.tensor_type)
            summary["types"][ty.name] = summary["types"].get(ty.name, 0) + 1
            values = dequantize(t.data, ty)
            want = ref_t[t.name]
            assert values.shape == want.shape, (t.name, values.shape, want.shape)
            scale = float(np.abs(want).max()) or 1.0
            assert np.isfinite(values).all(), t.name
            if calibrated and ty in (T.Q4_0, T.Q5_0):
                rms = float(np.sqrt(np.mean((values - want) ** 2))) / scale
                assert rms <= CALIBRATED_RMS, (t.name, ty.name, rms)
                summary["calibrated_tensors"] = summary.get("calibrated_tensors", 0) + 1
                continue
            err = float(np.abs(values - want).max()) / scale
            assert err <= TOL[ty], (t.name, ty.name, err)
            if ty in EXACT:
                mine = np.asarray(t.data).reshape(-1).view(np.uint8)
                theirs = quantize(want.astype(np.float32), ty).reshape(-1).view(np.uint8)
                assert np.array_equal(mine, theirs), f"{t.name}: {ty.name} bytes differ from gguf's quantizer"
                exact += 1
        summary["byte_identical_tensors"] = exact
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
