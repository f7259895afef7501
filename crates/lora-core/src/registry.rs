//! One `inventory` registry per pluggable kind.
//!
//! An entry is a name, a one-line summary and a constructor that takes the
//! spanned TOML table. A binary sees the entries of every crate it links.

use crate::augment::Augmentation;
use std::sync::Mutex;

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

/// A classification metric computed from the confusion matrix (`matrix[true][predicted]`),
/// chosen by name in `[eval] metrics`.
pub struct MetricEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub compute: fn(&[Vec<u64>]) -> f64,
}

inventory::collect!(MetricEntry);
inventory::collect!(DataSourceEntry);
inventory::collect!(AugmentationEntry);
inventory::collect!(ModelEntry);
inventory::collect!(TrainerEntry);
inventory::collect!(EvaluatorEntry);
inventory::collect!(OptimizerEntry);
inventory::collect!(SchedulerEntry);
inventory::collect!(CallbackEntry);

/// Entries added at run time by dynamic plugins, each with its library's path.
/// Never removed: plugin libraries stay loaded for the life of the process.
pub struct DynamicEntries<E: 'static>(Mutex<Vec<(&'static E, &'static str)>>);

impl<E> DynamicEntries<E> {
    const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    fn list(&self) -> Vec<(&'static E, &'static str)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Where built-in entries come from.
pub const BUILT_IN: &str = "built in";

/// What every registry entry exposes, for generic lookup and listing.
pub trait Entry: Sized + 'static {
    const KIND: &'static str;
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    /// The entries plugins added to this kind.
    fn dynamic() -> &'static DynamicEntries<Self>;
    /// What must be unique within the kind: the name (models: backend and name).
    fn key(&self) -> String {
        self.name().to_string()
    }
}

macro_rules! entry {
    ($t:ty, $kind:literal) => {
        entry!($t, $kind, |e: &$t| e.name.to_string());
    };
    ($t:ty, $kind:literal, $key:expr) => {
        impl Entry for $t {
            const KIND: &'static str = $kind;
            fn name(&self) -> &'static str {
                self.name
            }
            fn summary(&self) -> &'static str {
                self.summary
            }
            fn dynamic() -> &'static DynamicEntries<Self> {
                static DYNAMIC: DynamicEntries<$t> = DynamicEntries::new();
                &DYNAMIC
            }
            fn key(&self) -> String {
                ($key)(self)
            }
        }
    };
}

entry!(DataSourceEntry, "data source");
entry!(AugmentationEntry, "augmentation");
entry!(ModelEntry, "model", |e: &ModelEntry| format!(
    "{}/{}",
    e.backend, e.name
));
entry!(TrainerEntry, "trainer");
entry!(EvaluatorEntry, "evaluator");
entry!(OptimizerEntry, "optimizer");
entry!(SchedulerEntry, "scheduler");
entry!(CallbackEntry, "callback");
entry!(MetricEntry, "metric");

/// Every registered entry of a kind, built in and loaded, sorted by name.
pub fn entries<E: Entry>() -> Vec<&'static E>
where
    inventory::iter<E>: IntoIterator<Item = &'static E>,
{
    let mut v: Vec<&'static E> = inventory::iter::<E>.into_iter().collect();
    v.extend(E::dynamic().list().into_iter().map(|(e, _)| e));
    v.sort_by_key(|e| e.name());
    v
}

/// Where an entry comes from: [`BUILT_IN`], or the path of the plugin library that added it.
pub fn origin<E: Entry>(entry: &E) -> &'static str {
    E::dynamic()
        .list()
        .into_iter()
        .find(|(e, _)| std::ptr::eq(*e, entry))
        .map_or(BUILT_IN, |(_, o)| o)
}

/// Adds an entry at run time. A key already taken is an error naming both origins.
pub fn register_dynamic<E: Entry>(entry: E, origin: &'static str) -> Result<&'static E, String>
where
    inventory::iter<E>: IntoIterator<Item = &'static E>,
{
    if let Some(existing) = entries::<E>().into_iter().find(|e| e.key() == entry.key()) {
        return Err(format!(
            "two {}s named `{}`: one {}, one from {origin}",
            E::KIND,
            entry.key(),
            describe(self::origin(existing))
        ));
    }
    let entry: &'static E = Box::leak(Box::new(entry));
    E::dynamic()
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((entry, origin));
    Ok(entry)
}

/// An origin in a sentence: `built in`, or `from /path/lib.so`.
pub fn describe(origin: &str) -> String {
    if origin == BUILT_IN {
        "built in".into()
    } else {
        format!("from {origin}")
    }
}

/// Names used twice within a kind, among the entries linked into this binary.
pub fn duplicates<E: Entry>() -> Vec<String>
where
    inventory::iter<E>: IntoIterator<Item = &'static E>,
{
    let all = entries::<E>();
    let mut out = Vec::new();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if a.key() == b.key() {
                out.push(format!(
                    "two {}s named `{}`: one {}, one {} (summaries: \"{}\" and \"{}\")",
                    E::KIND,
                    a.key(),
                    describe(origin(*a)),
                    describe(origin(*b)),
                    a.summary(),
                    b.summary()
                ));
            }
        }
    }
    out
}

/// Every duplicate name of every kind: checked at start, an error before any work.
pub fn all_duplicates() -> Vec<String> {
    let mut out = duplicates::<DataSourceEntry>();
    out.extend(duplicates::<AugmentationEntry>());
    out.extend(duplicates::<ModelEntry>());
    out.extend(duplicates::<TrainerEntry>());
    out.extend(duplicates::<EvaluatorEntry>());
    out.extend(duplicates::<OptimizerEntry>());
    out.extend(duplicates::<SchedulerEntry>());
    out.extend(duplicates::<CallbackEntry>());
    out.extend(duplicates::<MetricEntry>());
    out
}

/// Entries whose constructor builds a component from its table.
pub trait Constructs: Entry {
    type Output;
    fn constructor(&self) -> Build<Self::Output>;
}

macro_rules! constructs {
    ($($t:ty => $out:ty),* $(,)?) => {
        $(impl Constructs for $t {
            type Output = $out;
            fn constructor(&self) -> Build<$out> {
                self.build
            }
        })*
    };
}

constructs! {
    DataSourceEntry => Box<dyn DataStage>,
    TrainerEntry => Box<dyn TrainStage>,
    EvaluatorEntry => Box<dyn EvalStage>,
    OptimizerEntry => Box<dyn Optimizer>,
    SchedulerEntry => Box<dyn Scheduler>,
    CallbackEntry => Box<dyn Callback>,
    AugmentationEntry => Augmentation,
}

/// Builds a component with the entry its `type` names (models: see [`build_model`]).
pub fn build<E: Constructs>(component: &Component) -> Result<E::Output, Diagnostics>
where
    inventory::iter<E>: IntoIterator<Item = &'static E>,
{
    let entry = lookup::<E>(component, |_| true)?;
    (entry.constructor())(component)
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
