//! `lora config show`: the resolved configuration, each value with its origin
//! (file and line, environment variable, `--set`, or default).

use std::fmt::Write;
use std::sync::Arc;

use lora_core::diag::SourceFile;
use lora_core::doc::ConfigDoc;
use serde_json::Value;

use crate::pipeline::Pipeline;

/// Every table of the resolved configuration, values annotated with where they came from.
pub fn render(pipeline: &Pipeline, source: &Arc<SourceFile>) -> String {
    let doc = ConfigDoc::parse(source).ok();
    let resolved = pipeline.resolved_value();
    let mut out = String::new();
    writeln!(
        out,
        "# {} resolved; `# origin` after each value.",
        source.path.display()
    )
    .unwrap();
    if let Value::Object(sections) = &resolved {
        for (name, table) in sections {
            table_lines(&mut out, name, table, doc.as_ref());
        }
    }
    out
}

fn table_lines(out: &mut String, path: &str, table: &Value, doc: Option<&ConfigDoc>) {
    let Value::Object(fields) = table else { return };
    writeln!(out, "\n[{path}]").unwrap();
    let mut rows = Vec::new();
    for (key, value) in fields {
        if value.is_object() {
            continue;
        }
        let full = format!("{path}.{key}");
        let origin = doc.and_then(|d| d.get(&full)).map_or_else(
            || "default".to_string(),
            |n| lora_validate::engine::origin_label(&n.location),
        );
        let text = toml::Value::try_from(value).map_or_else(|_| value.to_string(), |v| v.to_string());
        rows.push((format!("{key} = {text}"), origin));
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (line, origin) in rows {
        writeln!(out, "{line:<width$}  # {origin}").unwrap();
    }
    for (key, value) in fields {
        if value.is_object() {
            table_lines(out, &format!("{path}.{key}"), value, doc);
        }
    }
}
