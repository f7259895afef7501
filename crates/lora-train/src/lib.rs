//! The training loop of lora-scripts, written once for every backend.
//!
//! A backend computes a loss and the gradients of the trainable parameters;
//! everything else (accumulation, clipping, the optimizer update, the
//! learning-rate schedule, evaluation, events and adapter files) happens here
//! on host vectors.

pub mod adafactor;
pub mod batch_size;
pub mod callbacks;
pub mod checkpoint;
pub mod checks;
pub mod eval;
pub mod lion;
pub mod lm_eval;
pub mod metrics;
pub mod optim;
pub mod peft;
pub mod schedule;
pub mod stats;
pub mod strategy;
pub mod trainer;

pub use peft::{load_adapter, save_adapter};

/// A configuration as JSON with its registry `type` first, for resolved-configuration output.
pub fn with_type(type_name: &str, cfg: &impl serde::Serialize) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("type".into(), type_name.into());
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(cfg) {
        out.extend(fields);
    }
    serde_json::Value::Object(out)
}
