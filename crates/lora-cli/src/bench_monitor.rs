//! `lora bench --monitoring`: what monitoring costs a training step. The same
//! short training run (LoRA r=8 on MiniLM-L6, batch 8 x 64, random tokens)
//! twice: bare (no callbacks, no per-module figures) and fully monitored
//! (JSONL log, dashboard server with its sampler, report, per-module figures
//! every step). Reports the median step period of each, and the time spent in
//! the monitoring code itself, measured directly (the difference of two noisy
//! medians is smaller than their noise on a shared machine).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lora_core::config::{MonitorConfig, PipelineConfig};
use lora_core::events::{Callback, Control, TrainEvent};
use lora_core::registry::{TrainerEntry, build, build_model};
use lora_core::stage::TrainContext;
use lora_core::stage::{AssetResolver, Dataset, EvalReport, EvalStage, InputEncoder, PreparedData, StageContext};
use lora_core::{AdapterModel, Batch, Error, ModelOptions, Result, Task};
use lora_train::strategy::SingleProcess;

use crate::bench::{Case, MODEL, random_batch};

const CASE: Case = Case { batch: 8, seq_len: 64 };

/// Pre-made random batches, the same every pass.
struct Batches(Vec<Batch>);

impl Dataset for Batches {
    fn len(&self) -> usize {
        self.0.iter().map(Batch::len).sum()
    }
    fn labels(&self) -> Vec<u32> {
        self.0.iter().flat_map(|b| b.labels().to_vec()).collect()
    }
    fn batches(&self, _: usize, _: Option<u64>) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_> {
        Box::new(self.0.iter().cloned().map(Ok))
    }
}

struct NoEncoder;
impl InputEncoder for NoEncoder {
    fn input_kind(&self) -> &'static str {
        "text"
    }
    fn encode_inputs(&self, _: &[String]) -> Result<Batch> {
        Err(Error::Other("the benchmark encodes no text".into()))
    }
}

/// An evaluator that costs nothing, so that only training steps are compared.
struct NoEval;
impl EvalStage for NoEval {
    fn evaluate(&self, _: &dyn AdapterModel, _: &dyn Dataset, _: &Task) -> Result<EvalReport> {
        Ok(EvalReport {
            samples: 0,
            loss: 0.0,
            metrics: Default::default(),
            details: serde_json::Value::Null,
        })
    }
    fn interval(&self) -> usize {
        0
    }
}

/// Wraps a callback and adds up the time spent in it: during training in
/// `spent`, on the final event (the report is written then) in `at_end`.
struct Timed {
    inner: Box<dyn Callback>,
    spent: Arc<Mutex<Duration>>,
    at_end: Arc<Mutex<Duration>>,
}

impl Callback for Timed {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        self.control(event).map(|_| ())
    }
    fn control(&mut self, event: &TrainEvent) -> Result<Control> {
        let t = Instant::now();
        let r = self.inner.control(event);
        let into = if matches!(event, TrainEvent::End { .. }) {
            &self.at_end
        } else {
            &self.spent
        };
        *into.lock().unwrap_or_else(|e| e.into_inner()) += t.elapsed();
        r
    }
}

/// Records when each step is announced: the period between two includes everything.
struct Periods(Arc<Mutex<Vec<Instant>>>);

impl Callback for Periods {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        if let TrainEvent::Step(_) = event {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
        }
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Outcome {
    median_step_s: f64,
    monitor_s_per_step: f64,
    end_s: f64,
    module_stats_s_per_step: f64,
}

fn train_once(
    config: &PipelineConfig,
    backend: &str,
    ctx: &StageContext,
    steps: usize,
    monitored: bool,
    out: &Path,
) -> Result<Outcome> {
    let stage = build_model(&config.model, backend)?;
    let task = Task::classification(vec!["a".into(), "b".into(), "c".into()]);
    let mut model = stage.build(ctx, &config.lora, &task, &ModelOptions::default())?;
    let train_text = format!(
        "{}\n[train]\nmax-steps = {}\nbatch-size = {}\nmodule-stats-every = {}\n[train.optimizer]\ntype = \"adamw\"\nlr = 1e-3\n",
        MODEL
            .replace("BACKEND", backend)
            .replace("[train.optimizer]\ntype = \"adamw\"\nlr = 1e-3\n", ""),
        steps,
        CASE.batch,
        if monitored { 1 } else { 0 }
    );
    let cfg = PipelineConfig::parse(Path::new("<bench>"), train_text)?;
    let mut trainer = build::<TrainerEntry>(&cfg.train)?;
    let data = PreparedData {
        task: task.clone(),
        train: Box::new(Batches(
            (0..steps as u64).map(|i| random_batch(&CASE, 30522, i)).collect(),
        )),
        validation: Box::new(Batches(Vec::new())),
        encoder: Box::new(NoEncoder),
    };
    let periods = Arc::new(Mutex::new(Vec::new()));
    let spent = Arc::new(Mutex::new(Duration::ZERO));
    let at_end = Arc::new(Mutex::new(Duration::ZERO));
    let mut callbacks: Vec<Box<dyn Callback>> = Vec::new();
    if monitored {
        let monitor_cfg = MonitorConfig {
            dashboard: true,
            port: 0,
            ..Default::default()
        };
        let sinks: Vec<Box<dyn Callback>> = vec![
            Box::new(lora_monitor::JsonlSink::create(&out.join("metrics.jsonl"))?),
            Box::new(lora_monitor::Monitor::start(
                &monitor_cfg,
                true,
                "bench",
                Some(out.join("report")),
            )?),
        ];
        for s in sinks {
            callbacks.push(Box::new(Timed {
                inner: s,
                spent: spent.clone(),
                at_end: at_end.clone(),
            }));
        }
    }
    callbacks.push(Box::new(Periods(periods.clone())));
    trainer.train(TrainContext {
        model: model.as_mut(),
        data: &data,
        eval: &NoEval,
        callbacks: &mut callbacks,
        strategy: &mut SingleProcess,
        seed: 0,
        checkpoints: None,
        resume: None,
    })?;
    drop(callbacks);
    let times = periods.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The first period includes warm-up; skip it.
    let gaps: Vec<f64> = times.windows(2).skip(1).map(|w| (w[1] - w[0]).as_secs_f64()).collect();

    // The per-module figures, timed alone on the real parameter shapes.
    let mut module_stats_s_per_step = 0.0;
    if monitored {
        let layout = lora_core::ParamLayout::new(model.params());
        let params = layout.flatten(&model.read_params()?)?;
        let index = lora_train::stats::ModuleIndex::new(layout.params());
        let reps = 50;
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(index.stats(&layout, &params, &params, &params));
            std::hint::black_box(lora_train::stats::global_update_ratio(&params, &params));
        }
        module_stats_s_per_step = t.elapsed().as_secs_f64() / reps as f64;
    }
    let monitor_s = spent.lock().unwrap_or_else(|e| e.into_inner()).as_secs_f64();
    let end_s = at_end.lock().unwrap_or_else(|e| e.into_inner()).as_secs_f64();
    Ok(Outcome {
        median_step_s: median(gaps),
        monitor_s_per_step: monitor_s / steps as f64,
        end_s,
        module_stats_s_per_step,
    })
}

pub fn run(backend: &str, steps: usize, assets: &dyn AssetResolver) -> Result<serde_json::Value> {
    let config = PipelineConfig::parse(Path::new("<bench>"), MODEL.replace("BACKEND", backend))?;
    let ctx = StageContext {
        seed: 0,
        assets,
        tokenizer: None,
    };
    let dir = std::env::temp_dir().join(format!("lora-bench-monitor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create a scratch folder", &dir, e))?;
    let steps = steps.max(3);
    // Bare, monitored, bare, monitored: alternating spreads the machine's drift over both.
    let mut bare = Vec::new();
    let mut monitored = Vec::new();
    for round in 0..2 {
        bare.push(train_once(&config, backend, &ctx, steps, false, &dir)?);
        let out = dir.join(format!("monitored-{round}"));
        std::fs::create_dir_all(&out).map_err(|e| Error::io("cannot create a scratch folder", &out, e))?;
        monitored.push(train_once(&config, backend, &ctx, steps, true, &out)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let without = median(bare.iter().map(|o| o.median_step_s).collect());
    let with = median(monitored.iter().map(|o| o.median_step_s).collect());
    let monitor_ms = 1e3 * monitored.iter().map(|o| o.monitor_s_per_step).sum::<f64>() / monitored.len() as f64;
    let stats_ms = 1e3 * monitored.iter().map(|o| o.module_stats_s_per_step).sum::<f64>() / monitored.len() as f64;
    let end_ms = 1e3 * monitored.iter().map(|o| o.end_s).sum::<f64>() / monitored.len() as f64;
    let line = serde_json::json!({
        "backend": backend,
        "case": format!("monitoring overhead, batch {} x length {}", CASE.batch, CASE.seq_len),
        "steps_per_run": steps,
        "runs_each": 2,
        "median_step_s_without_monitoring": without,
        "median_step_s_with_monitoring": with,
        "difference_pct": 100.0 * (with - without) / without,
        "monitor_callbacks_ms_per_step": monitor_ms,
        "module_stats_ms_per_step": stats_ms,
        "report_at_end_ms": end_ms,
        "direct_overhead_pct": 100.0 * (monitor_ms + stats_ms) / 1e3 / without,
    });
    println!("{line}");
    Ok(line)
}
