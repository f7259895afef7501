//! Metric sinks: callbacks that consume the training loop's events.

pub mod jsonl;
pub mod progress;

pub use jsonl::JsonlSink;
pub use progress::Progress;
