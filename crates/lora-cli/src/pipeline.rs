//! Building and running a pipeline: data -> model -> train -> eval.

use std::path::{Path, PathBuf};

use lora_core::checkpoint::ResumeFrom;
use lora_core::config::PipelineConfig;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::events::{Callback, TrainEvent};
use lora_core::fsutil::write_atomic;
use lora_core::registry::{DataSourceEntry, EvaluatorEntry, TrainerEntry, build, build_model};
use lora_core::stage::{
    AssetResolver, DataStage, EvalReport, EvalStage, ModelStage, PreparedData, StageContext, TrainContext, TrainStage,
};
use lora_core::{AdapterModel, Error, ModelOptions, Result, Task};
use lora_train::checkpoint::{self, CheckpointWriter, Identity};
use serde_json::json;

/// Every stage of a pipeline, built and checked, before any work.
pub struct Pipeline {
    pub config: PipelineConfig,
    pub data: Box<dyn DataStage>,
    pub model: Box<dyn ModelStage>,
    pub train: Box<dyn TrainStage>,
    pub eval: Box<dyn EvalStage>,
    /// `[callbacks.NAME]`: early stopping, anomaly guards, ... in document order.
    pub callbacks: Vec<Box<dyn Callback>>,
}

impl Pipeline {
    /// Builds every stage from its registry, reporting every problem at once.
    pub fn build(config: PipelineConfig) -> Result<Self> {
        let mut diags = Diagnostics::default();
        let backends = crate::backends();
        if !backends.contains(&config.run.backend.as_str()) {
            let loc = lora_core::doc::ConfigDoc::parse(&config.file)
                .ok()
                .and_then(|d| d.get("run.backend").map(|n| n.location.clone()));
            diags.push(
                Diagnostic::error(
                    "backend::not-compiled",
                    format!("backend `{}` is not compiled into this binary", config.run.backend),
                )
                .at(loc)
                .help(format!(
                    "available: {} (enable others with cargo features, e.g. --features burn)",
                    backends.join(", ")
                )),
            );
        }
        let data = take(&mut diags, build::<DataSourceEntry>(&config.data));
        let model = take(&mut diags, build_model(&config.model, &config.run.backend));
        let train = take(&mut diags, build::<TrainerEntry>(&config.train));
        let eval = take(&mut diags, build::<EvaluatorEntry>(&config.eval));
        let callbacks: Vec<Option<Box<dyn Callback>>> = config
            .callbacks
            .iter()
            .map(|c| take(&mut diags, crate::plugins::build_callback(c, Some(&config.run))))
            .collect();
        if diags.has_errors() {
            return Err(Error::Invalid(diags));
        }
        Ok(Self {
            data: data.expect("no errors"),
            model: model.expect("no errors"),
            train: train.expect("no errors"),
            eval: eval.expect("no errors"),
            callbacks: callbacks.into_iter().map(|c| c.expect("no errors")).collect(),
            config,
        })
    }

    pub fn context<'a>(&self, assets: &'a dyn AssetResolver) -> Result<StageContext<'a>> {
        let mut ctx = StageContext {
            seed: self.config.run.seed,
            assets,
            tokenizer: None,
        };
        ctx.tokenizer = self.model.tokenizer(&ctx)?;
        Ok(ctx)
    }

    /// The whole configuration with every default filled in, as TOML.
    pub fn resolved_toml(&self) -> String {
        let doc = self.resolved_value();
        let body = toml::to_string_pretty(&doc).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        format!(
            "# Resolved from {} with every default filled in.\n\n{body}",
            self.config.file.path.display()
        )
    }

    /// The whole configuration with every default filled in.
    pub fn resolved_value(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        doc.insert(
            "run".into(),
            serde_json::to_value(&self.config.run).expect("serialisable"),
        );
        doc.insert("data".into(), self.data.resolved());
        doc.insert("model".into(), self.model.resolved());
        doc.insert(
            "lora".into(),
            serde_json::to_value(&self.config.lora).expect("serialisable"),
        );
        let mut train = self.train.resolved();
        if let (Some(t), Ok(serde_json::Value::Object(cp))) =
            (train.as_object_mut(), serde_json::to_value(&self.config.checkpoint))
        {
            t.extend(cp);
        }
        doc.insert("train".into(), train);
        doc.insert("eval".into(), self.eval.resolved());
        doc.insert(
            "monitor".into(),
            serde_json::to_value(&self.config.monitor).expect("serialisable"),
        );
        strip_nulls(serde_json::Value::Object(doc))
    }

    /// How the model is built: `[model] dtype` and `[train] gradient-checkpointing`.
    pub fn model_options(&self) -> ModelOptions {
        ModelOptions {
            dtype: self.model.options().dtype,
            gradient_checkpointing: self.train.gradient_checkpointing(),
        }
    }

    /// Reads the data and builds the model: everything that can fail on input happens here.
    /// The model stage's model, with the LoRA patterns checked against the
    /// modules it actually adapted (whatever the backend).
    pub fn build_model(&self, ctx: &StageContext, task: &Task) -> Result<Box<dyn AdapterModel>> {
        let lora = &self.config.lora;
        let model = self.model.build(ctx, lora, task, &self.model_options())?;
        lora_core::lora::check_patterns(lora, model.params().iter().map(|p| p.name.as_str()))?;
        Ok(model)
    }

    pub fn prepare(&self, ctx: &StageContext) -> Result<(PreparedData, Box<dyn AdapterModel>)> {
        let data = self.data.prepare(ctx)?;
        let model = self.build_model(ctx, &data.task)?;
        Ok((data, model))
    }
}

/// The value, or its diagnostics added to `diags`: stages are built one by one
/// so that every problem is reported at once.
pub(crate) fn take<T>(diags: &mut Diagnostics, r: std::result::Result<T, Diagnostics>) -> Option<T> {
    r.map_err(|e| diags.0.extend(e.0)).ok()
}

/// TOML has no null: an unset optional value is left out.
fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// What a finished run leaves behind, for the CLI to print.
pub struct RunOutcome {
    pub output_dir: PathBuf,
    pub final_eval: EvalReport,
    pub elapsed_s: f64,
}

/// How `lora run` runs a pipeline.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// No progress bar.
    pub quiet: bool,
    /// Continue from a checkpoint: `Some(None)` looks in `<output-dir>/checkpoints`.
    pub resume: Option<Option<PathBuf>>,
    /// Accept the safe differences between the checkpoint's run and this one.
    pub force: bool,
    /// Stop on SIGINT and SIGTERM with a checkpoint (the CLI; tests leave it off).
    pub handle_signals: bool,
}

/// Test hook (fault injection, used by the tests only): the n-th checkpoint
/// write of the process fails with "no space left on device" half-way through.
pub const FAIL_CHECKPOINT_ENV: &str = "LORA_TEST_FAIL_CHECKPOINT";

/// The checkpoint to continue from, checked against this run; `None` when the
/// run's own checkpoint folder has none yet (a run stopped before its first
/// checkpoint starts again from the beginning, so that `--resume` is always safe
/// to pass).
fn find_resume(
    dir: Option<&Path>,
    default_dir: &Path,
    model: &dyn AdapterModel,
    identity: &Identity,
    config: &serde_json::Value,
    force: bool,
) -> Result<Option<ResumeFrom>> {
    let given = dir.is_some();
    let dir = dir.unwrap_or(default_dir);
    if !given && !dir.exists() {
        eprintln!("no checkpoint in {} yet: starting from the beginning", dir.display());
        return Ok(None);
    }
    let found = checkpoint::find_latest(dir).map_err(|e| {
        Error::Invalid(
            Diagnostic::error("resume::no-checkpoint", format!("nothing to resume from: {e}"))
                .help("`--resume` reads <output-dir>/checkpoints, or the folder given as --resume=DIR")
                .into(),
        )
    })?;
    for (path, why) in &found.skipped {
        eprintln!("warning: skipping checkpoint {}: {why}", path.display());
    }
    let damaged = found.skipped.iter().any(|(p, _)| checkpoint::is_checkpoint_name(p));
    if found.latest.is_none() && !given && !damaged {
        eprintln!("no checkpoint in {} yet: starting from the beginning", dir.display());
        return Ok(None);
    }
    let Some((path, manifest)) = found.latest else {
        return Err(Error::Invalid(
            Diagnostic::error(
                "resume::no-checkpoint",
                format!("no valid checkpoint in {}", dir.display()),
            )
            .help("every checkpoint there is damaged (see the warnings above); delete the folder to start afresh")
            .into(),
        ));
    };
    let saved_config = checkpoint::read_config(&path)?;
    let changes = crate::resume::changes(&manifest.identity, &saved_config, identity, config);
    for line in crate::resume::check(&path, &manifest, &changes, force)? {
        eprintln!("warning: {line}");
    }
    let from = checkpoint::load(&path, model.params())?;
    eprintln!(
        "resuming from {} (step {}, epoch {}, micro-batch {} of the epoch)",
        path.display(),
        manifest.step,
        manifest.epoch,
        manifest.batch_in_epoch
    );
    Ok(Some(from))
}

/// The metrics log: new, or the interrupted run's cut back to the checkpoint,
/// whose earlier lines are replayed into the other sinks.
fn metrics_log(path: &Path, resume: Option<&ResumeFrom>) -> Result<(lora_monitor::JsonlSink, Vec<TrainEvent>)> {
    let state = resume.and_then(|r| {
        r.snapshot
            .loop_state
            .callbacks
            .iter()
            .find(|c| c.name == lora_monitor::jsonl::NAME)
    });
    let Some(state) = state else {
        return Ok((lora_monitor::JsonlSink::create(path)?, Vec::new()));
    };
    let r = lora_monitor::JsonlSink::resume(path, &state.state)?;
    if let Some(why) = &r.lost {
        eprintln!("warning: the metrics log before the checkpoint is lost ({why}); it starts again here");
    }
    let events = r
        .prefix
        .iter()
        .filter_map(|l| serde_json::from_str::<TrainEvent>(l).ok())
        .collect();
    Ok((r.sink, events))
}

/// `lora run`: train, evaluate and write the outputs of a validated pipeline.
pub fn run(pipeline: Pipeline, assets: &dyn AssetResolver, quiet: bool) -> Result<RunOutcome> {
    run_with(
        pipeline,
        assets,
        RunOptions {
            quiet,
            ..RunOptions::default()
        },
    )
}

/// `lora run` with its options: resuming, signals; in this one process.
pub fn run_with(pipeline: Pipeline, assets: &dyn AssetResolver, options: RunOptions) -> Result<RunOutcome> {
    let processes = crate::distributed::Processes::single();
    let mut strategy = processes.strategy(pipeline.config.strategy.as_ref())?;
    run_on(pipeline, assets, options, strategy.as_mut())
}

/// `lora run` as one of the processes of `strategy`: every process trains
/// its rows; rank 0 alone writes the outputs, the log, the checkpoints and
/// serves the dashboard (the others keep the pipeline's own callbacks, which
/// see the same reduced losses and evaluations and so decide alike).
pub fn run_on(
    mut pipeline: Pipeline,
    assets: &dyn AssetResolver,
    options: RunOptions,
    strategy: &mut dyn lora_core::strategy::Strategy,
) -> Result<RunOutcome> {
    let (rank, world) = strategy.rank();
    if world > 1 && pipeline.train.auto_batch().is_some() {
        // Each rank would measure and choose on its own, and might choose differently.
        return Err(Error::Other(format!(
            "batch-size = \"auto\" is chosen by one process; on {world} processes set [train] batch-size (the global batch: each process trains 1/{world} of it)"
        )));
    }
    if rank != 0 {
        return run_quietly(pipeline, assets, options, strategy);
    }
    let started = std::time::Instant::now();
    let ctx = pipeline.context(assets)?;
    let (data, mut model) = pipeline.prepare(&ctx)?;
    let summary = model.summary();
    if world > 1 {
        eprintln!(
            "strategy: {} on {world} processes; each trains 1/{world} of every batch",
            strategy.name()
        );
    }
    eprintln!(
        "model: {} on {}, {} parameters, {} trainable ({:.2}%); data: {} train / {} validation, labels {:?}",
        summary.architecture,
        model.backend(),
        summary.total_parameters,
        summary.trainable_parameters,
        100.0 * summary.trainable_parameters as f64 / summary.total_parameters as f64,
        data.train.len(),
        data.validation.len(),
        data.label_names()
    );
    if let Some(choice) = crate::plan::resolve_auto(&mut pipeline, model.as_mut(), &data)? {
        let chosen = choice
            .candidates
            .iter()
            .find(|c| c.micro_batch == choice.micro_batch)
            .map(|c| crate::plan::describe(&c.predicted))
            .unwrap_or_default();
        eprintln!(
            "batch-size auto ({}): micro-batch {} x {} accumulation steps = effective batch {}; predicted peak {chosen}; budget {:.0} MiB",
            if choice.throughput { "throughput" } else { "memory" },
            choice.micro_batch,
            choice.accumulation,
            choice.effective,
            crate::plan::mib(choice.budget_bytes as f64)
        );
    }

    let out = pipeline.config.run.output_dir.clone();
    let config = crate::resume::resolved_config(&pipeline);
    let identity = crate::resume::identity(&pipeline, &ctx, &data, &config)?;
    let checkpoints_dir = out.join("checkpoints");
    let resume = match &options.resume {
        Some(dir) => find_resume(
            dir.as_deref(),
            &checkpoints_dir,
            model.as_ref(),
            &identity,
            &config,
            options.force,
        )?,
        None => {
            // A fresh run would mix its checkpoints with an earlier run's.
            let earlier = std::fs::read_dir(&checkpoints_dir).is_ok_and(|mut d| d.next().is_some());
            if earlier {
                return Err(Error::Invalid(
                    Diagnostic::error(
                        "resume::earlier-checkpoints",
                        format!("{} holds checkpoints of an earlier run", checkpoints_dir.display()),
                    )
                    .help("add --resume to continue that run, or delete the folder to start afresh")
                    .into(),
                ));
            }
            None
        }
    };

    // Validation has passed: only now does anything reach the output folder.
    std::fs::create_dir_all(&out).map_err(|e| Error::io("cannot create output folder", &out, e))?;
    write_atomic(&out.join("pipeline.toml"), pipeline.config.text().as_bytes())?;
    write_atomic(&out.join("resolved-config.toml"), pipeline.resolved_toml().as_bytes())?;
    write_atomic(
        &out.join("labels.json"),
        serde_json::to_string_pretty(&data.label_names())
            .expect("json")
            .as_bytes(),
    )?;

    let monitor_cfg = pipeline.config.monitor.clone();
    let tracker = Tracker::default();
    let (log, earlier_events) = metrics_log(&out.join("metrics.jsonl"), resume.as_ref())?;
    let log_path = log.partial_path().to_path_buf();
    let mut callbacks: Vec<Box<dyn Callback>> = vec![
        Box::new(tracker.clone()),
        Box::new(log),
        Box::new(lora_monitor::Monitor::start(
            &monitor_cfg,
            monitor_cfg.dashboard,
            &pipeline.config.run.name,
            monitor_cfg.report.then(|| out.join("report")),
        )?),
    ];
    if !options.quiet {
        callbacks.push(Box::new(lora_monitor::Progress::new(10)));
    }
    // A resumed run's dashboard and report show the whole run: the log's
    // earlier events go to every sink but the log itself (the progress bar
    // needs only the start).
    for event in &earlier_events {
        for (i, c) in callbacks.iter_mut().enumerate() {
            let progress = i == 3;
            if i != 1 && (!progress || matches!(event, TrainEvent::Start { .. })) {
                c.on_event(event)?;
            }
        }
    }
    callbacks.append(&mut pipeline.callbacks);

    let base_name = pipeline.model.base_model_name(&ctx)?;
    let fail_save = std::env::var(FAIL_CHECKPOINT_ENV).ok().and_then(|v| v.parse().ok());
    let mut writer = CheckpointWriter::new(
        &out,
        pipeline.config.checkpoint.clone(),
        identity,
        config,
        pipeline.config.lora.clone(),
        base_name.clone(),
    )
    .sync_before(log_path)
    .fail_save(fail_save);
    writer.clean_partial();
    if options.handle_signals {
        let stop = crate::signals::StopRequest::install()
            .map_err(|e| Error::Other(format!("cannot install signal handlers: {e}")))?;
        writer = writer.with_interrupt(move || stop.requested());
    }
    let seed = pipeline.config.run.seed;
    let trained = pipeline.train.train(TrainContext {
        model: model.as_mut(),
        data: &data,
        eval: pipeline.eval.as_ref(),
        callbacks: &mut callbacks,
        strategy,
        seed,
        checkpoints: Some(&mut writer),
        resume,
    });
    let train = match trained {
        // The checkpoint is written; the log stays open (`.partial`) for the resume.
        Err(e @ Error::Interrupted { .. }) => return Err(e),
        Ok(t) => t,
        Err(e) => {
            // callbacks[1] is the metrics log, callbacks[2] the monitor.
            tracker.close_failed_run(&mut callbacks[1..3], &e);
            return Err(e);
        }
    };
    let final_eval = train
        .evals
        .last()
        .map(|(_, r)| r.clone())
        .ok_or_else(|| Error::Other("no evaluation ran".into()))?;

    // A model that trained its base (pretraining) writes the whole model as a
    // base for later runs; an adapter model writes PEFT's adapter files.
    if !model.save_base(&out)? {
        lora_train::save_adapter(&out, model.as_ref(), &pipeline.config.lora, &base_name)?;
        // The base's hash beside the adapter: `lora export` refuses another base.
        lora_export::record::write(&out, &pipeline.model.base_files(&ctx)?)?;
    }
    let metrics = json!({
        "run": pipeline.config.run.name,
        "backend": model.backend(),
        "seed": seed,
        "model": {
            "architecture": summary.architecture,
            "total_parameters": summary.total_parameters,
            "trainable_parameters": summary.trainable_parameters,
        },
        "data": { "train": data.train.len(), "validation": data.validation.len(), "labels": data.label_names() },
        "train": { "steps": train.steps, "elapsed_s": train.elapsed_s, "losses": train.losses },
        "evaluations": train.evals.iter().map(|(s, r)| json!({"step": s, "report": r})).collect::<Vec<_>>(),
        "final": final_eval,
        "wall_time_s": started.elapsed().as_secs_f64(),
    });
    write_atomic(
        &out.join("metrics.json"),
        serde_json::to_string_pretty(&metrics).expect("json").as_bytes(),
    )?;
    // Keep `pipeline` alive until here so that its stages' resources outlive training.
    let _ = &mut pipeline;
    Ok(RunOutcome {
        output_dir: out,
        final_eval,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// A rank other than 0: the same training, no outputs, no log, no checkpoint
/// written (its own state goes to rank 0's when the strategy keeps one per process).
fn run_quietly(
    mut pipeline: Pipeline,
    assets: &dyn AssetResolver,
    options: RunOptions,
    strategy: &mut dyn lora_core::strategy::Strategy,
) -> Result<RunOutcome> {
    let started = std::time::Instant::now();
    let ctx = pipeline.context(assets)?;
    let (data, mut model) = pipeline.prepare(&ctx)?;
    crate::plan::resolve_auto(&mut pipeline, model.as_mut(), &data)?;
    let out = pipeline.config.run.output_dir.clone();
    let resume = match &options.resume {
        Some(dir) => {
            let config = crate::resume::resolved_config(&pipeline);
            let identity = crate::resume::identity(&pipeline, &ctx, &data, &config)?;
            find_resume(
                dir.as_deref(),
                &out.join("checkpoints"),
                model.as_ref(),
                &identity,
                &config,
                options.force,
            )?
        }
        None => None,
    };
    // Rank 0 writes the checkpoints; this process hands it its own state when one is due.
    let mut follower = checkpoint::Follower::new(pipeline.config.checkpoint.clone());
    let trained = pipeline.train.train(TrainContext {
        model: model.as_mut(),
        data: &data,
        eval: pipeline.eval.as_ref(),
        callbacks: &mut pipeline.callbacks,
        strategy,
        seed: pipeline.config.run.seed,
        checkpoints: Some(&mut follower),
        resume,
    })?;
    let final_eval = trained
        .evals
        .last()
        .map(|(_, r)| r.clone())
        .ok_or_else(|| Error::Other("no evaluation ran".into()))?;
    Ok(RunOutcome {
        output_dir: out,
        final_eval,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// What the run's own sinks need to close a failed run: the last step and epoch
/// seen, and whether the loop already announced the failure.
#[derive(Clone, Default)]
struct Tracker(std::sync::Arc<std::sync::Mutex<Tracked>>);

#[derive(Default)]
struct Tracked {
    step: usize,
    epoch: usize,
    elapsed_s: f64,
    fail_announced: bool,
}

impl Callback for Tracker {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            TrainEvent::Step(m) => (t.step, t.epoch, t.elapsed_s) = (m.step, m.epoch, m.elapsed_s),
            TrainEvent::Intervention { action, elapsed_s, .. } => {
                t.fail_announced |= action == "fail";
                t.elapsed_s = *elapsed_s;
            }
            _ => {}
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "run"
    }
}

impl Tracker {
    /// A run that failed while training (a callback's error, a plugin's panic, bad
    /// data, ...): the metrics log and the report still say why. The failure is
    /// announced as a `fail` intervention (unless the loop did), then the log gets
    /// its `end` line and is renamed from `.partial`; the monitor writes its report
    /// when it is dropped. Best effort: the run's own error is what gets reported.
    fn close_failed_run(&self, sinks: &mut [Box<dyn Callback>], error: &Error) {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for sink in sinks.iter_mut() {
            if !t.fail_announced {
                let _ = sink.on_event(&TrainEvent::Intervention {
                    step: t.step,
                    source: "run".into(),
                    action: "fail".into(),
                    message: error.to_string(),
                    elapsed_s: t.elapsed_s,
                });
            }
        }
        if let Some(log) = sinks.first_mut() {
            let _ = log.on_event(&TrainEvent::End {
                step: t.step,
                epoch: t.epoch,
                elapsed_s: t.elapsed_s,
            });
        }
    }
}

/// `lora eval`: the pipeline's validation split, scored with an adapter.
pub fn eval(pipeline: Pipeline, adapter: &Path, assets: &dyn AssetResolver) -> Result<EvalReport> {
    let ctx = pipeline.context(assets)?;
    let (data, mut model) = pipeline.prepare(&ctx)?;
    lora_train::load_adapter(adapter, model.as_mut())?;
    pipeline
        .eval
        .evaluate(model.as_ref(), data.validation.as_ref(), &data.task)
}

/// Class probabilities of one input.
pub struct Prediction {
    /// `"text"` or `"image"`: what the input is.
    pub kind: &'static str,
    /// The text, or the image file's path.
    pub input: String,
    pub label: String,
    pub probabilities: Vec<(String, f64)>,
}

/// `lora predict`: loads the adapter of a run and classifies texts, or image
/// files when the pipeline's data are images.
pub fn predict(
    config: PipelineConfig,
    adapter: &Path,
    inputs: &[String],
    assets: &dyn AssetResolver,
) -> Result<Vec<Prediction>> {
    let labels_path = adapter.join("labels.json");
    let labels: Vec<String> = match std::fs::read_to_string(&labels_path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| Error::Data(format!("{}: {e}", labels_path.display())))?,
        Err(e) => return Err(Error::io("cannot read the run's label names", &labels_path, e)),
    };
    let pipeline = Pipeline::build(config)?;
    let ctx = pipeline.context(assets)?;
    let encoder = pipeline.data.encoder(&ctx)?;
    let task = Task::classification(labels.clone());
    let mut model = pipeline.build_model(&ctx, &task)?;
    lora_train::load_adapter(adapter, model.as_mut())?;
    let batch = encoder.encode_inputs(inputs)?;
    let logits = model.predict(&batch)?;
    Ok(inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let p = lora_train::metrics::softmax(logits.row(i));
            let best = lora_train::metrics::argmax(logits.row(i));
            Prediction {
                kind: encoder.input_kind(),
                input: input.clone(),
                label: labels[best].clone(),
                probabilities: labels.iter().cloned().zip(p).collect(),
            }
        })
        .collect())
}
