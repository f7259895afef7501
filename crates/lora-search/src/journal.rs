//! The study journal: one JSON record per line, appended and never rewritten,
//! so that a crash loses at most the line being written. The driver and the
//! trials (which report their evaluations and ask the pruner) append to the
//! same file; a line is written with one `write` on a file opened for
//! appending, which Linux keeps whole for lines this short.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::SearchError;
use crate::space::{Point, SearchSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrialState {
    Running,
    Complete,
    Pruned,
    /// Its configuration broke a validation rule: no training happened.
    Invalid,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Record {
    Study {
        pipeline: PathBuf,
        spec: SearchSpec,
    },
    Start {
        trial: usize,
        point: Point,
        values: BTreeMap<String, toml::Value>,
    },
    /// The trial's process started (so that a resumed study can stop one left behind).
    Launched {
        trial: usize,
        pid: u32,
    },
    /// An intermediate value: the objective at the trial's `eval`-th evaluation (1-based).
    Report {
        trial: usize,
        eval: usize,
        step: usize,
        value: f64,
    },
    End {
        trial: usize,
        state: TrialState,
        value: Option<f64>,
        steps: usize,
        seconds: f64,
        message: Option<String>,
    },
}

/// A trial as the journal tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub id: usize,
    pub point: Point,
    pub values: BTreeMap<String, toml::Value>,
    /// Intermediate values by evaluation number (1-based).
    pub reports: BTreeMap<usize, f64>,
    /// The optimizer step of each evaluation, by evaluation number.
    pub report_steps: BTreeMap<usize, usize>,
    pub state: TrialState,
    pub value: Option<f64>,
    pub steps: usize,
    pub seconds: f64,
    pub message: Option<String>,
    /// The process of the trial's last launch.
    pub pid: Option<u32>,
}

/// A study replayed from its journal.
#[derive(Debug, Clone)]
pub struct Study {
    pub pipeline: PathBuf,
    pub spec: SearchSpec,
    pub trials: Vec<Trial>,
}

pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, record: &Record) -> Result<(), SearchError> {
        let mut line = serde_json::to_string(record).expect("records serialize");
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| SearchError::io(&self.path, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| SearchError::io(&self.path, e))?;
        f.sync_data().map_err(|e| SearchError::io(&self.path, e))
    }

    /// Replays the journal. A last line cut short by a crash is ignored; a
    /// damaged line elsewhere is an error naming it.
    pub fn read(&self) -> Result<Study, SearchError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| SearchError::io(&self.path, e))?;
        let lines: Vec<&str> = text.lines().collect();
        let mut study: Option<Study> = None;
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = match serde_json::from_str(line) {
                Ok(r) => r,
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
                Err(e) => {
                    return Err(SearchError::Journal(format!(
                        "{}:{}: not a journal record: {e}",
                        self.path.display(),
                        i + 1
                    )));
                }
            };
            match (record, &mut study) {
                (Record::Study { pipeline, spec }, None) => {
                    study = Some(Study {
                        pipeline,
                        spec,
                        trials: Vec::new(),
                    })
                }
                (Record::Study { .. }, Some(_)) | (_, None) => {
                    return Err(SearchError::Journal(format!(
                        "{}:{}: a journal has exactly one study record, first",
                        self.path.display(),
                        i + 1
                    )));
                }
                (Record::Start { trial, point, values }, Some(s)) => {
                    // A trial started again (a resumed study re-runs one that was cut short, from
                    // its own checkpoint when it has one) keeps the evaluations it reported.
                    let (reports, report_steps) = s
                        .trials
                        .iter()
                        .position(|t| t.id == trial)
                        .map(|i| {
                            let t = s.trials.remove(i);
                            (t.reports, t.report_steps)
                        })
                        .unwrap_or_default();
                    s.trials.push(Trial {
                        id: trial,
                        point,
                        values,
                        reports,
                        report_steps,
                        state: TrialState::Running,
                        value: None,
                        steps: 0,
                        seconds: 0.0,
                        message: None,
                        pid: None,
                    })
                }
                (Record::Launched { trial, pid }, Some(s)) => {
                    if let Some(t) = s.trials.iter_mut().find(|t| t.id == trial) {
                        t.pid = Some(pid);
                    }
                }
                (
                    Record::Report {
                        trial,
                        eval,
                        step,
                        value,
                    },
                    Some(s),
                ) => {
                    if let Some(t) = s.trials.iter_mut().find(|t| t.id == trial) {
                        t.reports.insert(eval, value);
                        t.report_steps.insert(eval, step);
                    }
                }
                (
                    Record::End {
                        trial,
                        state,
                        value,
                        steps,
                        seconds,
                        message,
                    },
                    Some(s),
                ) => {
                    if let Some(t) = s.trials.iter_mut().find(|t| t.id == trial) {
                        (t.state, t.value, t.steps, t.seconds, t.message) = (state, value, steps, seconds, message);
                    }
                }
            }
        }
        study.ok_or_else(|| SearchError::Journal(format!("{}: empty journal", self.path.display())))
    }
}

impl Study {
    /// The best complete trial.
    pub fn best(&self) -> Option<&Trial> {
        let dir = self.spec.direction;
        self.trials
            .iter()
            .filter(|t| t.state == TrialState::Complete)
            .filter(|t| t.value.is_some_and(f64::is_finite))
            .fold(None, |best: Option<&Trial>, t| match best {
                Some(b) if !dir.better(t.value.unwrap(), b.value.unwrap()) => Some(b),
                _ => Some(t),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SearchSpec {
        SearchSpec::from_document(
            &"[search]\ntrials = 2\n[search.space]\n\"lora.r\" = { choice = [4, 8] }\n"
                .parse()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_journal_cut_mid_line_replays_up_to_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("journal.jsonl"));
        j.append(&Record::Study {
            pipeline: "p.toml".into(),
            spec: spec(),
        })
        .unwrap();
        j.append(&Record::Start {
            trial: 0,
            point: vec![1.0],
            values: BTreeMap::new(),
        })
        .unwrap();
        j.append(&Record::Report {
            trial: 0,
            eval: 1,
            step: 10,
            value: 0.5,
        })
        .unwrap();
        j.append(&Record::End {
            trial: 0,
            state: TrialState::Complete,
            value: Some(0.25),
            steps: 20,
            seconds: 1.0,
            message: None,
        })
        .unwrap();
        j.append(&Record::Start {
            trial: 1,
            point: vec![0.0],
            values: BTreeMap::new(),
        })
        .unwrap();
        let mut text = std::fs::read_to_string(j.path()).unwrap();
        text.push_str("{\"kind\":\"end\",\"tri");
        std::fs::write(j.path(), &text).unwrap();
        let s = j.read().unwrap();
        assert_eq!(s.trials.len(), 2);
        assert_eq!(
            (s.trials[0].state, s.trials[0].value, s.trials[0].reports[&1]),
            (TrialState::Complete, Some(0.25), 0.5)
        );
        assert_eq!(s.trials[1].state, TrialState::Running, "its end was never written");
        assert_eq!(s.best().unwrap().id, 0);
        // A damaged line that is not the last is an error.
        std::fs::write(j.path(), text.replace("\"report\"", "\"rep")).unwrap();
        assert!(j.read().unwrap_err().to_string().contains(":3:"));
    }
}
