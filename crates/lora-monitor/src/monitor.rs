//! The monitoring callback: records every event, serves the live dashboard
//! and `/metrics` when asked, samples the machine, and writes the report when
//! the run ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lora_core::Result;
use lora_core::config::MonitorConfig;
use lora_core::events::{Callback, TrainEvent};

use crate::hub::Hub;
use crate::sampler::Sampler;
use crate::server::Server;

pub struct Monitor {
    hub: Arc<Hub>,
    // Dropped before the hub's last viewers go: the server first, then the sampler.
    server: Option<Server>,
    sampler: Option<Sampler>,
    report: Option<PathBuf>,
    title: String,
}

impl Monitor {
    /// `report`: the folder to write the report into at the end, if any.
    pub fn start(cfg: &MonitorConfig, dashboard: bool, title: &str, report: Option<PathBuf>) -> Result<Self> {
        let hub = Arc::new(Hub::new(cfg.smoothing));
        let server = if dashboard {
            let s = Server::start(cfg.port, hub.clone())?;
            eprintln!("dashboard: {} (Prometheus: {}metrics)", s.url(), s.url());
            Some(s)
        } else {
            None
        };
        let sampler = (dashboard || report.is_some()).then(|| {
            let hub = hub.clone();
            Sampler::start(
                Duration::from_millis(cfg.system_interval_ms.max(50)),
                Instant::now(),
                move |t, figures| hub.update(|s| s.recorder.system(t, figures)),
            )
        });
        Ok(Self {
            hub,
            server,
            sampler,
            report,
            title: title.to_string(),
        })
    }

    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// The dashboard's address, when it is served.
    pub fn url(&self) -> Option<String> {
        self.server.as_ref().map(Server::url)
    }

    fn write_report(&self) -> Result<()> {
        let Some(dir) = &self.report else { return Ok(()) };
        let state = self.hub.lock();
        let rec = &state.recorder;
        let mut finals: Vec<(String, f64)> = rec
            .latest
            .iter()
            .filter(|(k, _)| k.starts_with("eval_"))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for k in [
            "train_loss_smoothed",
            "learning_rate",
            "samples_per_second",
            "tokens_per_second",
        ] {
            if let Some(v) = rec.latest.get(k) {
                finals.push((k.to_string(), *v));
            }
        }
        let path = crate::report::write(dir, rec, &self.title, &finals)?;
        eprintln!("report: {}", path.display());
        Ok(())
    }
}

impl Callback for Monitor {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        self.hub.update(|s| s.recorder.event(event));
        if let TrainEvent::End { .. } = event {
            // The sampler's last figures belong in the report.
            self.sampler.take();
            self.write_report()?;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "monitor"
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // A run that failed has no End: its report still helps to see why
        // (best effort, the run's own error is what gets reported), and
        // viewers must learn that the stream is over.
        let failed_after_starting = {
            let state = self.hub.lock();
            let r = &state.recorder;
            !r.finished && (r.step > 0 || !r.interventions.is_empty())
        };
        self.sampler.take();
        if failed_after_starting {
            let _ = self.write_report();
        }
        self.hub.update(|s| s.recorder.finished = true);
        self.server.take();
    }
}
