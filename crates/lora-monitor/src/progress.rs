//! A progress bar with loss, learning rate and throughput. On a terminal it
//! redraws in place; elsewhere (CI, logs) it prints a line every few steps.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lora_core::Result;
use lora_core::events::{Callback, TrainEvent};

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Smoothed loss for display (exponential moving average).
    ema: Option<f64>,
    log_every: usize,
}

impl Progress {
    pub fn new(log_every: usize) -> Self {
        Self {
            bar: None,
            ema: None,
            log_every: log_every.max(1),
        }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

impl Callback for Progress {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        match event {
            TrainEvent::Start {
                total_steps,
                epochs,
                train_samples,
                trainable_parameters,
            } => {
                let bar = ProgressBar::with_draw_target(
                    Some(*total_steps as u64),
                    if std::io::stderr().is_terminal() {
                        ProgressDrawTarget::stderr()
                    } else {
                        ProgressDrawTarget::hidden()
                    },
                );
                bar.set_style(
                    ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                        .expect("valid template"),
                );
                self.bar = Some(bar);
                self.say(format!(
                    "training: {total_steps} steps, {epochs} epoch(s), {train_samples} examples, {trainable_parameters} trainable parameters"
                ));
            }
            TrainEvent::Step(m) => {
                let ema = match self.ema {
                    Some(e) => 0.9 * e + 0.1 * m.loss,
                    None => m.loss,
                };
                self.ema = Some(ema);
                // An image counts as one unit of work, so tokens/s would only repeat
                // samples/s; text always has more tokens than samples ([CLS], [SEP]).
                let tokens = if m.tokens > m.samples {
                    format!(" {:.0} tokens/s", m.tokens_per_s)
                } else {
                    String::new()
                };
                let msg = format!(
                    "loss {ema:.4} lr {:.2e} |g| {:.3} {:.1} samples/s{tokens}",
                    m.lr, m.grad_norm, m.samples_per_s
                );
                if let Some(bar) = &self.bar {
                    bar.set_position(m.step as u64);
                    bar.set_message(msg.clone());
                    if bar.is_hidden() && (m.step % self.log_every == 0 || m.step == m.total_steps) {
                        eprintln!("step {}/{} {msg} ({:.0}s)", m.step, m.total_steps, m.elapsed_s);
                    }
                }
            }
            TrainEvent::Eval { step, report, .. } => {
                let metrics: Vec<String> = report.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                self.say(format!(
                    "eval @ step {step}: loss {:.4} {} ({} samples)",
                    report.loss,
                    metrics.join(" "),
                    report.samples
                ));
            }
            TrainEvent::EpochEnd { .. } => {}
            TrainEvent::NonFinite { step, what, .. } => {
                self.say(format!(
                    "step {step}: {what:?} became NaN or infinite; the update was not applied"
                ));
            }
            TrainEvent::Intervention {
                step,
                source,
                action,
                message,
                ..
            } => self.say(format!("[{source}] {action} at step {step}: {message}")),
            TrainEvent::End { step, elapsed_s, .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                eprintln!("training done: {step} steps in {elapsed_s:.1}s");
            }
        }
        Ok(())
    }
}
