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
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for lora_core::Error {
    fn from(e: Error) -> Self {
        lora_core::Error::Other(e.to_string())
    }
}

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
pub fn build(c: &Component, comm: Box<dyn Comm>) -> std::result::Result<Box<dyn Strategy>, Diagnostics> {
    match entries().into_iter().find(|e| e.name == c.type_name) {
        Some(e) => (e.build)(c, comm),
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
