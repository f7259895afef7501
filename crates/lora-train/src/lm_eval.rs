//! `[eval] type = "causal-lm"`: loss, perplexity and token accuracy of a causal
//! language model on the validation split, over the target tokens (weighted).

use std::collections::BTreeMap;

use lora_core::AdapterModel;
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::inventory;
use lora_core::registry::EvaluatorEntry;
use lora_core::stage::{Dataset, EvalReport, EvalStage};
use lora_core::{Error, Result, Task};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CausalLmEvalConfig {
    /// Evaluate every this many optimizer steps during training; 0 evaluates only at the end.
    #[serde(default)]
    pub every_steps: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_batch() -> usize {
    8
}

pub struct CausalLmEval {
    pub cfg: CausalLmEvalConfig,
}

/// The report of token sums: the mean loss per target token, its perplexity and the token accuracy.
pub fn report(sequences: usize, loss_sum: f64, weight: f64, correct: f64) -> EvalReport {
    let loss = loss_sum / weight.max(f64::MIN_POSITIVE);
    EvalReport {
        samples: sequences,
        loss,
        metrics: BTreeMap::from([
            ("perplexity".to_string(), loss.exp()),
            ("token_accuracy".to_string(), correct / weight.max(f64::MIN_POSITIVE)),
        ]),
        details: serde_json::json!({ "target_tokens": weight }),
    }
}

impl EvalStage for CausalLmEval {
    fn resolved(&self) -> serde_json::Value {
        crate::with_type("causal-lm", &self.cfg)
    }

    fn interval(&self) -> usize {
        self.cfg.every_steps
    }

    fn evaluate(&self, model: &dyn AdapterModel, data: &dyn Dataset, task: &Task) -> Result<EvalReport> {
        if *task != Task::CausalLm {
            return Err(Error::Other(format!(
                "the `causal-lm` evaluator cannot evaluate a {} task",
                task.name()
            )));
        }
        let (mut loss_sum, mut weight, mut correct) = (0.0, 0.0, 0.0);
        for batch in data.batches(self.cfg.batch_size, None) {
            let sums = model.eval_step(&batch?)?;
            loss_sum += sums.loss_sum;
            weight += sums.weight;
            correct += sums.correct;
        }
        Ok(report(data.len(), loss_sum, weight, correct))
    }
}

fn build(c: &Component) -> std::result::Result<Box<dyn EvalStage>, Diagnostics> {
    let cfg: CausalLmEvalConfig = c.deserialize()?;
    if cfg.batch_size == 0 {
        return Err(Diagnostic::error(
            "eval::invalid-batch-size",
            "batch-size (0) must be at least 1. Valid range: 1 <= batch-size",
        )
        .at(c.value_location("batch-size"))
        .into());
    }
    Ok(Box::new(CausalLmEval { cfg }))
}

inventory::submit! {
    EvaluatorEntry { name: "causal-lm", summary: "loss, perplexity and token accuracy of a causal language model over the validation split's target tokens", build }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_is_the_exponential_of_the_mean_token_loss() {
        let r = report(3, 6.0, 4.0, 1.0);
        assert_eq!(r.loss, 1.5);
        assert!((r.metrics["perplexity"] - 1.5f64.exp()).abs() < 1e-12);
        assert_eq!(r.metrics["token_accuracy"], 0.25);
    }
}
