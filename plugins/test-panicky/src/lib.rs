//! Test scaffolding for the plugin boundary: components that panic when asked,
//! a rule that reports findings at the paths it is given, and a callback that
//! logs every event it sees into the run's output folder.
//!
//! - augmentation `panicky`: `panic = true` panics in `apply`; `find = [PATH, ...]`
//!   and `levels = N` are read by the rules below;
//! - rule `test-panicky::find` (warning): one finding per path in a `panicky`
//!   table's `find`, with that path;
//! - rule `test-panicky::panics` (warning): panics when a `panicky` table has
//!   `panic-in-rule = true`;
//! - callback `event-log`: writes every event as a JSON line to `file` (default
//!   `plugin-events.jsonl`) in the run's output folder; `panic-at-step = N`
//!   panics on step N.

use std::io::Write;

use lora_plugin_api::{
    Action, Augmentation, AugmentationEntry, Callback, CallbackEntry, ConfigView, Event, Finding, Image, Params,
    Registrar, Rule, RuleEntry, RunInfo, Severity, Value, export_plugin,
};

export_plugin!("test-panicky", "0.1.0", register);

fn register(r: &mut dyn Registrar) {
    r.augmentation(AugmentationEntry {
        name: "panicky".into(),
        summary: "leaves the image alone, or panics with `panic = true` (test plugin)".into(),
        build: Box::new(|p| Panicky::from_params(p).map(|a| Box::new(a) as Box<dyn Augmentation>)),
    });
    r.rule(RuleEntry {
        id: "test-panicky::find".into(),
        severity: Severity::Warning,
        summary: "One finding per path in a panicky table's `find` (test plugin).".into(),
        doc: "Reports each path it is given, to test how finding paths resolve.".into(),
        rule: Box::new(FindPaths),
    });
    r.rule(RuleEntry {
        id: "test-panicky::panics".into(),
        severity: Severity::Warning,
        summary: "Panics when a panicky table says `panic-in-rule = true` (test plugin).".into(),
        doc: "A rule that panics during validation, to test the boundary.".into(),
        rule: Box::new(PanicsOnRequest),
    });
    r.callback(CallbackEntry {
        name: "event-log".into(),
        summary: "every event as a JSON line in the run's folder; `panic-at-step` (test plugin)".into(),
        build: Box::new(|p| EventLog::from_params(p).map(|c| Box::new(c) as Box<dyn Callback>)),
    });
}

struct Panicky {
    panic: bool,
}

impl Panicky {
    fn from_params(p: &Params) -> Result<Self, String> {
        if let Some(key) = p.unknown_keys(&["panic", "find", "levels", "panic-in-rule"]).first() {
            return Err(format!("unknown key `{key}`"));
        }
        p.int_or("levels", 0)?;
        p.bool_or("panic-in-rule", false)?;
        Ok(Self {
            panic: p.bool_or("panic", false)?,
        })
    }
}

impl Augmentation for Panicky {
    fn apply(&self, _image: &mut Image<'_>, seed: u64) {
        if self.panic {
            panic!("panicky augmentation panics on purpose (seed {seed})");
        }
    }
}

/// The `panicky` tables of `data.augment`.
fn panicky_tables(config: &ConfigView<'_>) -> Vec<Value> {
    let Some(Value::Array(tables)) = config.get("data.augment") else {
        return Vec::new();
    };
    tables
        .into_iter()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("panicky"))
        .collect()
}

struct FindPaths;

impl Rule for FindPaths {
    fn check(&self, config: &ConfigView<'_>) -> Vec<Finding> {
        let mut out = Vec::new();
        for table in panicky_tables(config) {
            let Some(Value::Array(paths)) = table.get("find") else {
                continue;
            };
            for path in paths.iter().filter_map(Value::as_str) {
                // What the rule reads at the path, to test `ConfigView::get` with indices.
                let seen = match config.get(path) {
                    Some(Value::Integer(i)) => i.to_string(),
                    Some(Value::String(s)) => s,
                    Some(_) => "a value".into(),
                    None => "nothing".into(),
                };
                out.push(Finding {
                    message: format!("found `{path}`: {seen}"),
                    path: Some(path.to_string()),
                    help: None,
                });
            }
        }
        out
    }
}

struct PanicsOnRequest;

impl Rule for PanicsOnRequest {
    fn check(&self, config: &ConfigView<'_>) -> Vec<Finding> {
        let asked = panicky_tables(config)
            .iter()
            .any(|t| t.get("panic-in-rule").and_then(Value::as_bool) == Some(true));
        if asked {
            panic!("test-panicky::panics panics on purpose");
        }
        Vec::new()
    }
}

struct EventLog {
    name: String,
    panic_at_step: Option<usize>,
    file: Option<std::fs::File>,
}

impl EventLog {
    fn from_params(p: &Params) -> Result<Self, String> {
        if let Some(key) = p.unknown_keys(&["file", "panic-at-step"]).first() {
            return Err(format!("unknown key `{key}` (event-log takes `file`, `panic-at-step`)"));
        }
        let panic_at_step = match p.get("panic-at-step") {
            None => None,
            Some(_) => {
                Some(usize::try_from(p.int_or("panic-at-step", 0)?).map_err(|_| "`panic-at-step` must be at least 0")?)
            }
        };
        Ok(Self {
            name: p.str_or("file", "plugin-events.jsonl")?.to_string(),
            panic_at_step,
            file: None,
        })
    }
}

impl Callback for EventLog {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), String> {
        let path = run.output_dir.join(&self.name);
        let file = std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        self.file = Some(file);
        Ok(())
    }

    fn on_event(&mut self, event: &Event) -> Action {
        if let Some(file) = self.file.as_mut() {
            let loss = event.loss.map_or("null".to_string(), |l| format!("{l:?}"));
            let metrics: Vec<String> = event.metrics.iter().map(|(k, v)| format!("\"{k}\":{v:?}")).collect();
            let line = format!(
                "{{\"kind\":\"{:?}\",\"step\":{},\"epoch\":{},\"loss\":{loss},\"metrics\":{{{}}}}}",
                event.kind,
                event.step,
                event.epoch,
                metrics.join(",")
            );
            if let Err(e) = writeln!(file, "{line}") {
                return Action::Stop(format!("event-log cannot write: {e}"));
            }
        }
        if self.panic_at_step == Some(event.step) && event.kind == lora_plugin_api::EventKind::Step {
            panic!("event-log panics at step {} on purpose", event.step);
        }
        Action::Continue
    }
}
