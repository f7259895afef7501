//! What a model is trained to do: the head it carries and the targets its loss
//! reads. A model stage builds a head for a [`Task`]; a batch carries its
//! [`Targets`]. Nothing here assumes one label per sequence.

use serde::{Deserialize, Serialize};

/// The head and its outputs, given to [`crate::stage::ModelStage::build`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Task {
    /// One output per class; targets are class indices or distributions over
    /// the classes (mixup, cutmix). Evaluation reports a confusion matrix.
    Classification { labels: Vec<String> },
    /// Next-token prediction over the model's own vocabulary; targets are token
    /// ids with a weight each (0 for prompt and padding tokens), and the loss
    /// is weighted by target tokens.
    CausalLm,
}

impl Task {
    pub fn classification(labels: Vec<String>) -> Self {
        Task::Classification { labels }
    }

    /// Outputs of a classification head; `None` for a task without classes.
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            Task::Classification { labels } => Some(labels.len()),
            Task::CausalLm => None,
        }
    }

    /// Class names, in index order (empty for a task without classes).
    pub fn labels(&self) -> &[String] {
        match self {
            Task::Classification { labels } => labels,
            Task::CausalLm => &[],
        }
    }

    /// The number of classes of a classification task; any other task is an
    /// error naming the architecture that cannot train it.
    pub fn require_classes(&self, architecture: &str) -> crate::Result<usize> {
        match self {
            Task::Classification { labels } if !labels.is_empty() => Ok(labels.len()),
            Task::Classification { .. } => Err(crate::Error::Data(format!(
                "{architecture}: a classification task needs at least one class"
            ))),
            other => Err(crate::Error::Other(format!(
                "{architecture} has a classification head and cannot train a {} task",
                other.name()
            ))),
        }
    }

    /// The task's name in messages and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Classification { .. } => "classification",
            Task::CausalLm => "causal-lm",
        }
    }
}

/// What a batch's loss is computed against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Targets<'a> {
    /// One class index per example.
    Classes(&'a [u32]),
    /// `[examples * classes]` target distributions, row-major.
    Soft { probs: &'a [f32], classes: usize },
    /// One target token per position (`[examples * positions]`) with a weight
    /// each; the loss is the weighted mean over positions.
    Tokens { ids: &'a [u32], weights: &'a [f32] },
}

impl Targets<'_> {
    /// What the mean loss is taken over: examples for classes and distributions,
    /// the sum of the weights for tokens. Accumulation weights micro-batches by it.
    pub fn weight(&self) -> f64 {
        match self {
            Targets::Classes(c) => c.len() as f64,
            Targets::Soft { probs, classes } => (probs.len() / (*classes).max(1)) as f64,
            Targets::Tokens { weights, .. } => weights.iter().map(|&w| w as f64).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_count_examples_or_target_tokens() {
        assert_eq!(Targets::Classes(&[0, 2, 1]).weight(), 3.0);
        let probs = [0.5, 0.5, 0.0, 1.0];
        assert_eq!(
            Targets::Soft {
                probs: &probs,
                classes: 2
            }
            .weight(),
            2.0
        );
        let ids = [5, 6, 7, 8];
        let weights = [0.0, 1.0, 1.0, 0.0];
        assert_eq!(
            Targets::Tokens {
                ids: &ids,
                weights: &weights
            }
            .weight(),
            2.0
        );
    }

    #[test]
    fn classification_exposes_its_classes() {
        let t = Task::classification(vec!["neg".into(), "pos".into()]);
        assert_eq!(t.num_classes(), Some(2));
        assert_eq!(t.labels(), ["neg", "pos"]);
        assert_eq!(Task::CausalLm.num_classes(), None);
    }
}
