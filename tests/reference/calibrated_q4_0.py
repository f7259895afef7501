"""Reference values of `lora_export::calibrated`'s test (its comments say
which): a synthetic linear W [8, 64] whose inputs X [96, 64] are skewed (the
first four columns 20 times larger), H = X^T X, and the error
E(Q) = sum_r (w_r - q_r)^T H (w_r - q_r) of
  - ggml's reference Q4_0 rounding (the `gguf` package's quantizer),
  - GPTQ (Frantar et al. 2022) with Q4_0 blocks, written here in numpy from the
    paper: H + 0.01 mean(diag H) I, U = upper Cholesky of its inverse, columns
    in order, each block's scale max / -8 from the current values (levels from it,
    values at its f16), the
    error of column j moving the later columns by -e U[j, k] / U[j, j].
Run: LORA_GGUF_PYTHON tests/reference/calibrated_q4_0.py
"""
import numpy as np
from gguf import GGMLQuantizationType, quants

rows, cols, n = 8, 64, 96
r = np.arange(rows)[:, None]
j = np.arange(cols)[None, :]
W = (np.sin(0.37 * j + 1.3 * r) * 0.1).astype(np.float32)
t = np.arange(n)[:, None]
X = (np.cos(0.7 * t + 0.11 * j) * np.where(j < 4, 20.0, 1.0)).astype(np.float32)
H = X.astype(np.float64).T @ X.astype(np.float64)


def err(Q):
    D = (W - Q).astype(np.float64)
    return float(np.einsum("ri,ij,rj->", D, H, D))


ref = quants.dequantize(quants.quantize(W, GGMLQuantizationType.Q4_0), GGMLQuantizationType.Q4_0)

Hd = H + 0.01 * np.mean(np.diag(H)) * np.eye(cols)
U = np.linalg.cholesky(np.linalg.inv(Hd)).T  # upper, U^T U = Hd^-1
G = np.zeros_like(W)
for row in range(rows):
    w = W[row].astype(np.float32).copy()
    for g in range(0, cols, 32):
        blk = w[g:g + 32]
        m = blk[np.argmax(np.abs(blk))]
        d = np.float32(m / np.float32(-8.0))
        idv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
        stored = np.float32(np.float16(d))  # levels from d, values at the f16 d (as ggml)
        for c in range(g, g + 32):
            lv = int(np.clip(np.floor(w[c] * idv + np.float32(8.5)), 0, 15))
            G[row, c] = (lv - 8) * stored
            e = (w[c] - G[row, c]) / np.float32(U[c, c])
            w[c + 1:] -= e * U[c, c + 1:].astype(np.float32)

print(f"reference Q4_0: E = {err(ref):.6f}")
print(f"GPTQ Q4_0:      E = {err(G):.6f}")
