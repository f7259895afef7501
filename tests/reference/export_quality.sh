#!/usr/bin/env bash
# The quality table of `lora export` (ARCHITECTURE.md, "Export"): a chat run's
# adapter merged and written at each type, then for each file its held-out
# perplexity (`lora eval` on the run's validation split, the file as the base
# under an all-zero adapter), its size, and generation tokens/s (greedy, 64
# new tokens after a fixed prompt, `lora generate --timing`).
#   export_quality.sh RUN_DIR WORK_DIR [TYPES...]
# (default: f32 f16 q8_0 q6_k q5_0 q4_k_m q4_k q4_1 q4_0; a type ending in
# `+ref` is exported with --reference-rounding, ggml's reference quantizers only;
# in `+gptqN` / `+imatrixN` with --calibrate N and that --calibration)
set -euo pipefail
run=$1; work=$2; shift 2
types=("$@"); [ ${#types[@]} -eq 0 ] && types=(f32 f16 q8_0 q6_k q5_0 q4_k_m q4_k q4_1 q4_0)
lora=${LORA:-lora}
py=${LORA_PYTHON:-python3}
mkdir -p "$work"
prompt=$'<|im_start|>user\nwhat do you like to do on weekends?<|im_end|>\n<|im_start|>assistant\n'
echo "| type | held-out perplexity | file size (MB) | generation tokens/s |"
echo "|---|---|---|---|"
for t in "${types[@]}"; do
    flags=(); q=$t
    if [[ $t == *+ref ]]; then q=${t%+ref}; flags=(--reference-rounding); fi
    if [[ $t =~ ^(.*)\+(gptq|imatrix)([0-9]+)$ ]]; then
        q=${BASH_REMATCH[1]}; flags=(--calibrate "${BASH_REMATCH[3]}" --calibration "${BASH_REMATCH[2]}")
    fi
    f="$work/merged-$t.gguf"; [ -f "$f" ] || "$lora" export --adapter "$run" --merge --quant "$q" "${flags[@]}" -o "$f" >/dev/null 2>&1
    d="$work/eval-$t"; rm -rf "$d"; mkdir -p "$d"
    cp "$run/adapter_config.json" "$d/"
    "$py" - "$run/adapter_model.safetensors" "$d/adapter_model.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v * 0 if ".lora_B." in k else v) for k, v in t.items()}, sys.argv[2], metadata={"format": "pt"})
PY
    sed "s|^path = \"asset:smollm2.*\"|path = \"$f\"|; s|^output-dir = .*|output-dir = \"$d\"|" "$run/pipeline.toml" > "$d/pipeline.toml"
    ppl=$("$lora" eval --adapter "$d" "$d/pipeline.toml" 2>/dev/null | "$py" -c "import json,sys; print(round(json.load(sys.stdin)['metrics']['perplexity'], 3))")
    tps=$("$lora" generate --model "$f" --timing --max-new-tokens 64 "$prompt" 2>&1 >/dev/null | sed -n 's/.* (\([0-9.]*\) tokens\/s).*/\1/p')
    mb=$(( $(stat -c %s "$f") / 1000000 ))
    echo "| $t | $ppl | $mb | $tps |"
done
