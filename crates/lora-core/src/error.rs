//! The one error enum of `lora-core`, shared by crates that have no reason to own another.

use std::path::PathBuf;

use crate::diag::Diagnostics;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or an input is invalid: exit code 2.
    #[error("{0}")]
    Invalid(Diagnostics),

    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Bad input data found while running (a row that cannot be parsed, ...).
    #[error("data error: {0}")]
    Data(String),

    /// The tensor backend failed; the message carries the backend's own error.
    #[error("{backend} backend: {message}")]
    Backend { backend: &'static str, message: String },

    /// An optional capability that the chosen backend does not implement.
    #[error("{feature} is not supported by the {backend} backend")]
    Unsupported {
        backend: &'static str,
        feature: &'static str,
    },

    /// A pinned asset could not be fetched or verified.
    #[error("asset `{name}`: {message}")]
    Asset { name: String, message: String },

    /// The run was asked to stop (SIGINT, SIGTERM) and wrote a checkpoint to resume from.
    #[error("{signal}: stopped after step {step}; checkpoint written to {}", checkpoint.display())]
    Interrupted {
        signal: String,
        step: usize,
        checkpoint: PathBuf,
    },

    /// A collective of a multi-process run waited longer than its timeout:
    /// another process is stuck in its own work, or gone. `at` says where in
    /// the run (the step), once the loop has added it.
    #[error(
        "{what}{}: another process is stuck or gone; the job is aborted (raise [strategy] collective-timeout-s if a step can take longer than {seconds} s)",
        at.as_deref().map(|a| format!(" ({a})")).unwrap_or_default()
    )]
    CollectiveTimeout {
        what: String,
        seconds: f64,
        at: Option<String>,
    },

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// The message without the kind prefix that `Display` adds to data errors
    /// ("data error: "), for callers that put their own headline in front.
    pub fn message(&self) -> String {
        match self {
            Error::Data(m) => m.clone(),
            other => other.to_string(),
        }
    }

    /// Says where in the run a collective timed out (`at` is called only for
    /// such an error that does not say so yet); other errors are unchanged.
    pub fn at(self, at: impl FnOnce() -> String) -> Self {
        match self {
            Error::CollectiveTimeout {
                what,
                seconds,
                at: None,
            } => Error::CollectiveTimeout {
                what,
                seconds,
                at: Some(at()),
            },
            other => other,
        }
    }

    /// Exit code of the `lora` binary for this error: 2 for invalid configuration or input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) => 2,
            // 128 + the signal's number, as shells report a process ended by it.
            Error::Interrupted { signal, .. } if signal == "SIGTERM" => 143,
            Error::Interrupted { .. } => 130,
            _ => 1,
        }
    }
}

/// The text of a caught panic's payload (`panic!` with a message gives a `String` or a `&str`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

impl From<Diagnostics> for Error {
    fn from(d: Diagnostics) -> Self {
        Error::Invalid(d)
    }
}
