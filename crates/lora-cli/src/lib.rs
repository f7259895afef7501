//! The pipeline runner behind the `lora` binary: builds every stage from the
//! registries, validates before any work, runs, and writes the outputs.
//!
//! This is the only crate that sees several backends (through features); it
//! links every crate whose registrations the binary offers.

pub mod alloc;
pub mod bench;
pub mod bench_causal;
pub mod bench_monitor;
pub mod distributed;
pub mod export;
pub mod generate;
pub mod pipeline;
pub mod pipes;
pub mod plan;
pub mod plugins;
pub mod resume;
pub mod search;
pub mod show;
pub mod signals;
pub mod threads;
pub mod validate;

// Link the crates whose `inventory` registrations the binary offers.
use lora_augment as _;
#[cfg(feature = "burn")]
use lora_backend_burn as _;
#[cfg(feature = "candle")]
use lora_backend_candle as _;
use lora_data as _;
use lora_strategy as _;
use lora_train as _;

/// Backends compiled into this binary (its cargo features).
pub fn backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "burn") {
        v.push("burn");
    }
    if cfg!(feature = "candle") {
        v.push("candle");
    }
    v
}

#[cfg(test)]
mod tests {
    /// Checked here rather than in `lora-validate`: only the binary's crate links every
    /// crate that registers rules (`lora-strategy`'s among them), as `lora rules --markdown` does.
    #[test]
    fn docs_rules_md_is_up_to_date() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/RULES.md");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == lora_validate::docs::markdown(),
            "docs/RULES.md is stale: run `cargo xtask rules-doc`"
        );
    }
}
