//! `cargo xtask bench --causal --against-torch`: `lora bench --causal`
//! (SmolLM2-135M over its Q4_1 GGUF) against PyTorch + PEFT on the same GGUF,
//! dequantized by transformers (`xtask/bench/peft_smollm2.py`), through the
//! shared machinery of `against_torch`. The script lives in the project, beside
//! the xtask that runs it, because it mirrors `lora bench --causal`'s set-up
//! (targets, rank, alpha, batches, prompt) and has to change with it.

use crate::against_torch::{Case, Suite, asset_cache};
use crate::cargo;

const CASES: [Case; 3] = [
    Case {
        name: "train 1 x 256 tokens",
        ours: &["--batch", "1", "--seq-len", "256"],
        ours_key: "median_step_s",
        torch: "train_b1_s256",
        torch_key: "step_s_median",
    },
    Case {
        name: "train 4 x 256 tokens, checkpointing",
        ours: &["--batch", "4", "--seq-len", "256", "--checkpointing"],
        ours_key: "median_step_s",
        torch: "train_b4_s256_ckpt",
        torch_key: "step_s_median",
    },
    Case {
        name: "generate, s/token (greedy, KV cache)",
        ours: &["--inference"],
        ours_key: "s_per_token",
        torch: "generate",
        torch_key: "s_per_token",
    },
];

/// SmolLM2 against `xtask/bench/peft_smollm2.py`.
pub fn suite() -> Suite {
    let gguf = asset_cache().join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    Suite {
        cases: &CASES,
        ours_args: vec!["--causal".into()],
        script: cargo::workspace_root().join("xtask/bench/peft_smollm2.py"),
        torch_args: vec!["--gguf".into(), gguf.to_string_lossy().into_owned()],
        torch_env: vec![],
        setup: "the README's `cargo xtask bench` section",
    }
}
