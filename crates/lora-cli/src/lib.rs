//! The pipeline runner behind the `lora` binary: builds every stage from the
//! registries, validates before any work, runs, and writes the outputs.
//!
//! This is the only crate that sees several backends (through features); it
//! links every crate whose registrations the binary offers.

pub mod alloc;
pub mod bench;
pub mod bench_causal;
pub mod bench_monitor;
pub mod export;
pub mod distributed;
pub mod generate;
pub mod pipeline;
pub mod pipes;
pub mod plan;
pub mod plugins;
pub mod resume;
pub mod search;
pub mod show;
pub mod signals;
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
