//! What a study shows while it runs and when it ends: the journal's new lines
//! forwarded to the live page (`[monitor] dashboard`), and the study as the
//! report's plain view (`[monitor] report`, written to `search/report/`).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lora_core::Result;
use lora_monitor::server::Server;
use lora_monitor::study::{ParamAxis, StudyFeed, StudyView, TrialView};
use lora_search::journal::Study;
use lora_search::space::Domain;

/// The live study page, fed from the journal, which the trials append to as
/// well (their evaluations): it is read from where the last read stopped.
pub struct Board {
    feed: Arc<StudyFeed>,
    _server: Server,
    journal: PathBuf,
    offset: u64,
}

impl Board {
    pub fn start(port: u16, journal: &Path) -> Result<Self> {
        let feed = Arc::new(StudyFeed::new());
        let server = Server::start(port, feed.clone())?;
        eprintln!("study dashboard: {}", server.url());
        let mut board = Self {
            feed,
            _server: server,
            journal: journal.to_path_buf(),
            offset: 0,
        };
        board.pump();
        Ok(board)
    }

    /// Forwards the journal's complete new lines to the page.
    pub fn pump(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.journal) else {
            return;
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_string(&mut text).is_err() {
            return;
        }
        // A line being written has no newline yet: it waits for the next pump.
        let Some(end) = text.rfind('\n') else { return };
        self.offset += end as u64 + 1;
        self.feed
            .push(text[..end].lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }

    pub fn finish(mut self) {
        self.pump();
        self.feed.finish();
    }
}

/// The study as the report draws it.
pub fn view(study: &Study, title: &str) -> StudyView {
    let spec = &study.spec;
    let params = spec
        .params
        .iter()
        .map(|p| ParamAxis {
            name: p.path.clone(),
            log: matches!(
                p.domain,
                Domain::Float { log: true, .. } | Domain::Int { log: true, .. }
            ),
        })
        .collect();
    let trials = study
        .trials
        .iter()
        .map(|t| TrialView {
            id: t.id,
            state: super::state_name(t.state).to_string(),
            value: t.value,
            steps: t.steps,
            seconds: t.seconds,
            params: spec
                .params
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let v = t.values.get(&p.path)?;
                    v.as_float()
                        .or(v.as_integer().map(|n| n as f64))
                        .or_else(|| t.point.get(i).map(|x| x.floor()))
                })
                .collect(),
            param_text: super::params_text(&t.values),
            reports: t
                .reports
                .iter()
                .map(|(eval, v)| (t.report_steps.get(eval).copied().unwrap_or(*eval), *v))
                .collect(),
        })
        .collect();
    StudyView {
        title: title.to_string(),
        objective: spec.objective.clone(),
        maximize: spec.direction == lora_search::Direction::Maximize,
        params,
        trials,
    }
}
