//! `[plugins] paths = [...]`: loading the pipeline's dynamic plugins, and `lora plugins`.

use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::doc::ConfigDoc;
use lora_plugin_host::{Request, load_all};

/// Loads the libraries the document names; every problem becomes a diagnostic.
pub fn load_from(doc: &ConfigDoc) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let Some(table) = doc.get("plugins") else { return diags };
    let mut requests = Vec::new();
    for (key, node) in table.as_table().unwrap_or_default() {
        if key != "paths" {
            let d = Diagnostic::error(
                "config::unknown-key",
                format!("[plugins] unknown field `{key}`, expected `paths`"),
            )
            .at(Some(node.location.clone()));
            diags.push(d);
            continue;
        }
        let Some(items) = node.as_array() else {
            diags.push(
                Diagnostic::error("config::wrong-type", "[plugins] paths must be a list of library paths")
                    .at(Some(node.location.clone())),
            );
            continue;
        };
        for item in items {
            match item.as_str() {
                Some(p) => requests.push(Request {
                    path: p.into(),
                    location: Some(item.location.clone()),
                }),
                None => diags.push(
                    Diagnostic::error("config::wrong-type", "a plugin path must be a string")
                        .at(Some(item.location.clone())),
                ),
            }
        }
    }
    if requests.is_empty() {
        return diags;
    }
    crate::alloc::share_with_plugins();
    let (_, errors) = load_all(&requests);
    for e in errors {
        diags.push(
            Diagnostic::error("plugin::load-failed", e.to_string())
                .at(e.location.clone())
                .help("build plugins with `cargo xtask build-plugins`; see docs/PLUGINS.md"),
        );
    }
    diags
}
