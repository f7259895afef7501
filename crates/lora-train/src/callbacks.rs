//! Convergence and anomaly callbacks, registered as `[callbacks.NAME]`:
//! `early-stopping`, `loss-plateau`, `nan-rollback` and `divergence`.
//! Each answers events with a [`Control`]; the loop acts on it and logs an
//! intervention that the JSONL log and the dashboard show.

use lora_core::Result;
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::events::{Callback, Control, NonFiniteKind, TrainEvent};
use lora_core::inventory;
use lora_core::registry::CallbackEntry;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A callback's saved state read back, or an error naming the callback.
fn load<T: DeserializeOwned>(name: &str, state: &Value) -> Result<T> {
    serde_json::from_value(state.clone())
        .map_err(|e| lora_core::Error::Other(format!("cannot restore the state of callback `{name}`: {e}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Min,
    Max,
}

/// `[callbacks.early-stopping]`: stop when an evaluation metric has not improved
/// by `min-delta` for `patience` evaluations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EarlyStoppingConfig {
    /// `loss` (the evaluation loss) or a metric of the evaluator (`accuracy`, `macro_f1`, ...).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// `min` or `max`; defaults to `min` for `loss`, `max` otherwise.
    pub mode: Option<Mode>,
    #[serde(default = "default_patience")]
    pub patience: usize,
    #[serde(default)]
    pub min_delta: f64,
}

fn default_metric() -> String {
    "loss".into()
}
fn default_patience() -> usize {
    3
}

pub struct EarlyStopping {
    cfg: EarlyStoppingConfig,
    mode: Mode,
    best: Option<f64>,
    bad: usize,
}

impl EarlyStopping {
    pub fn new(cfg: EarlyStoppingConfig) -> Self {
        let mode = cfg
            .mode
            .unwrap_or(if cfg.metric == "loss" { Mode::Min } else { Mode::Max });
        Self {
            cfg,
            mode,
            best: None,
            bad: 0,
        }
    }
}

impl Callback for EarlyStopping {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        self.control(event).map(|_| ())
    }

    fn name(&self) -> &str {
        "early-stopping"
    }

    fn state(&self) -> Value {
        json!({ "best": self.best, "bad": self.bad })
    }

    fn load_state(&mut self, state: &Value) -> Result<()> {
        #[derive(Deserialize)]
        struct S {
            best: Option<f64>,
            bad: usize,
        }
        let S { best, bad } = load(self.name(), state)?;
        (self.best, self.bad) = (best, bad);
        Ok(())
    }

    fn control(&mut self, event: &TrainEvent) -> Result<Control> {
        let TrainEvent::Eval { step, report, .. } = event else {
            return Ok(Control::Continue);
        };
        let value = match report.value(&self.cfg.metric) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Control::Fail {
                    reason: format!("early-stopping: {e}"),
                });
            }
        };
        let improved = match (self.best, self.mode) {
            (None, _) => true,
            (Some(b), Mode::Min) => value < b - self.cfg.min_delta,
            (Some(b), Mode::Max) => value > b + self.cfg.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.bad = 0;
            return Ok(Control::Continue);
        }
        self.bad += 1;
        if self.bad >= self.cfg.patience {
            return Ok(Control::Stop {
                reason: format!(
                    "early stopping at step {step}: {} = {value:.6} has not improved on {:.6} (min-delta {}) for {} evaluation(s)",
                    self.cfg.metric,
                    self.best.unwrap_or(value),
                    self.cfg.min_delta,
                    self.bad
                ),
            });
        }
        Ok(Control::Continue)
    }
}

/// `[callbacks.loss-plateau]`: stop when, after `after-epochs` epochs, the
/// epoch's mean training loss is still above `bound`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PlateauConfig {
    pub bound: f64,
    #[serde(default = "one")]
    pub after_epochs: usize,
}

fn one() -> usize {
    1
}

pub struct LossPlateau {
    cfg: PlateauConfig,
    sum: f64,
    count: usize,
}

impl Callback for LossPlateau {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        self.control(event).map(|_| ())
    }

    fn name(&self) -> &str {
        "loss-plateau"
    }

    fn state(&self) -> Value {
        json!({ "sum": self.sum, "count": self.count })
    }

    fn load_state(&mut self, state: &Value) -> Result<()> {
        #[derive(Deserialize)]
        struct S {
            sum: f64,
            count: usize,
        }
        let S { sum, count } = load(self.name(), state)?;
        (self.sum, self.count) = (sum, count);
        Ok(())
    }

    fn control(&mut self, event: &TrainEvent) -> Result<Control> {
        match event {
            TrainEvent::Step(m) => {
                self.sum += m.loss;
                self.count += 1;
            }
            TrainEvent::EpochEnd { epoch, step } => {
                let mean = self.sum / self.count.max(1) as f64;
                self.sum = 0.0;
                self.count = 0;
                if epoch + 1 >= self.cfg.after_epochs && mean > self.cfg.bound {
                    return Ok(Control::Stop {
                        reason: format!(
                            "loss plateau at step {step}: mean training loss of epoch {} is {mean:.6}, still above the bound {} after {} epoch(s)",
                            epoch + 1,
                            self.cfg.bound,
                            epoch + 1
                        ),
                    });
                }
            }
            _ => {}
        }
        Ok(Control::Continue)
    }
}

/// `[callbacks.nan-rollback]`: on a NaN or infinite loss, gradient or
/// parameter, roll back to the last state that gave a finite loss, scale the
/// learning rate by `lr-factor` and go on; after `max-retries`, fail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NanRollbackConfig {
    #[serde(default = "half")]
    pub lr_factor: f64,
    #[serde(default = "three")]
    pub max_retries: usize,
}

fn half() -> f64 {
    0.5
}
fn three() -> usize {
    3
}

pub struct NanRollback {
    cfg: NanRollbackConfig,
    retries: usize,
}

impl Callback for NanRollback {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        self.control(event).map(|_| ())
    }

    fn name(&self) -> &str {
        "nan-rollback"
    }

    fn can_roll_back(&self) -> bool {
        true
    }

    fn state(&self) -> Value {
        json!({ "retries": self.retries })
    }

    fn load_state(&mut self, state: &Value) -> Result<()> {
        #[derive(Deserialize)]
        struct S {
            retries: usize,
        }
        self.retries = load::<S>(self.name(), state)?.retries;
        Ok(())
    }

    fn control(&mut self, event: &TrainEvent) -> Result<Control> {
        let TrainEvent::NonFinite { step, what, .. } = event else {
            return Ok(Control::Continue);
        };
        let what = match what {
            NonFiniteKind::Loss => "the loss",
            NonFiniteKind::Gradients => "a gradient",
            NonFiniteKind::Parameters => "a parameter",
        };
        if self.retries >= self.cfg.max_retries {
            return Ok(Control::Fail {
                reason: format!(
                    "{what} became NaN or infinite at step {step} after {} rollback(s) (max-retries {}), each scaling the learning rate by {}; giving up without saving an adapter. Lower [train.optimizer] lr or [train] max-grad-norm",
                    self.retries, self.cfg.max_retries, self.cfg.lr_factor
                ),
            });
        }
        self.retries += 1;
        Ok(Control::Rollback {
            lr_factor: self.cfg.lr_factor,
            reason: format!(
                "{what} became NaN or infinite at step {step}: rollback {} of {}, learning rate scaled by {}",
                self.retries, self.cfg.max_retries, self.cfg.lr_factor
            ),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DivergenceAction {
    Fail,
    Stop,
    Rollback,
}

/// `[callbacks.divergence]`: the loss ran away. Fires when the step loss stays
/// above `factor` times the best smoothed loss for `patience` steps (after
/// `warmup-steps`), or the gradient norm exceeds `max-grad-norm` when set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DivergenceConfig {
    #[serde(default = "ten")]
    pub factor: f64,
    #[serde(default = "five")]
    pub patience: usize,
    #[serde(default = "five")]
    pub warmup_steps: usize,
    pub max_grad_norm: Option<f64>,
    #[serde(default = "fail")]
    pub action: DivergenceAction,
    #[serde(default = "half")]
    pub lr_factor: f64,
}

fn ten() -> f64 {
    10.0
}
fn five() -> usize {
    5
}
fn fail() -> DivergenceAction {
    DivergenceAction::Fail
}

pub struct Divergence {
    cfg: DivergenceConfig,
    ema: Option<f64>,
    best: Option<f64>,
    over: usize,
}

impl Callback for Divergence {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        self.control(event).map(|_| ())
    }

    fn name(&self) -> &str {
        "divergence"
    }

    fn can_roll_back(&self) -> bool {
        self.cfg.action == DivergenceAction::Rollback
    }

    fn state(&self) -> Value {
        json!({ "ema": self.ema, "best": self.best, "over": self.over })
    }

    fn load_state(&mut self, state: &Value) -> Result<()> {
        #[derive(Deserialize)]
        struct S {
            ema: Option<f64>,
            best: Option<f64>,
            over: usize,
        }
        let S { ema, best, over } = load(self.name(), state)?;
        (self.ema, self.best, self.over) = (ema, best, over);
        Ok(())
    }

    fn control(&mut self, event: &TrainEvent) -> Result<Control> {
        let TrainEvent::Step(m) = event else {
            return Ok(Control::Continue);
        };
        let ema = self.ema.map_or(m.loss, |e| 0.9 * e + 0.1 * m.loss);
        self.ema = Some(ema);
        let mut why = None;
        if let Some(limit) = self.cfg.max_grad_norm
            && m.grad_norm > limit
        {
            why = Some(format!("gradient norm {:.4} exceeds {limit}", m.grad_norm));
        }
        if m.step > self.cfg.warmup_steps {
            let best = self.best.map_or(ema, |b: f64| b.min(ema));
            self.best = Some(best);
            if m.loss > self.cfg.factor * best {
                self.over += 1;
                if self.over >= self.cfg.patience {
                    why = Some(format!(
                        "loss {:.4} has stayed above {} x the best smoothed loss {best:.4} for {} step(s)",
                        m.loss, self.cfg.factor, self.over
                    ));
                }
            } else {
                self.over = 0;
            }
        }
        let Some(why) = why else { return Ok(Control::Continue) };
        self.over = 0;
        let reason = format!("divergence at step {}: {why}", m.step);
        Ok(match self.cfg.action {
            DivergenceAction::Fail => Control::Fail {
                reason: format!("{reason}; nothing saved. Lower [train.optimizer] lr"),
            },
            DivergenceAction::Stop => Control::Stop { reason },
            DivergenceAction::Rollback => Control::Rollback {
                lr_factor: self.cfg.lr_factor,
                reason,
            },
        })
    }
}

fn positive(c: &Component, key: &str, value: f64, diags: &mut Diagnostics) {
    if !(value > 0.0 && value.is_finite()) {
        diags.push(
            Diagnostic::error(
                "callbacks::invalid-value",
                format!("[{}] {key} ({value}) must be finite and > 0", c.path.join(".")),
            )
            .at(c.value_location(key)),
        );
    }
}

fn finish<T>(diags: Diagnostics, cb: T) -> std::result::Result<Box<dyn Callback>, Diagnostics>
where
    T: Callback + 'static,
{
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(Box::new(cb))
    }
}

fn build_early_stopping(c: &Component) -> std::result::Result<Box<dyn Callback>, Diagnostics> {
    let cfg: EarlyStoppingConfig = c.deserialize()?;
    let mut diags = Diagnostics::default();
    if cfg.patience == 0 {
        diags.push(
            Diagnostic::error(
                "callbacks::invalid-value",
                "[callbacks] patience (0) must be at least 1. Valid range: 1 <= patience",
            )
            .at(c.value_location("patience")),
        );
    }
    if cfg.min_delta.is_nan() || cfg.min_delta < 0.0 {
        diags.push(
            Diagnostic::error(
                "callbacks::invalid-value",
                format!("min-delta ({}) must be >= 0", cfg.min_delta),
            )
            .at(c.value_location("min-delta")),
        );
    }
    finish(diags, EarlyStopping::new(cfg))
}

fn build_plateau(c: &Component) -> std::result::Result<Box<dyn Callback>, Diagnostics> {
    let cfg: PlateauConfig = c.deserialize()?;
    let mut diags = Diagnostics::default();
    positive(c, "bound", cfg.bound, &mut diags);
    finish(
        diags,
        LossPlateau {
            cfg,
            sum: 0.0,
            count: 0,
        },
    )
}

fn build_nan(c: &Component) -> std::result::Result<Box<dyn Callback>, Diagnostics> {
    let cfg: NanRollbackConfig = c.deserialize()?;
    let mut diags = Diagnostics::default();
    positive(c, "lr-factor", cfg.lr_factor, &mut diags);
    finish(diags, NanRollback { cfg, retries: 0 })
}

fn build_divergence(c: &Component) -> std::result::Result<Box<dyn Callback>, Diagnostics> {
    let cfg: DivergenceConfig = c.deserialize()?;
    let mut diags = Diagnostics::default();
    positive(c, "factor", cfg.factor, &mut diags);
    positive(c, "lr-factor", cfg.lr_factor, &mut diags);
    if let Some(g) = cfg.max_grad_norm {
        positive(c, "max-grad-norm", g, &mut diags);
    }
    finish(
        diags,
        Divergence {
            cfg,
            ema: None,
            best: None,
            over: 0,
        },
    )
}

inventory::submit! {
    CallbackEntry { name: "early-stopping", summary: "stop when an evaluation metric stops improving (metric, mode, patience, min-delta)", build: build_early_stopping }
}
inventory::submit! {
    CallbackEntry { name: "loss-plateau", summary: "stop when the epoch's training loss stays above a bound after N epochs", build: build_plateau }
}
inventory::submit! {
    CallbackEntry { name: "nan-rollback", summary: "on NaN/Inf: roll back to the last good state, scale the learning rate, bounded retries", build: build_nan }
}
inventory::submit! {
    CallbackEntry { name: "divergence", summary: "fail, stop or roll back when the loss runs away or the gradient norm explodes", build: build_divergence }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lora_core::events::StepMetrics;
    use lora_core::stage::EvalReport;

    use super::*;

    fn eval(step: usize, loss: f64) -> TrainEvent {
        TrainEvent::Eval {
            step,
            epoch: 0,
            report: EvalReport {
                samples: 1,
                loss,
                metrics: BTreeMap::from([("accuracy".to_string(), 1.0 - loss)]),
                details: serde_json::Value::Null,
            },
        }
    }

    pub fn step(step: usize, loss: f64) -> TrainEvent {
        TrainEvent::Step(StepMetrics {
            step,
            total_steps: 100,
            epoch: 0,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            samples: 1,
            tokens: 1,
            elapsed_s: 0.0,
            samples_per_s: 0.0,
            tokens_per_s: 0.0,
            data_s: 0.0,
            forward_backward_s: 0.0,
            optimizer_s: 0.0,
            update_ratio: 0.0,
            modules: Vec::new(),
            ranks: Vec::new(),
        })
    }

    #[test]
    fn early_stopping_waits_for_patience() {
        let mut cb = EarlyStopping::new(EarlyStoppingConfig {
            metric: "accuracy".into(),
            mode: None,
            patience: 2,
            min_delta: 0.01,
        });
        assert_eq!(cb.control(&eval(1, 0.5)).unwrap(), Control::Continue);
        // accuracy 0.505: not better by min-delta.
        assert_eq!(cb.control(&eval(2, 0.495)).unwrap(), Control::Continue);
        assert!(matches!(cb.control(&eval(3, 0.5)).unwrap(), Control::Stop { .. }));
        let mut missing = EarlyStopping::new(EarlyStoppingConfig {
            metric: "f2".into(),
            mode: None,
            patience: 1,
            min_delta: 0.0,
        });
        assert!(matches!(missing.control(&eval(1, 0.5)).unwrap(), Control::Fail { .. }));
    }

    #[test]
    fn plateau_stops_after_the_epoch_count() {
        let mut cb = LossPlateau {
            cfg: PlateauConfig {
                bound: 1.0,
                after_epochs: 2,
            },
            sum: 0.0,
            count: 0,
        };
        cb.control(&step(1, 2.0)).unwrap();
        assert_eq!(
            cb.control(&TrainEvent::EpochEnd { epoch: 0, step: 1 }).unwrap(),
            Control::Continue
        );
        cb.control(&step(2, 2.0)).unwrap();
        assert!(matches!(
            cb.control(&TrainEvent::EpochEnd { epoch: 1, step: 2 }).unwrap(),
            Control::Stop { .. }
        ));
    }

    #[test]
    fn nan_rollback_retries_then_fails() {
        let mut cb = NanRollback {
            cfg: NanRollbackConfig {
                lr_factor: 0.1,
                max_retries: 1,
            },
            retries: 0,
        };
        let nan = TrainEvent::NonFinite {
            step: 3,
            epoch: 0,
            what: NonFiniteKind::Loss,
            elapsed_s: 0.0,
        };
        assert!(matches!(cb.control(&nan).unwrap(), Control::Rollback { lr_factor, .. } if lr_factor == 0.1));
        assert!(matches!(cb.control(&nan).unwrap(), Control::Fail { .. }));
    }

    #[test]
    fn divergence_needs_patience_after_warmup() {
        let mut cb = Divergence {
            cfg: DivergenceConfig {
                factor: 2.0,
                patience: 2,
                warmup_steps: 1,
                max_grad_norm: None,
                action: DivergenceAction::Stop,
                lr_factor: 0.5,
            },
            ema: None,
            best: None,
            over: 0,
        };
        assert_eq!(cb.control(&step(1, 1.0)).unwrap(), Control::Continue);
        assert_eq!(cb.control(&step(2, 1.0)).unwrap(), Control::Continue);
        assert_eq!(cb.control(&step(3, 5.0)).unwrap(), Control::Continue);
        assert!(matches!(cb.control(&step(4, 5.0)).unwrap(), Control::Stop { .. }));
    }

    #[test]
    fn a_restored_callback_continues_where_its_state_was_taken() {
        let cfg = || EarlyStoppingConfig {
            metric: "accuracy".into(),
            mode: None,
            patience: 2,
            min_delta: 0.0,
        };
        let mut first = EarlyStopping::new(cfg());
        first.control(&eval(1, 0.5)).unwrap();
        first.control(&eval(2, 0.6)).unwrap();
        let mut resumed = EarlyStopping::new(cfg());
        resumed.load_state(&first.state()).unwrap();
        // The state holds one bad evaluation already: the second one stops.
        // Without it, the first evaluation after the restore would set a new best.
        assert!(matches!(resumed.control(&eval(3, 0.6)).unwrap(), Control::Stop { .. }));
        let mut fresh = EarlyStopping::new(cfg());
        assert_eq!(fresh.control(&eval(3, 0.6)).unwrap(), Control::Continue);
        assert!(resumed.load_state(&json!({ "best": "x" })).is_err());
    }
}
