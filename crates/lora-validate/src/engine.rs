//! Runs every registered rule and merges what they find with the loader's diagnostics.

use std::panic::{AssertUnwindSafe, catch_unwind};

use lora_core::diag::{Diagnostic, Diagnostics, Location, Origin, Severity};
use lora_core::doc::ConfigDoc;
use lora_core::rules::{Category, Facts, RuleContext, rules};

/// Every rule's findings on a document, as diagnostics with the rule's id and severity.
///
/// A rule that panics (a plugin's, say) becomes an error naming the rule rather
/// than taking the process down.
pub fn check(doc: &ConfigDoc, facts: &Facts) -> Vec<Diagnostic> {
    let ctx = RuleContext { doc, facts };
    let mut out = Vec::new();
    for rule in rules() {
        let Some(check) = rule.check else { continue };
        match catch_unwind(AssertUnwindSafe(|| check(&ctx))) {
            Ok(findings) => out.extend(findings.into_iter().map(|f| Diagnostic {
                severity: rule.severity,
                code: rule.id.to_string(),
                message: f.message,
                location: f.location,
                help: f.help,
            })),
            Err(panic) => out.push(Diagnostic::error(
                "validate::rule-panicked",
                format!(
                    "rule `{}` panicked: {}",
                    rule.id,
                    lora_core::error::panic_message(panic.as_ref())
                ),
            )),
        }
    }
    out
}

/// The loader's diagnostics and the rules', as one list in document order.
///
/// Stages repeat a few range checks (so that a stage built in code is safe too);
/// where a loader diagnostic and a rule point at the same value, the rule's is kept.
/// A warning about a value that already has an error is dropped: it was computed
/// from a value that is wrong anyway (`batch-size (-3) exceeds the training split`).
/// The value is wrong when the loader rejects it or a structure, range or
/// cross-field rule does; an error about the model or the data found at the place
/// of their path (an unreadable row, say) keeps the warnings there.
pub fn finish(loader: Diagnostics, rules: Vec<Diagnostic>) -> Diagnostics {
    let registered = lora_core::rules::rules();
    let value_rule = |code: &str| {
        registered
            .iter()
            .find(|r| r.id == code)
            .is_some_and(|r| matches!(r.category, Category::Structure | Category::Range | Category::Cross))
    };
    let errors: Vec<Diagnostic> = loader
        .0
        .iter()
        .filter(|d| d.severity == Severity::Error && d.location.is_some())
        .chain(
            rules
                .iter()
                .filter(|d| d.severity == Severity::Error && d.location.is_some() && value_rule(&d.code)),
        )
        .cloned()
        .collect();
    let keep = |d: &Diagnostic| d.severity == Severity::Error || !errors.iter().any(|e| same_place(e, d));
    let loader: Vec<Diagnostic> = loader.0.into_iter().filter(|d| keep(d)).collect();
    let rules: Vec<Diagnostic> = rules.into_iter().filter(|d| keep(d)).collect();
    let mut all: Vec<(bool, Diagnostic)> = Vec::new();
    for d in loader {
        let duplicate = rules.iter().any(|r| same_place(r, &d))
            || all
                .iter()
                .any(|(_, e)| e.code == d.code && same_place(e, &d) && e.message == d.message);
        if !duplicate {
            all.push((false, d));
        }
    }
    all.extend(rules.into_iter().map(|d| (true, d)));
    all.sort_by_key(|(_, d)| sort_key(d));
    Diagnostics(all.into_iter().map(|(_, d)| d).collect())
}

fn same_place(a: &Diagnostic, b: &Diagnostic) -> bool {
    match (&a.location, &b.location) {
        (Some(x), Some(y)) => std::sync::Arc::ptr_eq(&x.file, &y.file) && x.span.start == y.span.start,
        _ => false,
    }
}

/// Order: by where the value was written (file, line, column); overrides after
/// the files, in the order given; problems without a place last.
fn sort_key(d: &Diagnostic) -> (u8, String, usize, usize, String) {
    match &d.location {
        None => (3, String::new(), 0, 0, d.code.clone()),
        Some(loc) => match loc.origin() {
            None | Some(Origin::File { .. }) => {
                let (line, col) = loc.line_col();
                (0, loc.path().display().to_string(), line, col, d.code.clone())
            }
            Some(Origin::Env { var, .. }) => (1, var, 0, 0, d.code.clone()),
            Some(Origin::Cli { .. }) => (2, String::new(), loc.span.start, 0, d.code.clone()),
        },
    }
}

/// Where a value came from, for `lora config show`: `file:line`, the variable, the argument.
pub fn origin_label(loc: &Location) -> String {
    match loc.origin() {
        Some(Origin::Env { var, value }) => format!("env {var}={value}"),
        Some(Origin::Cli { arg }) => format!("--set {arg}"),
        _ => {
            let (line, _) = loc.line_col();
            format!("{}:{line}", loc.path().display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_core::diag::SourceFile;

    #[test]
    fn a_warning_about_a_rejected_value_is_dropped_and_others_are_kept() {
        let file = SourceFile::new(std::path::Path::new("p.toml"), "[train]\nbatch-size = -3\n".into());
        let at = |start: usize| {
            Some(Location {
                file: file.clone(),
                span: start..start + 2,
            })
        };
        let batch = 21;
        let codes = |loader: Vec<Diagnostic>, rules: Vec<Diagnostic>| -> Vec<String> {
            finish(Diagnostics(loader), rules)
                .0
                .into_iter()
                .map(|d| d.code)
                .collect()
        };
        let warning = || Diagnostic::warning("train::batch-exceeds-train", "batch-size (-3) exceeds").at(at(batch));
        // A range rule's error, or the loader's, drops the warning at the same value.
        let range = Diagnostic::error("train::batch-size-zero", "must be at least 1").at(at(batch));
        assert_eq!(
            codes(Vec::new(), vec![range.clone(), warning()]),
            ["train::batch-size-zero"]
        );
        let loader = Diagnostic::error("config::invalid-value", "invalid value").at(at(batch));
        assert_eq!(codes(vec![loader], vec![warning()]), ["config::invalid-value"]);
        // Elsewhere, or under an error about the data found there, the warning stays.
        let other = Diagnostic::warning("train::batch-exceeds-train", "x").at(at(0));
        assert_eq!(codes(Vec::new(), vec![range, other]).len(), 2);
        let data = Diagnostic::error("data::unreadable-rows", "line 3").at(at(batch));
        assert_eq!(codes(Vec::new(), vec![data, warning()]).len(), 2);
    }
}
