//! `lora run --resume`: what identifies a run (its configuration, data, base
//! model and backend), and which differences a checkpoint tolerates.
//!
//! A resumed run must be the run that wrote the checkpoint. Every difference
//! is listed; the safe ones (they change how long the run goes on or what it
//! reports, never the state it continues from) are accepted with `--force`,
//! the others never.

use std::path::Path;

use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::stage::{Dataset, PreparedData, StageContext};
use lora_core::{Error, Result};
use lora_train::checkpoint::{Identity, Manifest, file_sum, hex};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::pipeline::Pipeline;

/// Settings that `--force` may change on resume. Matched as dotted prefixes of
/// the resolved configuration's keys.
pub const SAFE: [(&str, &str); 14] = [
    ("run.name", "a label"),
    ("run.output-dir", "where outputs go"),
    (
        "run.backend",
        "both backends compute the same numbers within 1e-5, not bit for bit",
    ),
    (
        "train.epochs",
        "the run goes on longer or ends sooner; a schedule follows the new total",
    ),
    (
        "train.max-steps",
        "the run goes on longer or ends sooner; a schedule follows the new total",
    ),
    ("train.checkpoint-every-steps", "when checkpoints are written"),
    ("train.keep-last", "how many checkpoints are kept"),
    ("train.module-stats-every", "what is logged"),
    ("train.check-batches", "early input checks, already done"),
    ("eval.every-steps", "when evaluations run"),
    ("eval.batch-size", "how evaluation is batched"),
    ("eval.metrics", "what evaluation reports"),
    ("monitor", "the dashboard and the report"),
    ("data.prefetch", "how far the loader reads ahead"),
];

fn safe(key: &str) -> Option<&'static str> {
    SAFE.iter()
        .find(|(p, _)| key == *p || key.starts_with(&format!("{p}.")))
        .map(|(_, why)| *why)
}

/// The resolved configuration as a checkpoint records it: every value with its
/// default, the augmentations' parameters and the callbacks included.
pub fn resolved_config(pipeline: &Pipeline) -> Value {
    let mut v = pipeline.resolved_value();
    // The resolved data table names its augmentations only; their parameters count too.
    for key in ["augment", "eval-augment"] {
        if let Ok(ops) = pipeline.config.data.array_components(key)
            && !ops.is_empty()
        {
            v["data"][key] = ops.iter().map(table).collect();
        }
    }
    let callbacks: serde_json::Map<String, Value> = pipeline
        .config
        .callbacks
        .iter()
        .map(|c| (c.path.last().cloned().unwrap_or_default(), table(c)))
        .collect();
    if !callbacks.is_empty() {
        v["callbacks"] = Value::Object(callbacks);
    }
    v
}

/// A component's table as written, with its `type`.
fn table(c: &lora_core::config::Component) -> Value {
    let mut table = c.deserialize::<Value>().unwrap_or(Value::Null);
    if let Some(t) = table.as_object_mut() {
        t.insert("type".into(), c.type_name.clone().into());
    }
    table
}

fn sha256_json(v: &Value) -> String {
    // serde_json's maps are ordered by key: the text is canonical.
    hex(&Sha256::digest(v.to_string().as_bytes()))
}

/// Hashes a split's examples (their inputs and labels; the labels alone for a
/// dataset that does not expose its contents).
fn split_fingerprint(h: &mut Sha256, split: &dyn Dataset) {
    h.update((split.len() as u64).to_le_bytes());
    if !split.fingerprint(&mut |bytes| h.update(bytes)) {
        for l in split.labels() {
            h.update(l.to_le_bytes());
        }
    }
}

/// The identity of this run: configuration, data, base model and backend.
pub fn identity(pipeline: &Pipeline, ctx: &StageContext, data: &PreparedData, config: &Value) -> Result<Identity> {
    let mut h = Sha256::new();
    for name in data.label_names() {
        h.update(name.as_bytes());
        h.update([0]);
    }
    split_fingerprint(&mut h, data.train.as_ref());
    split_fingerprint(&mut h, data.validation.as_ref());
    let data_fingerprint = hex(&h.finalize());
    let files = pipeline.model.base_files(ctx)?;
    let base_model_hash = if files.is_empty() {
        "none".to_string()
    } else {
        let mut h = Sha256::new();
        for f in &files {
            let sum = file_sum(f).map_err(|e| Error::io("cannot hash the base model", f, e))?;
            h.update(
                f.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            h.update(sum.sha256.as_bytes());
        }
        hex(&h.finalize())
    };
    Ok(Identity {
        config_hash: sha256_json(config),
        data_fingerprint,
        base_model_hash,
        backend: pipeline.config.run.backend.clone(),
    })
}

/// Every leaf of a JSON document by its dotted key (arrays are leaves).
fn flatten(prefix: &str, v: &Value, out: &mut std::collections::BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(not set)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 60 {
                format!("{}...", s.chars().take(57).collect::<String>())
            } else {
                s
            }
        }
    }
}

/// One difference between the checkpoint's run and this one.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub what: String,
    pub from: String,
    pub to: String,
    /// Why `--force` may accept it; `None`: never.
    pub safe: Option<&'static str>,
}

/// Every difference between a checkpoint's run and this one.
pub fn changes(saved: &Identity, saved_config: &Value, now: &Identity, config: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    if saved.config_hash != now.config_hash {
        let (mut a, mut b) = Default::default();
        flatten("", saved_config, &mut a);
        flatten("", config, &mut b);
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let (x, y) = (a.get(k), b.get(k));
            if x != y {
                out.push(Change {
                    what: k.clone(),
                    from: show(x),
                    to: show(y),
                    safe: safe(k),
                });
            }
        }
    }
    if saved.data_fingerprint != now.data_fingerprint {
        out.push(Change {
            what: "data (the prepared examples)".into(),
            from: format!(
                "fingerprint {}",
                &saved.data_fingerprint[..12.min(saved.data_fingerprint.len())]
            ),
            to: format!(
                "fingerprint {}",
                &now.data_fingerprint[..12.min(now.data_fingerprint.len())]
            ),
            safe: None,
        });
    }
    if saved.base_model_hash != now.base_model_hash {
        out.push(Change {
            what: "base model (its files)".into(),
            from: format!(
                "sha256 {}",
                &saved.base_model_hash[..12.min(saved.base_model_hash.len())]
            ),
            to: format!("sha256 {}", &now.base_model_hash[..12.min(now.base_model_hash.len())]),
            safe: None,
        });
    }
    if saved.backend != now.backend && !out.iter().any(|c| c.what == "run.backend") {
        out.push(Change {
            what: "run.backend".into(),
            from: saved.backend.clone(),
            to: now.backend.clone(),
            safe: safe("run.backend"),
        });
    }
    out
}

/// Accepts the changes or refuses the resume (exit 2) with the list of them.
/// Returns the lines to print for the changes `--force` accepted.
pub fn check(checkpoint: &Path, manifest: &Manifest, changes: &[Change], force: bool) -> Result<Vec<String>> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let refused = changes.iter().any(|c| c.safe.is_none() || !force);
    if !refused {
        return Ok(changes
            .iter()
            .map(|c| {
                format!(
                    "resuming with `{}` changed from {} to {} (--force: {})",
                    c.what,
                    c.from,
                    c.to,
                    c.safe.unwrap_or_default()
                )
            })
            .collect());
    }
    let mut diags = Diagnostics::default();
    for c in changes {
        let message = format!("`{}` changed since the checkpoint: {} -> {}", c.what, c.from, c.to);
        let d = Diagnostic::error("resume::changed", message);
        diags.push(match c.safe {
            Some(why) => d.help(format!("safe to change ({why}): accepted with --force")),
            None => {
                d.help("this cannot change within a run: undo the change, or start a new run in another output-dir")
            }
        });
    }
    diags.push(
        Diagnostic::error(
            "resume::refused",
            format!(
                "cannot resume from {} (step {}): the run differs from the one that wrote it",
                checkpoint.display(),
                manifest.step
            ),
        )
        .help(format!(
            "--force accepts these changes only: {}",
            SAFE.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
        )),
    );
    Err(Error::Invalid(diags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(config: &Value) -> Identity {
        Identity {
            config_hash: sha256_json(config),
            data_fingerprint: "d".repeat(64),
            base_model_hash: "b".repeat(64),
            backend: "candle".into(),
        }
    }

    #[test]
    fn each_difference_is_listed_and_only_safe_ones_pass_with_force() {
        let a = serde_json::json!({"train": {"epochs": 1, "batch-size": 16}, "eval": {"every-steps": 0}});
        let more = serde_json::json!({"train": {"epochs": 3, "batch-size": 16}, "eval": {"every-steps": 5}});
        let c = changes(&id(&a), &a, &id(&more), &more);
        assert_eq!(
            c.iter()
                .map(|c| (c.what.as_str(), c.safe.is_some()))
                .collect::<Vec<_>>(),
            [("eval.every-steps", true), ("train.epochs", true)]
        );
        let m = Manifest {
            format: 1,
            step: 4,
            epoch: 0,
            batch_in_epoch: 4,
            identity: id(&a),
            files: Default::default(),
        };
        let p = Path::new("ck");
        assert_eq!(check(p, &m, &c, true).unwrap().len(), 2);
        assert_eq!(check(p, &m, &c, false).unwrap_err().exit_code(), 2);

        let bigger = serde_json::json!({"train": {"epochs": 3, "batch-size": 32}, "eval": {"every-steps": 0}});
        let mut now = id(&bigger);
        now.data_fingerprint = "e".repeat(64);
        let c = changes(&id(&a), &a, &now, &bigger);
        let text = check(p, &m, &c, true).unwrap_err().to_string();
        assert!(
            text.contains("`train.batch-size` changed since the checkpoint: 16 -> 32"),
            "{text}"
        );
        assert!(text.contains("`data (the prepared examples)` changed"), "{text}");
        assert!(text.contains("`train.epochs` changed"), "{text}");
        assert!(changes(&id(&a), &a, &id(&a), &a).is_empty());
    }
}
