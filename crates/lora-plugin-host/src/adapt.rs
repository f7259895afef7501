//! Turns what a plugin registered into the host's registry entries, with
//! panics caught at every call into the plugin.

use std::collections::HashMap;
use std::sync::Mutex;

use lora_core::augment::{Augmentation, Image, ImageAugment};
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics, Severity};
use lora_core::doc::{Node, Value as DocValue};
use lora_core::events::{Callback, Control, TrainEvent};
use lora_core::init::SeededRng;
use lora_core::registry::{AugmentationEntry, CallbackEntry, Entry, describe, entries, register_dynamic};
use lora_core::rules::{Category, Finding, RuleContext, rules};
use lora_plugin_api as api;
use rand::RngCore;

use crate::load::{Collect, guarded};

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Installs every contribution, or none: a name already taken (by a built-in
/// component or another plugin) is an error naming both origins.
pub(crate) fn install(collected: Collect, origin: &'static str) -> Result<Vec<(&'static str, String)>, String> {
    let mut problems = Vec::new();
    for e in &collected.rules {
        if let Some(existing) = rules().into_iter().find(|r| r.id == e.id) {
            problems.push(format!(
                "two rules named `{}`: one {}, one from {origin}",
                e.id,
                describe(existing.origin)
            ));
        }
    }
    let taken = |kind: &str, name: &str, existing: Vec<(&'static str, &'static str)>| {
        existing
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| format!("two {kind}s named `{name}`: one {}, one from {origin}", describe(o)))
    };
    let augmentations: Vec<_> = entries::<AugmentationEntry>()
        .into_iter()
        .map(|e| (e.name, lora_core::registry::origin(e)))
        .collect();
    let callbacks: Vec<_> = entries::<CallbackEntry>()
        .into_iter()
        .map(|e| (e.name, lora_core::registry::origin(e)))
        .collect();
    problems.extend(
        collected
            .augmentations
            .iter()
            .filter_map(|e| taken("augmentation", &e.name, augmentations.clone())),
    );
    problems.extend(
        collected
            .callbacks
            .iter()
            .filter_map(|e| taken("callback", &e.name, callbacks.clone())),
    );
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }

    let mut added = Vec::new();
    for entry in collected.rules {
        added.push(("rule", entry.id.clone()));
        install_rule(entry, origin);
    }
    for entry in collected.augmentations {
        added.push((AugmentationEntry::KIND, entry.name.clone()));
        let name = leak(entry.name);
        AUGMENTATIONS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, (&*Box::leak(Box::new(entry.build)), origin));
        register_dynamic(
            AugmentationEntry {
                name,
                summary: leak(entry.summary),
                build: build_augmentation,
            },
            origin,
        )?;
    }
    for entry in collected.callbacks {
        added.push((CallbackEntry::KIND, entry.name.clone()));
        let name = leak(entry.name);
        CALLBACKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, (&*Box::leak(Box::new(entry.build)), origin));
        register_dynamic(
            CallbackEntry {
                name,
                summary: leak(entry.summary),
                build: build_callback,
            },
            origin,
        )?;
    }
    Ok(added)
}

type Factories<T> = Mutex<HashMap<&'static str, (&'static T, &'static str)>>;

/// Plugin factories by component name; registry entries point here through
/// [`build_augmentation`] and [`build_callback`] (registry constructors are plain functions).
static AUGMENTATIONS: std::sync::LazyLock<Factories<api::AugmentationFactory>> =
    std::sync::LazyLock::new(Default::default);
static CALLBACKS: std::sync::LazyLock<Factories<api::CallbackFactory>> = std::sync::LazyLock::new(Default::default);

/// The component's table (without `type`) as plugin parameters.
fn params(c: &Component) -> Result<api::Params, Diagnostics> {
    let table: toml::Table = c.deserialize()?;
    Ok(api::Params(
        table.into_iter().map(|(k, v)| (k, toml_to_api(v))).collect(),
    ))
}

fn toml_to_api(v: toml::Value) -> api::Value {
    match v {
        toml::Value::String(s) => api::Value::String(s),
        toml::Value::Integer(i) => api::Value::Integer(i),
        toml::Value::Float(f) => api::Value::Float(f),
        toml::Value::Boolean(b) => api::Value::Boolean(b),
        toml::Value::Datetime(d) => api::Value::String(d.to_string()),
        toml::Value::Array(a) => api::Value::Array(a.into_iter().map(toml_to_api).collect()),
        toml::Value::Table(t) => api::Value::Table(t.into_iter().map(|(k, v)| (k, toml_to_api(v))).collect()),
    }
}

fn plugin_error(c: &Component, origin: &str, message: String) -> Diagnostics {
    Diagnostic::error(
        "plugin::component-failed",
        format!("`{}` from plugin {origin}: {message}", c.type_name),
    )
    .at(c.type_location())
    .into()
}

fn build_augmentation(c: &Component) -> Result<Augmentation, Diagnostics> {
    let (factory, origin) = *AUGMENTATIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(c.type_name.as_str())
        .ok_or_else(|| plugin_error(c, "?", "not registered".into()))?;
    let p = params(c)?;
    let built = guarded("building the augmentation", || factory(&p)).map_err(|m| plugin_error(c, origin, m))?;
    let inner = built.map_err(|m| plugin_error(c, origin, m))?;
    let name = AUGMENTATIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .find(|k| **k == c.type_name)
        .copied()
        .unwrap_or("plugin-augmentation");
    Ok(Augmentation::Sample(Box::new(PluginAugment { name, origin, inner })))
}

/// A plugin's augmentation as the data pipeline sees it.
struct PluginAugment {
    name: &'static str,
    origin: &'static str,
    inner: Box<dyn api::Augmentation>,
}

impl ImageAugment for PluginAugment {
    fn name(&self) -> &'static str {
        self.name
    }

    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        let seed = rng.next_u64();
        let (channels, height, width) = (image.channels, image.height, image.width);
        let mut view = api::Image {
            channels,
            height,
            width,
            pixels: &mut image.pixels,
        };
        if let Err(message) = guarded("applying the augmentation", || self.inner.apply(&mut view, seed)) {
            // Re-raised with the plugin named, on the loader thread, which turns it into an error of the run.
            panic!("augmentation `{}` from plugin {}: {message}", self.name, self.origin);
        }
        // A plugin that resized the pixel buffer would break every later step.
        if image.pixels.len() != channels * height * width {
            panic!(
                "augmentation `{}` from plugin {} changed the image's pixel count",
                self.name, self.origin
            );
        }
    }
}

fn build_callback(c: &Component) -> Result<Box<dyn Callback>, Diagnostics> {
    let (name, (factory, origin)) = CALLBACKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| **k == c.type_name)
        .map(|(k, v)| (*k, *v))
        .ok_or_else(|| plugin_error(c, "?", "not registered".into()))?;
    let p = params(c)?;
    let built = guarded("building the callback", || factory(&p)).map_err(|m| plugin_error(c, origin, m))?;
    let inner = built.map_err(|m| plugin_error(c, origin, m))?;
    Ok(Box::new(PluginCallback { name, origin, inner }))
}

/// A plugin's callback as the training loop sees it.
struct PluginCallback {
    name: &'static str,
    origin: &'static str,
    inner: Box<dyn api::Callback>,
}

impl Callback for PluginCallback {
    fn on_event(&mut self, event: &TrainEvent) -> lora_core::Result<()> {
        self.control(event).map(|_| ())
    }

    fn control(&mut self, event: &TrainEvent) -> lora_core::Result<Control> {
        let Some(event) = to_api_event(event) else {
            return Ok(Control::Continue);
        };
        let inner = &mut self.inner;
        match guarded("the callback", || inner.on_event(&event)) {
            Ok(api::Action::Continue) => Ok(Control::Continue),
            Ok(api::Action::Stop(reason)) => Ok(Control::Stop { reason }),
            Err(message) => Err(lora_core::Error::Other(format!(
                "callback `{}` from plugin {}: {message}",
                self.name, self.origin
            ))),
        }
    }

    fn name(&self) -> &str {
        self.name
    }
}

fn to_api_event(e: &TrainEvent) -> Option<api::Event> {
    let event = |kind, step, epoch, loss, metrics| api::Event {
        kind,
        step,
        epoch,
        loss,
        metrics,
    };
    Some(match e {
        TrainEvent::Start { .. } => event(api::EventKind::Start, 0, 0, None, Vec::new()),
        TrainEvent::Step(m) => event(
            api::EventKind::Step,
            m.step,
            m.epoch,
            Some(m.loss),
            vec![("lr".into(), m.lr), ("grad_norm".into(), m.grad_norm)],
        ),
        TrainEvent::Eval { step, epoch, report } => event(
            api::EventKind::Eval,
            *step,
            *epoch,
            Some(report.loss),
            report.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        ),
        TrainEvent::EpochEnd { epoch, step } => event(api::EventKind::EpochEnd, *step, *epoch, None, Vec::new()),
        TrainEvent::End { step, epoch, .. } => event(api::EventKind::End, *step, *epoch, None, Vec::new()),
        _ => return None,
    })
}

fn install_rule(entry: api::RuleEntry, origin: &'static str) {
    let id = leak(entry.id);
    let rule: &'static dyn api::Rule = Box::leak(entry.rule);
    let check = move |ctx: &RuleContext| -> Vec<Finding> {
        let lookup = |path: &str| ctx.node(path).map(to_api);
        let view = api::ConfigView::new(&lookup);
        match guarded(&format!("rule `{id}` of plugin {origin}"), || rule.check(&view)) {
            Ok(found) => found
                .into_iter()
                .map(|f| {
                    let location = f.path.as_deref().and_then(|p| ctx.location(p));
                    Finding {
                        message: f.message,
                        location,
                        help: f.help,
                    }
                })
                .collect(),
            Err(message) => vec![Finding::new(message, None)],
        }
    };
    let check: &'static (dyn Fn(&RuleContext) -> Vec<Finding> + Send + Sync) = Box::leak(Box::new(check));
    lora_core::rules::register_dynamic(lora_core::rules::RuleEntry {
        id,
        origin,
        category: Category::Plugin,
        severity: match entry.severity {
            api::Severity::Error => Severity::Error,
            api::Severity::Warning => Severity::Warning,
        },
        summary: leak(entry.summary),
        doc: leak(entry.doc),
        check: Some(check),
        trip: &[],
    });
}

/// A document value as plugins see it.
pub(crate) fn to_api(node: &Node) -> api::Value {
    match &node.value {
        DocValue::String(s) | DocValue::Datetime(s) => api::Value::String(s.clone()),
        DocValue::Integer(i) => api::Value::Integer(*i),
        DocValue::Float(f) => api::Value::Float(*f),
        DocValue::Boolean(b) => api::Value::Boolean(*b),
        DocValue::Array(a) => api::Value::Array(a.iter().map(to_api).collect()),
        DocValue::Table(t) => api::Value::Table(t.iter().map(|(k, n)| (k.clone(), to_api(n))).collect()),
    }
}
