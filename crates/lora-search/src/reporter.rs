//! The trial's side of a study: a callback that reports each evaluation to the
//! journal, asks the pruner, and records how the trial ended.

use std::path::PathBuf;
use std::time::Instant;

use lora_core::events::{Callback, Control, TrainEvent};
use lora_core::{Error, Result};

use crate::journal::{Journal, Record, TrialState};
use crate::pruner::should_prune;

pub struct TrialReporter {
    journal: Journal,
    trial: usize,
    objective: String,
    evals: usize,
    last: Option<f64>,
    pruned: Option<String>,
    started: Instant,
}

impl TrialReporter {
    /// `spec` is `JOURNAL:TRIAL`, as `lora search` passes it to `lora run --trial`.
    pub fn from_arg(spec: &str) -> Result<Self> {
        let (path, id) = spec
            .rsplit_once(':')
            .and_then(|(p, id)| Some((p, id.parse::<usize>().ok()?)))
            .ok_or_else(|| Error::Other(format!("--trial {spec}: expected JOURNAL:TRIAL")))?;
        let journal = Journal::new(PathBuf::from(path));
        let objective = journal.read()?.spec.objective;
        Ok(Self {
            journal,
            trial: id,
            objective,
            evals: 0,
            last: None,
            pruned: None,
            started: Instant::now(),
        })
    }
}

impl Callback for TrialReporter {
    fn name(&self) -> &str {
        "search-pruner"
    }

    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        self.control(event).map(|_| ())
    }

    /// A trial resumed from its checkpoint goes on counting its evaluations.
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "evals": self.evals, "last": self.last, "pruned": self.pruned })
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct S {
            evals: usize,
            last: Option<f64>,
            pruned: Option<String>,
        }
        let s: S = serde_json::from_value(state.clone())
            .map_err(|e| Error::Other(format!("search-pruner: bad checkpoint state: {e}")))?;
        (self.evals, self.last, self.pruned) = (s.evals, s.last, s.pruned);
        Ok(())
    }

    fn control(&mut self, event: &TrainEvent) -> Result<Control> {
        match event {
            TrainEvent::Eval { step, report, .. } => {
                let value = match report.value(&self.objective) {
                    Ok(v) => v,
                    Err(e) => {
                        return Ok(Control::Fail {
                            reason: format!("search: {e}"),
                        });
                    }
                };
                self.evals += 1;
                self.last = Some(value);
                self.journal.append(&Record::Report {
                    trial: self.trial,
                    eval: self.evals,
                    step: *step,
                    value,
                })?;
                if self.pruned.is_some() {
                    return Ok(Control::Continue);
                }
                let study = self.journal.read()?;
                if let Some(reason) = should_prune(&study, self.trial, self.evals, value) {
                    self.pruned = Some(reason.clone());
                    return Ok(Control::Stop { reason });
                }
                Ok(Control::Continue)
            }
            TrainEvent::End { step, .. } => {
                self.journal.append(&Record::End {
                    trial: self.trial,
                    state: if self.pruned.is_some() {
                        TrialState::Pruned
                    } else {
                        TrialState::Complete
                    },
                    value: self.last,
                    steps: *step,
                    seconds: self.started.elapsed().as_secs_f64(),
                    message: self.pruned.clone(),
                })?;
                Ok(Control::Continue)
            }
            _ => Ok(Control::Continue),
        }
    }
}
