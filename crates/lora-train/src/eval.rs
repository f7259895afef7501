//! `[eval] type = "classification"`: loss, accuracy, macro-F1 and the confusion matrix.

use std::collections::BTreeMap;

use lora_core::adapter::AdapterModel;
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::inventory;
use lora_core::registry::{EvaluatorEntry, MetricEntry, entries};
use lora_core::stage::{Dataset, EvalReport, EvalStage};
use lora_core::{Error, Result, Task};
use serde::{Deserialize, Serialize};

use crate::metrics::Confusion;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClassificationEvalConfig {
    /// Evaluate every this many optimizer steps during training; 0 evaluates only at the end.
    #[serde(default)]
    pub every_steps: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Metrics to report by name (`lora plugins` lists them); the loss is always reported.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<String>,
}

fn default_batch() -> usize {
    64
}
fn default_metrics() -> Vec<String> {
    vec!["accuracy".into(), "macro_f1".into()]
}

pub struct ClassificationEval {
    pub cfg: ClassificationEvalConfig,
    /// The configured metrics, looked up once.
    pub metrics: Vec<&'static MetricEntry>,
}

impl EvalStage for ClassificationEval {
    fn resolved(&self) -> serde_json::Value {
        crate::with_type("classification", &self.cfg)
    }

    fn interval(&self) -> usize {
        self.cfg.every_steps
    }

    fn evaluate(&self, model: &dyn AdapterModel, data: &dyn Dataset, task: &Task) -> Result<EvalReport> {
        let label_names = classes_of(task)?;
        let (confusion, loss_sum) = self.sums(model, data, label_names.len())?;
        Ok(self.report(label_names, &confusion, loss_sum))
    }

    /// Each process scores its part; the loss sum and the confusion matrix are summed.
    fn evaluate_reduced(
        &self,
        model: &dyn AdapterModel,
        _full: &dyn Dataset,
        shard: &dyn Dataset,
        task: &Task,
        reduce: &mut dyn FnMut(&mut [f64]) -> Result<()>,
    ) -> Result<EvalReport> {
        let label_names = classes_of(task)?;
        let classes = label_names.len();
        let (confusion, loss_sum) = self.sums(model, shard, classes)?;
        let mut flat: Vec<f64> = std::iter::once(loss_sum)
            .chain(confusion.matrix.iter().flatten().map(|&c| c as f64))
            .collect();
        reduce(&mut flat)?;
        let mut total = Confusion::new(classes);
        for (i, &c) in flat[1..].iter().enumerate() {
            total.matrix[i / classes][i % classes] = c.round() as u64;
        }
        Ok(self.report(label_names, &total, flat[0]))
    }
}

fn classes_of(task: &Task) -> Result<&[String]> {
    match task {
        Task::Classification { labels } => Ok(labels),
        _ => Err(Error::Other(format!(
            "the `classification` evaluator cannot evaluate a {} task",
            task.name()
        ))),
    }
}

impl ClassificationEval {
    /// The confusion matrix and the loss sum over `data`.
    fn sums(&self, model: &dyn AdapterModel, data: &dyn Dataset, classes: usize) -> Result<(Confusion, f64)> {
        let mut confusion = Confusion::new(classes);
        let mut loss_sum = 0.0;
        for batch in data.batches(self.cfg.batch_size, None) {
            let batch = batch?;
            if batch.is_empty() {
                continue;
            }
            let sums = model.eval_step(&batch)?;
            if sums.predictions.len() != batch.len() {
                return Err(Error::Other(format!(
                    "model returned {} predictions for a batch of {}",
                    sums.predictions.len(),
                    batch.len()
                )));
            }
            loss_sum += sums.loss_sum;
            for (&label, &predicted) in batch.labels().iter().zip(&sums.predictions) {
                if predicted as usize >= classes {
                    return Err(Error::Other(format!(
                        "model predicted class {predicted}, but there are {classes} classes"
                    )));
                }
                confusion.add(label as usize, predicted as usize);
            }
        }
        Ok((confusion, loss_sum))
    }

    fn report(&self, label_names: &[String], confusion: &Confusion, loss_sum: f64) -> EvalReport {
        let samples = confusion.total() as usize;
        let mut metrics = BTreeMap::new();
        for m in &self.metrics {
            metrics.insert(m.name.to_string(), (m.compute)(&confusion.matrix));
        }
        let per_class: BTreeMap<&str, Option<f64>> = label_names
            .iter()
            .map(String::as_str)
            .zip(confusion.f1_per_class())
            .collect();
        EvalReport {
            samples,
            loss: loss_sum / samples.max(1) as f64,
            metrics,
            details: serde_json::json!({
                "labels": label_names,
                "confusion_matrix": confusion.matrix,
                "confusion_matrix_axes": "rows are true labels, columns are predictions",
                "f1_per_class": per_class,
            }),
        }
    }
}

fn build(c: &Component) -> std::result::Result<Box<dyn EvalStage>, Diagnostics> {
    let cfg: ClassificationEvalConfig = c.deserialize()?;
    if cfg.batch_size == 0 {
        return Err(Diagnostic::error(
            "eval::invalid-batch-size",
            "batch-size (0) must be at least 1. Valid range: 1 <= batch-size",
        )
        .at(c.value_location("batch-size"))
        .into());
    }
    let names: Vec<&str> = entries::<MetricEntry>().iter().map(|e| e.name).collect();
    let mut metrics = Vec::new();
    for name in &cfg.metrics {
        match entries::<MetricEntry>().into_iter().find(|e| e.name == name.as_str()) {
            Some(e) => metrics.push(e),
            None => {
                let d = Diagnostic::error("eval::unknown-metric", format!("unknown metric `{name}`"))
                    .at(c.value_location("metrics"));
                let help = match lora_core::diag::did_you_mean(name, names.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? available: {}", names.join(", ")),
                    None => format!("available: {}", names.join(", ")),
                };
                return Err(d.help(help).into());
            }
        }
    }
    Ok(Box::new(ClassificationEval { cfg, metrics }))
}

inventory::submit! {
    EvaluatorEntry { name: "classification", summary: "loss, the configured metrics (accuracy and macro-F1 by default) and the confusion matrix on the validation split", build }
}
