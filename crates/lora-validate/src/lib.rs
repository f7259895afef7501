//! Configuration layering and the validation engine.
//!
//! - [`compose`]: `extends`, environment overrides and `--set`, merged into one
//!   document whose pieces remember where they were written.
//! - [`engine`]: runs every registered rule ([`lora_core::rules::RuleEntry`]) on
//!   the spanned document and the facts about the model, data and machine, and
//!   merges the findings with the loader's own diagnostics.
//! - [`rules`]: the built-in rules, by category.
//! - [`machine`]: facts about this machine.
//! - [`docs`]: `docs/RULES.md`, generated from the registry.

// Range checks are written `!(v > 0.0)` on purpose: a NaN must count as out of range.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod compose;
pub mod docs;
pub mod engine;
pub mod machine;
pub mod rules;

pub use compose::{Composed, Overrides, compose, compose_text};
pub use engine::{check, finish};
