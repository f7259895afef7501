//! Turns what a plugin registered into the host's registry entries, with
//! panics caught at every call into the plugin.

use lora_core::diag::Severity;
use lora_core::doc::{Node, Value as DocValue};
use lora_core::rules::{Category, Finding, RuleContext, register_dynamic, rules};
use lora_plugin_api as api;

use crate::load::{Collect, guarded};

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Installs every contribution; a name already taken is an error naming both origins.
pub(crate) fn install(collected: Collect, origin: &'static str) -> Result<Vec<(&'static str, String)>, String> {
    let mut added = Vec::new();
    let mut problems = Vec::new();
    for entry in collected.rules {
        if let Some(existing) = rules().into_iter().find(|r| r.id == entry.id) {
            problems.push(format!(
                "rule `{}` is already registered by {}; this plugin ({origin}) registers it again",
                entry.id, existing.origin
            ));
            continue;
        }
        added.push(("rule", entry.id.clone()));
        install_rule(entry, origin);
    }
    if !collected.augmentations.is_empty() || !collected.callbacks.is_empty() {
        problems.push("augmentations and callbacks from plugins are not supported by this host yet".into());
    }
    if problems.is_empty() {
        Ok(added)
    } else {
        Err(problems.join("; "))
    }
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
    register_dynamic(lora_core::rules::RuleEntry {
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
