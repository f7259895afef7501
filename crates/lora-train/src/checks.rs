//! Early-training checks: the first micro-batches and the split they come
//! from are looked at before their mistakes cost an epoch. The configuration
//! validator catches what can be seen in the file; these catch what only the
//! data shows: one class dominating, inputs that are all the same, non-finite
//! inputs, labels out of range, most examples cut at the maximum length.

use std::collections::BTreeSet;

use lora_core::Batch;

/// How grave a finding is: a warning is logged and shown; an error stops the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    fn warn(message: String) -> Self {
        Self {
            severity: Severity::Warning,
            message,
        }
    }
    fn error(message: String) -> Self {
        Self {
            severity: Severity::Error,
            message,
        }
    }
}

/// Above this share of one class, the split is called imbalanced.
pub const MAJORITY_LIMIT: f64 = 0.9;
/// Above this share of truncated examples, truncation is called heavy.
pub const TRUNCATION_LIMIT: f64 = 0.2;

/// Checks of the training split as a whole: label balance and truncation.
pub fn check_split(labels: &[u32], num_labels: usize, truncated: Option<usize>) -> Vec<Finding> {
    let mut out = Vec::new();
    if labels.is_empty() {
        return out;
    }
    let mut counts = vec![0usize; num_labels.max(1)];
    for &l in labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    let n = labels.len() as f64;
    let (major, &most) = counts.iter().enumerate().max_by_key(|(_, c)| **c).expect("non-empty");
    if most as f64 / n > MAJORITY_LIMIT {
        out.push(Finding::warn(format!(
            "label imbalance: class {major} is {:.1}% of the {} training examples (limit {:.0}%); accuracy will flatter the model, watch macro-F1",
            100.0 * most as f64 / n,
            labels.len(),
            100.0 * MAJORITY_LIMIT
        )));
    }
    let missing: Vec<usize> = counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == 0)
        .map(|(i, _)| i)
        .collect();
    if !missing.is_empty() {
        out.push(Finding::warn(format!(
            "label imbalance: classes {missing:?} have no training example"
        )));
    }
    if let Some(t) = truncated {
        let share = t as f64 / n;
        if share > TRUNCATION_LIMIT {
            out.push(Finding::warn(format!(
                "heavy truncation: {t} of {} training examples ({:.1}%) were cut at max-length (limit {:.0}%); raise [data] max-length",
                labels.len(),
                100.0 * share,
                100.0 * TRUNCATION_LIMIT
            )));
        }
    }
    out
}

/// Checks of one of the first micro-batches; `index` counts from 0.
pub fn check_batch(batch: &Batch, index: usize, num_labels: usize) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(bad) = batch.labels().iter().find(|&&l| l as usize >= num_labels) {
        out.push(Finding::error(format!(
            "batch {index}: label {bad} is out of range for {num_labels} classes"
        )));
    }
    // Token ids: identical rows, an empty mask. Float inputs (images) are checked below.
    if let Batch::Text(t) = batch {
        if t.batch_size > 1 && t.seq_len > 0 {
            let rows: BTreeSet<&[u32]> = t.input_ids.chunks(t.seq_len).collect();
            if rows.len() == 1 {
                out.push(Finding::warn(format!(
                    "constant inputs: all {} examples of batch {index} have the same tokens",
                    t.batch_size
                )));
            }
        }
        if t.real_tokens() == 0 {
            out.push(Finding::error(format!(
                "batch {index}: no real token (the attention mask is all zero)"
            )));
        }
    }
    if let Some(values) = float_inputs(batch) {
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            out.push(Finding::error(format!(
                "batch {index}: {bad} input values are NaN or infinite"
            )));
        }
        if values.len() > 1 && values.iter().all(|v| *v == values[0]) {
            out.push(Finding::warn(format!(
                "constant inputs: every input value of batch {index} is {}",
                values[0]
            )));
        }
    }
    out
}

/// The float-valued inputs of a batch, if it has any (text has token ids only).
fn float_inputs(batch: &Batch) -> Option<&[f32]> {
    match batch {
        Batch::Image(b) => Some(&b.pixels),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_core::TextBatch;

    fn text(ids: Vec<u32>, seq: usize, labels: Vec<u32>) -> Batch {
        Batch::Text(TextBatch {
            batch_size: labels.len(),
            seq_len: seq,
            attention_mask: vec![1; ids.len()],
            input_ids: ids,
            labels,
        })
    }

    #[test]
    fn imbalance_and_truncation_are_warned() {
        let mut labels = vec![0u32; 95];
        labels.extend([1; 5]);
        let f = check_split(&labels, 3, Some(50));
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].message.contains("95.0%"));
        assert!(f[1].message.contains("[2]"));
        assert!(f[2].message.starts_with("heavy truncation: 50 of 100"));
        assert!(check_split(&[0, 1, 2, 0, 1, 2], 3, Some(0)).is_empty());
    }

    #[test]
    fn non_finite_and_constant_pixels_are_found() {
        let image = |pixels: Vec<f32>| {
            Batch::Image(lora_core::batch::ImageBatch {
                batch_size: 2,
                channels: 1,
                height: 1,
                width: 2,
                pixels,
                labels: vec![0, 1],
                soft_labels: None,
            })
        };
        let f = check_batch(&image(vec![0.1, f32::NAN, 0.3, f32::INFINITY]), 0, 2);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].message.contains("2 input values are NaN or infinite"));
        let f = check_batch(&image(vec![0.5; 4]), 0, 2);
        assert!(f[0].message.starts_with("constant inputs"), "{f:?}");
        assert!(check_batch(&image(vec![0.1, 0.2, 0.3, 0.4]), 0, 2).is_empty());
    }

    #[test]
    fn constant_inputs_and_bad_labels_are_found() {
        let f = check_batch(&text(vec![5, 6, 5, 6], 2, vec![0, 1]), 0, 2);
        assert_eq!(f.len(), 1);
        assert!(f[0].message.starts_with("constant inputs"));
        let f = check_batch(&text(vec![5, 6, 7, 8], 2, vec![0, 3]), 1, 2);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(check_batch(&text(vec![5, 6, 7, 8], 2, vec![0, 1]), 0, 2).is_empty());
    }
}
