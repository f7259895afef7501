//! One `inventory` registry per pluggable kind.
//!
//! An entry is a name, a one-line summary and a constructor that takes the
//! spanned TOML table. A binary sees the entries of every crate it links.

use crate::augment::Augmentation;
use crate::config::Component;
use crate::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::events::Callback;
use crate::optim::{Optimizer, Scheduler};
use crate::stage::{DataStage, EvalStage, ModelStage, TrainStage};

pub type Build<T> = fn(&Component) -> Result<T, Diagnostics>;

pub struct DataSourceEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: Build<Box<dyn DataStage>>,
}

pub struct ModelEntry {
    /// Models are backend-specific: the same name exists once per backend.
    pub backend: &'static str,
    pub name: &'static str,
    pub summary: &'static str,
    pub build: Build<Box<dyn ModelStage>>,
}

pub struct TrainerEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: Build<Box<dyn TrainStage>>,
}

pub struct EvaluatorEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: Build<Box<dyn EvalStage>>,
}

pub struct OptimizerEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: Build<Box<dyn Optimizer>>,
}

pub struct SchedulerEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: Build<Box<dyn Scheduler>>,
}

/// A training callback (`[callbacks.NAME]`): early stopping, anomaly guards, ...
pub struct CallbackEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: Build<Box<dyn Callback>>,
}

/// An augmentation (`[[data.augment]] type = "..."`), per sample or per batch.
pub struct AugmentationEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: Build<Augmentation>,
}

inventory::collect!(DataSourceEntry);
inventory::collect!(AugmentationEntry);
inventory::collect!(ModelEntry);
inventory::collect!(TrainerEntry);
inventory::collect!(EvaluatorEntry);
inventory::collect!(OptimizerEntry);
inventory::collect!(SchedulerEntry);
inventory::collect!(CallbackEntry);

/// What every registry entry exposes, for generic lookup and listing.
pub trait Entry: 'static {
    const KIND: &'static str;
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
}

macro_rules! entry {
    ($t:ty, $kind:literal) => {
        impl Entry for $t {
            const KIND: &'static str = $kind;
            fn name(&self) -> &'static str {
                self.name
            }
            fn summary(&self) -> &'static str {
                self.summary
            }
        }
    };
}

entry!(DataSourceEntry, "data source");
entry!(AugmentationEntry, "augmentation");
entry!(ModelEntry, "model");
entry!(TrainerEntry, "trainer");
entry!(EvaluatorEntry, "evaluator");
entry!(OptimizerEntry, "optimizer");
entry!(SchedulerEntry, "scheduler");
entry!(CallbackEntry, "callback");

/// Every registered entry of a kind, sorted by name.
pub fn entries<E: Entry>() -> Vec<&'static E>
where
    inventory::iter<E>: IntoIterator<Item = &'static E>,
{
    let mut v: Vec<&'static E> = inventory::iter::<E>.into_iter().collect();
    v.sort_by_key(|e| e.name());
    v
}

/// Looks up the entry named by a component's `type`, or explains what exists.
pub fn lookup<E: Entry>(component: &Component, filter: impl Fn(&E) -> bool) -> Result<&'static E, Diagnostics>
where
    inventory::iter<E>: IntoIterator<Item = &'static E>,
{
    let all: Vec<&'static E> = entries::<E>().into_iter().filter(|e| filter(e)).collect();
    if let Some(e) = all.iter().find(|e| e.name() == component.type_name) {
        return Ok(e);
    }
    let names: Vec<&str> = all.iter().map(|e| e.name()).collect();
    let mut d = Diagnostic::error(
        "config::unknown-type",
        format!(
            "unknown {} type `{}` in [{}]",
            E::KIND,
            component.type_name,
            component.path.join(".")
        ),
    )
    .at(component.type_location());
    d = match did_you_mean(&component.type_name, names.iter().copied()) {
        Some(s) => d.help(format!("did you mean `{s}`? valid types: {}", names.join(", "))),
        None => d.help(format!("valid types: {}", names.join(", "))),
    };
    Err(d.into())
}

/// Builds the model named by the component for one backend.
pub fn build_model(component: &Component, backend: &str) -> Result<Box<dyn ModelStage>, Diagnostics> {
    let entry = lookup::<ModelEntry>(component, |e| e.backend == backend)?;
    (entry.build)(component)
}
