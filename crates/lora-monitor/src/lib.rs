//! Metric sinks: callbacks that consume the training loop's events.
//!
//! - [`JsonlSink`]: every event as a JSON line (`metrics.jsonl`).
//! - [`Progress`]: a progress bar, or log lines off a terminal.
//! - [`Monitor`]: the live dashboard with `/metrics` (Prometheus), system
//!   sampling, and the end-of-run report (SVG plots and HTML).
//! - [`study`]: a hyperparameter study's live dashboard and report.

pub mod hub;
pub mod jsonl;
pub mod monitor;
pub mod progress;
pub mod prometheus;
pub mod record;
pub mod report;
pub mod sampler;
pub mod server;
pub mod study;
pub mod svg;

pub use jsonl::JsonlSink;
pub use monitor::Monitor;
pub use progress::Progress;
