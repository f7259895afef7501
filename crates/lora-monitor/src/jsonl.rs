//! Every event as one JSON line, for later analysis and plots.
//!
//! The log is written under a `.partial` name and renamed when the run ends, so
//! a finished run never shows a truncated log; a crashed run keeps the partial
//! file. Each line is written through at once (no buffering), so that the file
//! holds every event up to a crash, and a checkpoint can record the log's
//! length and the sha256 of its bytes: a resumed run cuts the log back to that
//! length and appends, so that it ends up as the uninterrupted run's log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use lora_core::events::{Callback, TrainEvent};
use lora_core::{Error, Result};
use sha2::{Digest, Sha256};

pub struct JsonlSink {
    path: PathBuf,
    partial: PathBuf,
    out: Option<File>,
    /// The epoch of the last step, added to lines whose event has none (evaluations).
    epoch: usize,
    /// Bytes written so far, and their running sha256.
    offset: u64,
    hash: Sha256,
}

/// What a checkpoint keeps of the log (`Callback::state`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct LogState {
    epoch: usize,
    offset: u64,
    sha256: String,
}

/// Seconds since the Unix epoch: every line's `wall_time`.
fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of the log's callback, under which a checkpoint keeps its state.
pub const NAME: &str = "metrics-log";

/// A log continued by a resumed run: the sink, the lines before the
/// checkpoint (to replay into the other sinks) and, when the earlier log could
/// not be continued, why.
pub struct Resumed {
    pub sink: JsonlSink,
    pub prefix: Vec<String>,
    pub lost: Option<String>,
}

impl JsonlSink {
    pub fn create(path: &Path) -> Result<Self> {
        let partial = path.with_extension("jsonl.partial");
        let file = File::create(&partial).map_err(|e| Error::io("cannot create metrics log", &partial, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            out: Some(file),
            epoch: 0,
            offset: 0,
            hash: Sha256::new(),
        })
    }

    /// Continues the log of an interrupted run from a checkpoint's state of it:
    /// the log (partial, or finished by a failure) is cut back to the
    /// checkpoint's length when its first bytes are the ones the checkpoint
    /// hashed; otherwise a new log starts and `lost` says why.
    pub fn resume(path: &Path, state: &serde_json::Value) -> Result<Resumed> {
        let state: LogState = serde_json::from_value(state.clone())
            .map_err(|e| Error::Other(format!("the checkpoint's metrics-log state is unreadable: {e}")))?;
        let partial = path.with_extension("jsonl.partial");
        let existing = [&partial, path].into_iter().find(|p| p.is_file());
        let Some(existing) = existing else {
            let mut sink = Self::create(path)?;
            sink.epoch = state.epoch;
            return Ok(Resumed {
                sink,
                prefix: Vec::new(),
                lost: Some(format!("{} is missing", partial.display())),
            });
        };
        let mut prefix = Vec::new();
        File::open(existing)
            .and_then(|f| f.take(state.offset).read_to_end(&mut prefix))
            .map_err(|e| Error::io("cannot read metrics log", existing, e))?;
        let hash = Sha256::new_with_prefix(&prefix);
        if prefix.len() as u64 != state.offset || hex(&hash.clone().finalize()) != state.sha256 {
            let why = format!(
                "{} does not begin with the {} bytes the checkpoint recorded",
                existing.display(),
                state.offset
            );
            let mut sink = Self::create(path)?;
            sink.epoch = state.epoch;
            return Ok(Resumed {
                sink,
                prefix: Vec::new(),
                lost: Some(why),
            });
        }
        if *existing != partial {
            std::fs::rename(existing, &partial).map_err(|e| Error::io("cannot reopen metrics log", existing, e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&partial)
            .and_then(|f| {
                f.set_len(state.offset)?;
                Ok(f)
            })
            .map_err(|e| Error::io("cannot reopen metrics log", &partial, e))?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
            .map_err(|e| Error::io("cannot reopen metrics log", &partial, e))?;
        let lines = String::from_utf8_lossy(&prefix).lines().map(str::to_string).collect();
        Ok(Resumed {
            sink: Self {
                path: path.to_path_buf(),
                partial,
                out: Some(file),
                epoch: state.epoch,
                offset: state.offset,
                hash,
            },
            prefix: lines,
            lost: None,
        })
    }

    /// The file being written (the `.partial` name until the run ends).
    pub fn partial_path(&self) -> &Path {
        &self.partial
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
        let mut line = value.to_string();
        line.push('\n');
        out.write_all(line.as_bytes())
            .map_err(|e| Error::io("cannot write metrics log", &self.partial, e))?;
        self.offset += line.len() as u64;
        self.hash.update(line.as_bytes());
        if let TrainEvent::End { .. } = event {
            self.out.take();
            std::fs::rename(&self.partial, &self.path)
                .map_err(|e| Error::io("cannot finish metrics log", &self.path, e))?;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        NAME
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(LogState {
            epoch: self.epoch,
            offset: self.offset,
            sha256: hex(&self.hash.clone().finalize()),
        })
        .expect("plain data")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        // The file itself was cut back by `resume`; only the epoch is kept here.
        if let Some(e) = state.get("epoch").and_then(serde_json::Value::as_u64) {
            self.epoch = e as usize;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_appears_whole_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
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
    }

    #[test]
    fn a_resumed_log_is_cut_back_to_the_checkpoint_and_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut sink = JsonlSink::create(&path).unwrap();
        sink.on_event(&TrainEvent::EpochEnd { epoch: 0, step: 3 }).unwrap();
        let state = sink.state();
        // Lines written after the checkpoint, then a crash.
        sink.on_event(&TrainEvent::EpochEnd { epoch: 1, step: 6 }).unwrap();
        drop(sink);
        let r = JsonlSink::resume(&path, &state).unwrap();
        assert!(r.lost.is_none());
        assert_eq!(r.prefix.len(), 1);
        let mut sink = r.sink;
        assert_eq!(sink.state(), state);
        sink.on_event(&TrainEvent::EpochEnd { epoch: 1, step: 7 }).unwrap();
        sink.on_event(&TrainEvent::End {
            step: 7,
            epoch: 1,
            elapsed_s: 1.0,
        })
        .unwrap();
        let steps: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, [3, 7, 7]);

        // A log whose first bytes changed is not continued.
        let mut other = JsonlSink::create(&path).unwrap();
        other.on_event(&TrainEvent::EpochEnd { epoch: 0, step: 4 }).unwrap();
        let r = JsonlSink::resume(&path, &state).unwrap();
        assert!(r.lost.unwrap().contains("does not begin with"));
    }
}
