//! Data-parallel strategies: how the processes of one run combine their
//! gradients or parameters. A pipeline picks one by name in
//! `[strategy] type = "..."`; each implements `lora_core::strategy::Strategy`
//! over a [`comm::Comm`] (Open MPI in a run started by `mpirun`, behind the
//! `mpi` feature; threads in tests; a group of one in a single process).
//!
//! Exact strategies give, on N processes, the update that one process computes
//! from the whole batch (up to the order of float sums); the others say in
//! their summary what they trade for fewer bytes.

pub mod base;
pub mod comm;
pub mod compress;
pub mod ddp;
pub mod hierarchical;
pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi_comm;
#[cfg(feature = "mpi")]
pub mod mpi_env;
pub mod overlap;
pub mod powersgd;
mod rules;
pub mod zero;

use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::strategy::Strategy;

pub use comm::{Comm, Meter, ThreadComm};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("collective failed: {0}")]
    Comm(String),
    /// A collective waited longer than the communicator's timeout: another
    /// process is stuck in its own work, or gone.
    #[error("the {collective} of {bytes} bytes did not complete within {seconds} s on process {rank} of {size}")]
    Timeout {
        collective: &'static str,
        bytes: usize,
        seconds: f64,
        rank: usize,
        size: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for lora_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Timeout { seconds, .. } => lora_core::Error::CollectiveTimeout {
                what: e.to_string(),
                seconds,
                at: None,
            },
            other => lora_core::Error::Other(other.to_string()),
        }
    }
}

/// `[strategy] collective-timeout-s` when it is left out: PyTorch's default
/// for NCCL process groups (ten minutes). Long enough for rank 0 to write a
/// checkpoint or the outputs while the others wait; a rank that stalls longer
/// ends the job instead of hanging it.
pub const DEFAULT_COLLECTIVE_TIMEOUT_S: f64 = 600.0;

/// The key every strategy accepts, read here rather than by each strategy.
const TIMEOUT_KEY: &str = "collective-timeout-s";

/// What every `[strategy]` table may set, whatever its type.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Shared {
    #[serde(default = "default_timeout")]
    collective_timeout_s: f64,
}

fn default_timeout() -> f64 {
    DEFAULT_COLLECTIVE_TIMEOUT_S
}

/// The collective timeout of `[strategy]` (validated).
pub fn collective_timeout(c: &Component) -> std::result::Result<std::time::Duration, Diagnostics> {
    let shared: Shared = c.deserialize()?;
    let s = shared.collective_timeout_s;
    if !(s > 0.0 && s.is_finite() && s <= MAX_TIMEOUT_S) {
        return Err(Diagnostic::error(
            "strategy::invalid-value",
            format!("{TIMEOUT_KEY} ({s}) must be a positive number of seconds. Valid range: 0 < {TIMEOUT_KEY} <= {MAX_TIMEOUT_S}"),
        )
        .at(c.value_location(TIMEOUT_KEY))
        .into());
    }
    Ok(std::time::Duration::from_secs_f64(s))
}

/// A week: longer is no timeout at all (and overflows nothing).
pub const MAX_TIMEOUT_S: f64 = 7.0 * 24.0 * 3600.0;

/// What a registry entry builds a strategy with: its table and the communicator.
pub type Build = fn(&Component, Box<dyn Comm>) -> std::result::Result<Box<dyn Strategy>, Diagnostics>;

/// A strategy by name: `build` reads its table and takes the communicator.
pub struct StrategyEntry {
    pub name: &'static str,
    pub summary: &'static str,
    /// Whether N processes compute the one-process update (up to float order).
    pub exact: bool,
    pub build: Build,
}

inventory::collect!(StrategyEntry);

/// Every registered strategy, by name.
pub fn entries() -> Vec<&'static StrategyEntry> {
    let mut v: Vec<_> = inventory::iter::<StrategyEntry>().collect();
    v.sort_by_key(|e| e.name);
    v
}

/// The strategy that `[strategy]` names, over `comm`.
pub fn build(c: &Component, mut comm: Box<dyn Comm>) -> std::result::Result<Box<dyn Strategy>, Diagnostics> {
    match entries().into_iter().find(|e| e.name == c.type_name) {
        Some(e) => {
            comm.set_timeout(collective_timeout(c)?);
            // The shared key is not the strategy's own option.
            (e.build)(&c.clone().with_nested(&[TIMEOUT_KEY]), comm)
        }
        None => {
            let names: Vec<&str> = entries().iter().map(|e| e.name).collect();
            let d = Diagnostic::error("strategy::unknown-type", format!("unknown strategy `{}`", c.type_name))
                .at(c.type_location());
            let help = match lora_core::diag::did_you_mean(&c.type_name, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? available: {}", names.join(", ")),
                None => format!("available: {}", names.join(", ")),
            };
            Err(d.help(help).into())
        }
    }
}

/// Checks the `[strategy]` table without a communicator (validation).
pub fn check(c: &Component) -> std::result::Result<(), Diagnostics> {
    build(c, Box::new(ThreadComm::group(1).remove(0))).map(|_| ())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
