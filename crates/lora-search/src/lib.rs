//! Hyperparameter search: `lora search pipeline.toml` runs trials of a
//! pipeline with parameters drawn from its `[search]` table ([`space`]), by
//! TPE, a Gaussian process or at random ([`sampler`]), stops trials that fall behind
//! ([`pruner`]), and keeps the study in a journal that survives a crash
//! ([`journal`]). Running a trial (a validated, ordinary `lora run`) is the
//! CLI's; the trial's side of pruning is the [`TrialReporter`] callback.

mod gp;
pub mod journal;
pub mod pruner;
pub mod reporter;
pub mod sampler;
pub mod space;

use std::path::Path;

pub use journal::{Journal, Record, Study, Trial, TrialState};
pub use reporter::TrialReporter;
pub use space::{Direction, SearchSpec};

#[derive(Debug)]
pub enum SearchError {
    /// The `[search]` table is wrong.
    Spec(String),
    /// The journal cannot be read as a study.
    Journal(String),
    Io(String),
}

impl SearchError {
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        SearchError::Io(format!("{}: {e}", path.display()))
    }
}

impl std::fmt::Display for SearchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchError::Spec(m) => write!(f, "[search]: {m}"),
            SearchError::Journal(m) | SearchError::Io(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SearchError {}

impl From<SearchError> for lora_core::Error {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Spec(m) => lora_core::Error::Invalid(
                lora_core::diag::Diagnostic::error("search::invalid-space", format!("[search]: {m}")).into(),
            ),
            _ => lora_core::Error::Other(e.to_string()),
        }
    }
}
