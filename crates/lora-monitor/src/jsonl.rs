//! Every event as one JSON line, for later analysis and plots.
//!
//! The log is written under a `.partial` name and renamed when the run ends, so
//! a finished run never shows a truncated log; a crashed run keeps the partial
//! file for debugging.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use lora_core::events::{Callback, TrainEvent};
use lora_core::{Error, Result};

pub struct JsonlSink {
    path: PathBuf,
    partial: PathBuf,
    out: Option<BufWriter<File>>,
    /// The epoch of the last step, added to lines whose event has none (evaluations).
    epoch: usize,
}

/// Seconds since the Unix epoch: every line's `wall_time`.
fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl JsonlSink {
    pub fn create(path: &Path) -> Result<Self> {
        let partial = path.with_extension("jsonl.partial");
        let file = File::create(&partial).map_err(|e| Error::io("cannot create metrics log", &partial, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            out: Some(BufWriter::new(file)),
            epoch: 0,
        })
    }
}

impl Callback for JsonlSink {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        let Some(out) = self.out.as_mut() else { return Ok(()) };
        if let TrainEvent::Step(m) = event {
            self.epoch = m.epoch;
        }
        let mut value = serde_json::to_value(event).map_err(|e| Error::Other(format!("cannot log an event: {e}")))?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("wall_time".into(), wall_time().into());
            obj.entry("epoch").or_insert(self.epoch.into());
        }
        let line = value.to_string();
        writeln!(out, "{line}").map_err(|e| Error::io("cannot write metrics log", &self.partial, e))?;
        if let TrainEvent::End { .. } = event {
            let mut out = self.out.take().expect("checked above");
            out.flush()
                .map_err(|e| Error::io("cannot write metrics log", &self.partial, e))?;
            std::fs::rename(&self.partial, &self.path)
                .map_err(|e| Error::io("cannot finish metrics log", &self.path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_appears_whole_at_the_end() {
        let dir = std::env::temp_dir().join(format!("lora-monitor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let mut sink = JsonlSink::create(&path).unwrap();
        sink.on_event(&TrainEvent::EpochEnd { epoch: 0, step: 3 }).unwrap();
        assert!(!path.exists());
        sink.on_event(&TrainEvent::End {
            step: 3,
            epoch: 0,
            elapsed_s: 1.0,
        })
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "epoch-end");
        assert_eq!(lines[1]["step"], 3);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
