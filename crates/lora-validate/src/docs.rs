//! `docs/RULES.md`, generated from the registry (`cargo xtask rules-doc`).

use std::fmt::Write;

use lora_core::diag::Severity;
use lora_core::rules::{Category, Edit, RuleEntry, rules};

/// Rules per category, in [`Category::ALL`] order.
pub fn counts() -> Vec<(Category, usize)> {
    let all = rules();
    Category::ALL
        .iter()
        .map(|c| (*c, all.iter().filter(|r| r.category == *c).count()))
        .collect()
}

fn severity(r: &RuleEntry) -> &'static str {
    match r.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn edit(e: &Edit) -> String {
    match e {
        Edit::Set(s) => format!("`--set {s}`"),
        Edit::Replace(from, to) => format!("replace `{}` with `{}`", from.escape_debug(), to.escape_debug()),
        Edit::Env(k, v) => format!("`{k}={v}`"),
        Edit::Base(path) => format!("start from `{path}`"),
    }
}

/// The whole page.
pub fn markdown() -> String {
    let all = rules();
    let mut s = String::new();
    s.push_str("# Validation rules\n\n");
    s.push_str(
        "Generated from the rule registry by `cargo xtask rules-doc`; a test fails when this page is stale.\n\
         `lora validate FILE` runs every rule at once; `lora rules` lists them.\n\n\
         Each rule has a stable id, a severity (errors stop `lora run` with exit code 2, warnings are printed) and an\n\
         example: an edit of `configs/sentiment-minilm.toml` that trips it (`{fixtures}` is `tests/validate`).\n\n",
    );
    writeln!(s, "{} rules:\n", all.len()).unwrap();
    s.push_str("| category | rules |\n|---|---|\n");
    for (c, n) in counts() {
        writeln!(s, "| {} | {n} |", c.name()).unwrap();
    }
    for c in Category::ALL {
        writeln!(s, "\n## {}\n", c.name()).unwrap();
        for r in all.iter().filter(|r| r.category == c) {
            writeln!(s, "### `{}` ({})\n", r.id, severity(r)).unwrap();
            writeln!(s, "{}\n", r.summary).unwrap();
            writeln!(s, "{}\n", r.doc).unwrap();
            let trips: Vec<String> = r.trip.iter().map(edit).collect();
            writeln!(s, "Example: {}.\n", trips.join(", ")).unwrap();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rule_is_documented_with_a_stable_id_and_a_trip() {
        let all = lora_core::rules::rules();
        assert!(all.len() >= 150, "{}", all.len());
        let mut ids = std::collections::BTreeSet::new();
        for r in &all {
            assert!(ids.insert(r.id), "duplicate rule id {}", r.id);
            let (section, name) = r.id.split_once("::").expect("ids are section::name");
            assert!(
                !section.is_empty()
                    && !name.is_empty()
                    && r.id
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == ':' || c == '-'),
                "{}",
                r.id
            );
            assert!(!r.summary.is_empty() && !r.doc.is_empty(), "{}", r.id);
            assert!(!r.trip.is_empty(), "{} has no trip example", r.id);
        }
    }
}
