//! Turns training events and system samples into named series: the one
//! vocabulary that the dashboard, the Prometheus endpoint and the report share.
//!
//! A series key is Prometheus-shaped, `name` or `name{module="..."}`, so the
//! endpoint prints keys as they are and the dashboard draws one chart per
//! `name` with one line per label.

use std::collections::{BTreeMap, HashMap};

use lora_core::events::{StepMetrics, TrainEvent};
use serde::Serialize;

/// One update: the figures that changed at one moment of the run. Series
/// are named by index into [`Recorder::names`], so that a long run's history
/// costs about 12 bytes a figure instead of a map with a string per figure.
#[derive(Debug, Clone)]
pub struct Point {
    /// Seconds since the run started.
    pub t: f64,
    /// Optimizer step at that moment.
    pub step: usize,
    pub values: Vec<(u32, f64)>,
    /// Index into [`Recorder::interventions`] when this point announces one.
    pub intervention: Option<usize>,
}

/// A callback's or check's action, as shown on the dashboard and in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Intervention {
    pub step: usize,
    pub t: f64,
    pub source: String,
    pub action: String,
    pub message: String,
}

/// The help line of each metric name, for Prometheus and the dashboard's titles.
pub fn help(name: &str) -> &'static str {
    match name {
        "train_loss" => "training loss of the last optimizer step",
        "train_loss_smoothed" => "training loss, exponential moving average",
        "eval_loss" => "evaluation loss on the validation split",
        "learning_rate" => "learning rate of the last step",
        "grad_norm" => "global gradient norm before clipping",
        "update_ratio" => "global ||update|| / ||weights|| of the last step",
        "lora_a_weight_norm" => "Frobenius norm of each LoRA A",
        "lora_b_weight_norm" => "Frobenius norm of each LoRA B",
        "lora_a_grad_norm" => "gradient norm of each LoRA A",
        "lora_b_grad_norm" => "gradient norm of each LoRA B",
        "module_update_ratio" => "||update|| / ||weights|| of each LoRA module",
        "effective_rank" => "entropy-based effective rank of each B*A",
        "samples_per_second" => "training samples per second",
        "tokens_per_second" => "training tokens per second",
        "step_data_seconds" => "seconds of the last step spent on data",
        "step_forward_backward_seconds" => "seconds of the last step in forward and backward",
        "step_optimizer_seconds" => "seconds of the last step in clipping and the optimizer",
        "epoch" => "current epoch (0-based)",
        "step" => "optimizer steps taken",
        "total_steps" => "optimizer steps planned",
        "eta_seconds" => "estimated seconds until training ends",
        "process_cpu_percent" => "CPU use of this process (100 = one core)",
        "system_cpu_percent" => "CPU use of the machine (mean over cores)",
        "process_rss_bytes" => "resident memory of this process",
        "system_memory_used_bytes" => "memory in use on the machine",
        "system_memory_total_bytes" => "memory of the machine",
        "gpu_utilization_percent" => "GPU utilisation",
        "gpu_memory_used_bytes" => "GPU memory in use",
        "gpu_memory_total_bytes" => "GPU memory",
        "interventions_total" => "callback and check actions so far",
        "rank_step_seconds" => "seconds of the last step on each process",
        "rank_bytes_sent" => "bytes each process sent in the last step's collectives",
        "rank_comm_seconds" => "seconds of the last step each process spent in collectives",
        n if n.starts_with("eval_") => "evaluation metric on the validation split",
        _ => "",
    }
}

/// The metric name of a series key (`name{...}` -> `name`).
pub fn base_name(key: &str) -> &str {
    key.split('{').next().unwrap_or(key)
}

/// Series keys must be valid Prometheus names; evaluator metrics may not be.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect()
}

fn labelled(name: &str, label: &str, value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    format!("{name}{{{label}=\"{escaped}\"}}")
}

/// Everything seen so far; the source of every view.
#[derive(Debug, Default)]
pub struct Recorder {
    smoothing: f64,
    smoothed: Option<f64>,
    /// Every series key seen, in order of first appearance, and its index.
    names: Vec<String>,
    ids: HashMap<String, u32>,
    pub step: usize,
    pub epoch: usize,
    pub total_steps: usize,
    pub elapsed_s: f64,
    pub history: Vec<Point>,
    pub latest: BTreeMap<String, f64>,
    pub interventions: Vec<Intervention>,
    pub finished: bool,
}

impl Recorder {
    pub fn new(smoothing: f64) -> Self {
        Self {
            smoothing,
            ..Default::default()
        }
    }

    /// Records an event; says whether it made a point.
    pub fn event(&mut self, event: &TrainEvent) -> bool {
        let mut values = BTreeMap::new();
        let t;
        match event {
            TrainEvent::Start { total_steps, .. } => {
                self.total_steps = *total_steps;
                t = 0.0;
                values.insert("total_steps".into(), *total_steps as f64);
                values.insert("step".into(), 0.0);
                values.insert("epoch".into(), 0.0);
                values.insert("interventions_total".into(), 0.0);
            }
            TrainEvent::Step(m) => {
                t = m.elapsed_s;
                self.step = m.step;
                self.epoch = m.epoch;
                self.step_values(m, &mut values);
            }
            TrainEvent::Eval { step, report, .. } => {
                t = self.elapsed_s;
                self.step = *step;
                values.insert("eval_loss".into(), report.loss);
                for (k, v) in &report.metrics {
                    values.insert(format!("eval_{}", sanitize(k)), *v);
                }
            }
            TrainEvent::EpochEnd { epoch, step } => {
                t = self.elapsed_s;
                self.step = *step;
                values.insert("epoch".into(), (*epoch + 1) as f64);
            }
            TrainEvent::NonFinite { .. } => return false,
            TrainEvent::Intervention {
                step,
                source,
                action,
                message,
                elapsed_s,
            } => {
                self.interventions.push(Intervention {
                    step: *step,
                    t: *elapsed_s,
                    source: source.clone(),
                    action: action.clone(),
                    message: message.clone(),
                });
                t = *elapsed_s;
                values.insert("interventions_total".into(), self.interventions.len() as f64);
            }
            TrainEvent::End { step, elapsed_s, .. } => {
                t = *elapsed_s;
                self.step = *step;
                self.finished = true;
                values.insert("eta_seconds".into(), 0.0);
            }
        }
        self.elapsed_s = self.elapsed_s.max(t);
        let intervention = matches!(event, TrainEvent::Intervention { .. }).then(|| self.interventions.len() - 1);
        self.push(t, values, intervention);
        true
    }

    fn step_values(&mut self, m: &StepMetrics, v: &mut BTreeMap<String, f64>) {
        let smoothed = match self.smoothed {
            Some(s) => self.smoothing * s + (1.0 - self.smoothing) * m.loss,
            None => m.loss,
        };
        self.smoothed = Some(smoothed);
        let eta = m.elapsed_s / m.step.max(1) as f64 * m.total_steps.saturating_sub(m.step) as f64;
        for (k, x) in [
            ("train_loss", m.loss),
            ("train_loss_smoothed", smoothed),
            ("learning_rate", m.lr),
            ("grad_norm", m.grad_norm),
            ("update_ratio", m.update_ratio),
            ("samples_per_second", m.samples_per_s),
            ("tokens_per_second", m.tokens_per_s),
            ("step_data_seconds", m.data_s),
            ("step_forward_backward_seconds", m.forward_backward_s),
            ("step_optimizer_seconds", m.optimizer_s),
            ("epoch", m.epoch as f64),
            ("step", m.step as f64),
            ("total_steps", m.total_steps as f64),
            ("eta_seconds", eta),
        ] {
            v.insert(k.to_string(), x);
        }
        for s in &m.modules {
            for (k, x) in [
                ("lora_a_weight_norm", s.a_weight_norm),
                ("lora_b_weight_norm", s.b_weight_norm),
                ("lora_a_grad_norm", s.a_grad_norm),
                ("lora_b_grad_norm", s.b_grad_norm),
                ("module_update_ratio", s.update_ratio),
                ("effective_rank", s.effective_rank),
            ] {
                v.insert(labelled(k, "module", &s.module), x);
            }
        }
        for r in &m.ranks {
            let rank = r.rank.to_string();
            v.insert(labelled("rank_step_seconds", "rank", &rank), r.step_s);
            v.insert(labelled("rank_bytes_sent", "rank", &rank), r.bytes_sent);
            v.insert(labelled("rank_comm_seconds", "rank", &rank), r.comm_s);
        }
    }

    /// Records system figures (CPU, memory, GPU) sampled at `t` seconds.
    pub fn system(&mut self, t: f64, sample: Vec<(String, f64)>) {
        self.push(t, sample.into_iter().collect(), None);
    }

    fn id(&mut self, key: &str) -> u32 {
        if let Some(&i) = self.ids.get(key) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(key.to_string());
        self.ids.insert(key.to_string(), i);
        i
    }

    fn push(&mut self, t: f64, values: BTreeMap<String, f64>, intervention: Option<usize>) {
        let mut compact = Vec::with_capacity(values.len());
        for (k, v) in values {
            compact.push((self.id(&k), v));
            self.latest.insert(k, v);
        }
        self.history.push(Point {
            t,
            step: self.step,
            values: compact,
            intervention,
        });
    }

    /// The name of a series index.
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }

    /// A point as the JSON object that the event stream sends:
    /// `{"t", "step", "values": {key: value}, "intervention"?}`.
    pub fn to_json(&self, p: &Point) -> String {
        let values: serde_json::Map<String, serde_json::Value> = p
            .values
            .iter()
            .map(|(k, v)| (self.name(*k).to_string(), (*v).into()))
            .collect();
        let mut m = serde_json::json!({"t": p.t, "step": p.step, "values": values});
        if let Some(i) = p.intervention.and_then(|i| self.interventions.get(i)) {
            m["intervention"] = serde_json::json!(i);
        }
        m.to_string()
    }

    /// Every value of one series, as (step, t, value).
    pub fn series(&self, key: &str) -> Vec<(usize, f64, f64)> {
        let Some(&id) = self.ids.get(key) else {
            return Vec::new();
        };
        self.history
            .iter()
            .filter_map(|p| p.values.iter().find(|(k, _)| *k == id).map(|(_, v)| (p.step, p.t, *v)))
            .collect()
    }

    /// Every series key seen, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.latest.keys().cloned().collect()
    }
}

/// A GPU's label for series keys.
pub fn gpu_key(name: &str, index: usize) -> String {
    labelled(name, "gpu", &index.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_share_their_series_names() {
        let mut r = Recorder::new(0.5);
        r.system(0.5, vec![("process_rss_bytes".into(), 1.0)]);
        r.system(
            1.5,
            vec![("process_rss_bytes".into(), 2.0), ("system_cpu_percent".into(), 50.0)],
        );
        assert_eq!(r.names.len(), 2);
        assert_eq!(r.series("process_rss_bytes"), vec![(0, 0.5, 1.0), (0, 1.5, 2.0)]);
        assert!(r.series("nothing").is_empty());
        let json: serde_json::Value = serde_json::from_str(&r.to_json(&r.history[1])).unwrap();
        assert_eq!(json["values"]["system_cpu_percent"], 50.0);
        assert_eq!(r.latest["process_rss_bytes"], 2.0);
    }

    #[test]
    fn keys_are_prometheus_shaped() {
        assert_eq!(
            labelled("effective_rank", "module", "a\"b"),
            "effective_rank{module=\"a\\\"b\"}"
        );
        assert_eq!(base_name("effective_rank{module=\"x\"}"), "effective_rank");
        assert_eq!(sanitize("macro-f1"), "macro_f1");
    }
}
