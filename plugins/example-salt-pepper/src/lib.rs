//! An example third-party plugin for lora-scripts, built as a shared library
//! (`cargo xtask build-plugins`) and named by a pipeline's `[plugins] paths`.
//!
//! It adds three components:
//! - the `salt-pepper` image augmentation: each pixel, with probability
//!   `amount`, becomes black (0) or white (1) in every channel;
//! - the `salt-pepper::amount-range` validation rule: an `amount` above 0.5
//!   destroys most of the image;
//! - the `csv-loss-log` callback: writes `step,loss` of every training step to a
//!   file (`path`, default `loss.csv`, relative to the run's output folder).

use std::io::Write;

use lora_plugin_api::{
    Action, Augmentation, AugmentationEntry, Callback, CallbackEntry, ConfigView, Event, EventKind, Finding, Image,
    Params, Registrar, Rule, RuleEntry, RunInfo, Severity, Value, export_plugin,
};

export_plugin!("example-salt-pepper", "0.1.0", register);

fn register(r: &mut dyn Registrar) {
    if cfg!(feature = "__test-panic") {
        panic!("this build of example-salt-pepper panics on purpose (feature __test-panic)");
    }
    r.augmentation(AugmentationEntry {
        name: "salt-pepper".into(),
        summary: "each pixel becomes black or white with probability `amount` (example plugin)".into(),
        build: Box::new(|p| SaltPepper::from_params(p).map(|a| Box::new(a) as Box<dyn Augmentation>)),
    });
    r.rule(RuleEntry {
        id: "salt-pepper::amount-range".into(),
        severity: Severity::Error,
        summary: "A salt-pepper amount outside [0, 0.5].".into(),
        doc: "Above half of the pixels the image is mostly noise; below 0 is meaningless.".into(),
        rule: Box::new(AmountRange),
    });
    r.callback(CallbackEntry {
        name: "csv-loss-log".into(),
        summary: "writes `step,loss` of every training step to `path` in the run's folder (example plugin)".into(),
        build: Box::new(|p| CsvLossLog::from_params(p).map(|c| Box::new(c) as Box<dyn Callback>)),
    });
}

/// SplitMix64: a tiny, well-known seeded generator, so the plugin needs no dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct SaltPepper {
    pub amount: f64,
}

impl SaltPepper {
    pub fn from_params(p: &Params) -> Result<Self, String> {
        let unknown = p.unknown_keys(&["amount"]);
        if !unknown.is_empty() {
            return Err(format!("unknown key `{}` (salt-pepper takes `amount`)", unknown[0]));
        }
        Ok(Self {
            amount: p.float_or("amount", 0.05)?,
        })
    }
}

impl Augmentation for SaltPepper {
    fn apply(&self, image: &mut Image<'_>, seed: u64) {
        let plane = image.height * image.width;
        let mut rng = SplitMix(seed);
        for i in 0..plane {
            if rng.unit() < self.amount {
                let v = if rng.next() & 1 == 0 { 0.0 } else { 1.0 };
                for c in 0..image.channels {
                    image.pixels[c * plane + i] = v;
                }
            }
        }
    }
}

/// Checks every `salt-pepper` table under `data.augment`, pointing at the
/// `amount` of the offending element (`data.augment.N.amount`).
struct AmountRange;

impl Rule for AmountRange {
    fn check(&self, config: &ConfigView<'_>) -> Vec<Finding> {
        let Some(Value::Array(tables)) = config.get("data.augment") else {
            return Vec::new();
        };
        tables
            .iter()
            .enumerate()
            .filter(|(_, t)| t.get("type").and_then(Value::as_str) == Some("salt-pepper"))
            .filter_map(|(i, t)| Some((i, t.get("amount").and_then(Value::as_float)?)))
            .filter(|(_, a)| !(0.0..=0.5).contains(a))
            .map(|(i, a)| Finding {
                message: format!("salt-pepper amount ({a}) is out of range. Valid range: 0 <= amount <= 0.5"),
                path: Some(format!("data.augment.{i}.amount")),
                help: Some("0.02-0.1 is a usual amount".into()),
            })
            .collect()
    }
}

/// The file is created when training starts, in the run's output folder (unless
/// `path` is absolute), not when the pipeline is validated: nothing is written
/// before validation has passed, and `lora run --output-dir` moves it.
pub struct CsvLossLog {
    path: std::path::PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl CsvLossLog {
    pub fn from_params(p: &Params) -> Result<Self, String> {
        let unknown = p.unknown_keys(&["path"]);
        if !unknown.is_empty() {
            return Err(format!("unknown key `{}` (csv-loss-log takes `path`)", unknown[0]));
        }
        Ok(Self {
            path: p.str_or("path", "loss.csv")?.into(),
            file: None,
        })
    }
}

impl Callback for CsvLossLog {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), String> {
        self.path = run.output_dir.join(&self.path);
        let open = || -> std::io::Result<_> {
            let mut file = std::io::BufWriter::new(std::fs::File::create(&self.path)?);
            writeln!(file, "step,loss")?;
            Ok(file)
        };
        self.file = Some(open().map_err(|e| format!("csv-loss-log cannot create {}: {e}", self.path.display()))?);
        Ok(())
    }

    fn on_event(&mut self, event: &Event) -> Action {
        let written = match (event.kind, event.loss, self.file.as_mut()) {
            (EventKind::Step, Some(loss), Some(f)) => writeln!(f, "{},{loss}", event.step),
            (EventKind::End, _, Some(f)) => f.flush(),
            _ => Ok(()),
        };
        match written {
            Ok(()) => Action::Continue,
            Err(e) => Action::Stop(format!("csv-loss-log cannot write {}: {e}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_pepper_is_seeded_and_only_writes_black_or_white() {
        let aug = SaltPepper { amount: 0.3 };
        let mut a = vec![0.5f32; 3 * 16 * 16];
        let mut b = a.clone();
        for (pixels, seed) in [(&mut a, 7), (&mut b, 7)] {
            aug.apply(
                &mut Image {
                    channels: 3,
                    height: 16,
                    width: 16,
                    pixels,
                },
                seed,
            );
        }
        assert_eq!(a, b, "same seed, same noise");
        let changed = a[..256].iter().filter(|&&v| v != 0.5).count();
        assert!((40..120).contains(&changed), "about 30% of 256 pixels: {changed}");
        for i in 0..256 {
            // A pixel is noised in every channel or in none.
            assert!(a[i] == a[256 + i] && a[i] == a[512 + i]);
            assert!(a[i] == 0.5 || a[i] == 0.0 || a[i] == 1.0);
        }
    }
}
