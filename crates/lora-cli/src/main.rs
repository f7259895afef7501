//! `lora`: run, evaluate and apply LoRA fine-tuning pipelines.
//!
//! Exit codes: 0 success, 1 failure while running, 2 invalid configuration or input.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use lora_assets::CacheResolver;
use lora_core::config::PipelineConfig;
use lora_core::diag::Severity;
use lora_core::registry::{self, Entry};
use lora_core::stage::AssetResolver;
use lora_validate::Overrides;

#[derive(Parser)]
#[command(
    name = "lora",
    version,
    about = "LoRA fine-tuning as a configured, validated pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Layering on top of the file: `--set`, after the `LORA__*` and `OVERRIDE_LR` variables.
#[derive(Args, Clone, Default)]
struct Layers {
    /// Override a value: `--set train.batch-size=16` (repeatable; applied after the environment).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
}

impl Layers {
    fn overrides(&self, extra: Vec<String>) -> Overrides {
        let mut sets = self.sets.clone();
        sets.extend(extra);
        Overrides::from_process(sets)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Validate, train, evaluate and write the adapter of a pipeline.
    Run {
        file: PathBuf,
        /// No progress bar; only the summary.
        #[arg(long)]
        quiet: bool,
        /// Override `[run] backend` (for example `burn`), keeping everything else.
        #[arg(long)]
        backend: Option<String>,
        /// Override `[run] output-dir`.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Serve the live dashboard and /metrics on 127.0.0.1 (`[monitor] dashboard = true`).
        #[arg(long)]
        dashboard: bool,
        /// Port of the dashboard (`[monitor] port`; 0 picks a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Continue from the latest valid checkpoint in <output-dir>/checkpoints,
        /// or in DIR (`--resume=DIR`: a checkpoints folder or one checkpoint).
        #[arg(long, value_name = "DIR", num_args = 0..=1, require_equals = true)]
        resume: Option<Option<PathBuf>>,
        /// With --resume: accept the safe changes since the checkpoint (more epochs, another
        /// evaluation cadence, ...); other changes are refused all the same.
        #[arg(long, requires = "resume")]
        force: bool,
        /// Run as trial TRIAL of the study whose journal is JOURNAL (set by `lora search`).
        #[arg(long, value_name = "JOURNAL:TRIAL", hide = true)]
        trial: Option<String>,
        /// Train on N processes: starts `mpirun -np N` with this command (the
        /// pipeline's `[strategy]`, ddp by default). `mpirun -np N lora run` works too.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        nproc: Option<u32>,
        #[command(flatten)]
        layers: Layers,
    },
    /// Search hyperparameters: trials of the pipeline drawn from its `[search]`
    /// table (TPE or random), pruned when behind; the study is a journal in
    /// `OUTPUT-DIR/search/`, and the best trial is written there as a pipeline.
    Search {
        file: PathBuf,
        /// Continue the study in the output folder, keeping its finished trials.
        #[arg(long)]
        resume: bool,
        /// Serve the study live on 127.0.0.1 (`[monitor] dashboard = true`).
        #[arg(long)]
        dashboard: bool,
        /// Port of the study's page (`[monitor] port`; 0 picks a free one).
        #[arg(long)]
        port: Option<u16>,
        #[command(flatten)]
        layers: Layers,
    },
    /// Score an adapter on the pipeline's validation split (JSON on stdout).
    Eval {
        #[arg(long)]
        adapter: PathBuf,
        file: PathBuf,
        #[command(flatten)]
        layers: Layers,
    },
    /// Class probabilities of texts, or of image files for an image pipeline,
    /// under a run's adapter (JSON lines on stdout).
    Predict {
        #[arg(long)]
        adapter: PathBuf,
        /// The pipeline; defaults to the copy the run saved beside the adapter.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Texts; for an image pipeline, paths of PNG or JPEG files.
        #[arg(required = true)]
        inputs: Vec<String>,
    },
    /// Text from a causal language model (the base alone, or with a run's adapter),
    /// streamed to stdout until the end of the turn.
    Generate {
        /// A run's output folder: its pipeline.toml and adapter.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The GGUF file when no adapter is given (default: the SmolLM2 asset); an
        /// exported file (`lora export --merge`, any of its types) runs as it is.
        #[arg(long)]
        model: Option<String>,
        /// Render the prompt as a user turn with the model's chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value = "candle")]
        backend: String,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// 0 decodes greedily.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the new tokens per second (prompt included in the time) on stderr.
        #[arg(long)]
        timing: bool,
        prompt: String,
    },
    /// Export a run for deployment: `--merge` folds the adapter into the base and
    /// writes GGUF (Llama, quantized with --quant) or Hugging Face safetensors
    /// (Llama, BERT, ViT); without --merge, the adapter as llama.cpp's LoRA GGUF.
    /// Nothing is written unless every check passes (exit 2).
    Export {
        /// A run's output folder: its pipeline.toml, adapter and base-model.json.
        #[arg(long)]
        adapter: PathBuf,
        /// Fold the adapter into the base.
        #[arg(long)]
        merge: bool,
        /// gguf or safetensors.
        #[arg(long, default_value = "gguf")]
        format: String,
        /// The merged GGUF's type: f32, f16 (default), q8_0, q6_k, q5_0, q4_1, q4_0, q4_k,
        /// q4_k_m (llama.cpp's mix).
        #[arg(long)]
        quant: Option<String>,
        /// The base model (default: the run's `[model] path`).
        #[arg(long)]
        base: Option<String>,
        /// Round with ggml's reference quantizers only (as llama-quantize
        /// without an importance matrix). By default a Q4_1 matrix of a Q4_1
        /// base keeps the base's grid and rounds without bias, so that the
        /// update is not rounded away.
        #[arg(long)]
        reference_rounding: bool,
        /// Activation-aware rounding of the Q4_0 and Q5_0 matrices: run this
        /// many of the run's training conversations through the merged model
        /// and round each matrix to lower its error on their inputs.
        #[arg(long, value_name = "N")]
        calibrate: Option<usize>,
        /// How --calibrate rounds: gptq (error feedback through the inputs'
        /// inverse Hessian, default) or imatrix (llama.cpp's importance matrix).
        #[arg(long, value_name = "METHOD", default_value = "gptq", value_parser = ["gptq", "imatrix"])]
        calibration: String,
        /// The file (GGUF) or the new folder (safetensors) to write.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Check a pipeline against the model (header only), the data and the machine, without running it.
    Validate {
        file: PathBuf,
        #[command(flatten)]
        layers: Layers,
    },
    /// The memory planner's prediction of a training run's peak memory (loads
    /// the data and the model; `--json` for a machine-readable answer).
    Plan {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        layers: Layers,
    },
    /// Layered configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Every component (data sources, augmentations, models, ..., rules) with its origin;
    /// with a pipeline, its `[plugins]` are loaded first.
    Plugins {
        file: Option<PathBuf>,
        #[command(flatten)]
        layers: Layers,
    },
    /// List every validation rule (`--markdown`: the docs/RULES.md page); a plugin's
    /// rules with `--pipeline FILE` (its `[plugins]`) or `--plugin LIB`.
    Rules {
        /// Print one rule's documentation.
        id: Option<String>,
        #[arg(long)]
        markdown: bool,
        /// Load this pipeline's `[plugins] paths` first, so that their rules are listed.
        #[arg(long, value_name = "FILE")]
        pipeline: Option<PathBuf>,
        /// Load this plugin library first (repeatable).
        #[arg(long = "plugin", value_name = "LIB")]
        plugins: Vec<PathBuf>,
        #[command(flatten)]
        layers: Layers,
    },
    /// List every registered component: data sources, models, trainers, ...
    List,
    /// Training-step speed and peak memory on MiniLM-L6 (JSON lines on stdout).
    Bench {
        #[arg(long, default_value = "candle")]
        backend: String,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Compare a short training run with and without monitoring instead.
        #[arg(long)]
        monitoring: bool,
        /// The causal language model instead (SmolLM2-135M over its Q4_1 GGUF):
        /// training tokens/s at batch x 256, generation tokens/s, peak RSS.
        #[arg(long)]
        causal: bool,
        /// One case of this batch size (with --seq-len) instead of the default cases.
        #[arg(long, requires = "seq_len")]
        batch: Option<usize>,
        #[arg(long, requires = "batch")]
        seq_len: Option<usize>,
        /// Recompute each block in the backward pass.
        #[arg(long)]
        checkpointing: bool,
        /// The frozen base weights' type: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Time the forward pass in evaluation mode (`predict`) instead of a training step;
        /// with --causal, greedy generation alone.
        #[arg(long)]
        inference: bool,
        /// Train with BERT's own hidden and attention dropout (`[model] base-dropout = true`).
        #[arg(long)]
        dropout: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// The resolved configuration, every value with where it came from.
    Show {
        file: PathBuf,
        #[command(flatten)]
        layers: Layers,
    },
}

/// `lora --version`: the program's version, the plugin interface it loads and the
/// compiler it was built with (a plugin must be built against both).
fn long_version() -> &'static str {
    let text = format!(
        "{}\nplugin interface: lora-plugin-api {}\ncompiler: {}",
        env!("CARGO_PKG_VERSION"),
        lora_plugin_host::API_VERSION,
        lora_plugin_host::RUSTC_VERSION
    );
    Box::leak(text.into_boxed_str())
}

fn main() -> ExitCode {
    lora_cli::threads::short_spins();
    lora_cli::alloc::keep_freed_memory();
    lora_cli::pipes::end_quietly_on_closed_pipes();
    let matches = Cli::command().long_version(long_version()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", render(&e));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn render(e: &lora_core::Error) -> String {
    match e {
        lora_core::Error::Invalid(d) => d.to_string(),
        other => format!("error: {other}"),
    }
}

/// Validates a layered pipeline; warnings are printed, errors stop before any work.
fn validated(
    file: &std::path::Path,
    overrides: Overrides,
    assets: &dyn AssetResolver,
) -> lora_core::Result<lora_cli::pipeline::Pipeline> {
    let checked = lora_cli::validate::check_file(file, &overrides, assets)?;
    if !checked.has_errors() && !checked.diagnostics.is_empty() {
        eprintln!("{}\n", checked.diagnostics);
    }
    checked.into_pipeline()
}

/// This process's arguments without `--nproc N` (for the ranks `--nproc` starts).
fn args_without_nproc() -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let start = args.iter().position(|a| a == "run").map_or(0, |i| i + 1);
    let mut out = Vec::new();
    let mut skip = false;
    for a in &args[start..] {
        if skip {
            skip = false;
        } else if a == "--nproc" {
            skip = true;
        } else if !a.starts_with("--nproc=") {
            out.push(a.clone());
        }
    }
    out
}

fn run(command: Command) -> lora_core::Result<()> {
    let assets = CacheResolver;
    match command {
        Command::Run {
            file,
            quiet,
            backend,
            output_dir,
            dashboard,
            port,
            resume,
            force,
            trial,
            nproc,
            layers,
        } => {
            if let Some(n) = nproc {
                let code = lora_cli::distributed::spawn(n as usize, &args_without_nproc())?;
                std::process::exit(code);
            }
            let processes = lora_cli::distributed::Processes::from_launcher()?;
            // The flags are overrides like any other, so diagnostics name them.
            let mut extra = Vec::new();
            if let Some(b) = backend {
                extra.push(format!("run.backend={b}"));
            }
            if let Some(o) = output_dir {
                extra.push(format!("run.output-dir={}", o.display()));
            }
            if dashboard {
                extra.push("monitor.dashboard=true".into());
            }
            if let Some(p) = port {
                extra.push(format!("monitor.port={p}"));
            }
            if processes.rank() > 0 {
                // Rank 0 serves the dashboard: the others must not find its port taken.
                extra.push("monitor.dashboard=false".into());
            }
            let checked = lora_cli::validate::check_file(&file, &layers.overrides(extra), &assets);
            let mut pipeline = match checked.map_err(lora_core::Error::Invalid).and_then(|c| {
                // Every rank finds the same warnings: rank 0 prints them.
                if processes.rank() == 0 && !c.has_errors() && !c.diagnostics.is_empty() {
                    eprintln!("{}\n", c.diagnostics);
                }
                c.into_pipeline()
            }) {
                // Every rank finds the same problems: rank 0 says them.
                Err(e) if processes.rank() > 0 => std::process::exit(e.exit_code()),
                other => other?,
            };
            let mut strategy = processes.strategy(pipeline.config.strategy.as_ref())?;
            if let Some(trial) = trial {
                pipeline
                    .callbacks
                    .push(Box::new(lora_search::TrialReporter::from_arg(&trial)?));
            }
            if pipeline.config.monitor.dashboard {
                lora_cli::pipes::survive_closed_pipes();
            }
            let options = lora_cli::pipeline::RunOptions {
                quiet,
                resume,
                force,
                handle_signals: true,
            };
            let outcome = lora_cli::pipeline::run_on(pipeline, &assets, options, strategy.as_mut());
            if let Err(e) = &outcome
                && processes.world() > 1
                && !matches!(e, lora_core::Error::Interrupted { .. })
            {
                eprintln!("rank {} of {}: {}", processes.rank(), processes.world(), render(e));
                processes.abort_others(e.exit_code());
            }
            let out = match outcome {
                Err(lora_core::Error::Interrupted {
                    signal,
                    step,
                    checkpoint,
                }) => {
                    eprintln!(
                        "{signal}: stopped after step {step}; checkpoint written to {}\n\
                         continue with: lora run {} --resume",
                        checkpoint.display(),
                        file.display()
                    );
                    let code = lora_core::Error::Interrupted {
                        signal,
                        step,
                        checkpoint,
                    }
                    .exit_code();
                    std::process::exit(code);
                }
                other => other?,
            };
            if processes.rank() > 0 {
                return Ok(());
            }
            let metrics: Vec<String> = out
                .final_eval
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            // Not `println!`: with the dashboard, a closed stdout is an error, not the end.
            let _ = writeln!(
                std::io::stdout(),
                "{}: validation loss {:.4} {} in {:.1}s; outputs written to {}",
                file.display(),
                out.final_eval.loss,
                metrics.join(" "),
                out.elapsed_s,
                out.output_dir.display()
            );
        }
        Command::Search {
            file,
            resume,
            dashboard,
            port,
            layers,
        } => {
            let opts = lora_cli::search::SearchOptions {
                file,
                sets: layers.sets,
                resume,
                dashboard,
                port,
            };
            lora_cli::search::search(&opts, &assets)?;
        }
        Command::Eval { adapter, file, layers } => {
            let pipeline = validated(&file, layers.overrides(Vec::new()), &assets)?;
            let report = lora_cli::pipeline::eval(pipeline, &adapter, &assets)?;
            println!("{}", serde_json::to_string_pretty(&report).expect("json"));
        }
        Command::Predict {
            adapter,
            config,
            inputs,
        } => {
            let file = config.unwrap_or_else(|| adapter.join("pipeline.toml"));
            let composed = lora_validate::compose(&file, &Overrides::from_process(Vec::new()))?;
            // The pipeline's plugins first: its augmentations and callbacks are theirs.
            let doc = lora_core::doc::ConfigDoc::parse(&composed.source)?;
            let diags = lora_cli::plugins::load_from(&doc);
            if diags.has_errors() {
                return Err(lora_core::Error::Invalid(diags));
            }
            let config = PipelineConfig::from_source(composed.source)?;
            for p in lora_cli::pipeline::predict(config, &adapter, &inputs, &assets)? {
                let probs: serde_json::Map<String, serde_json::Value> = p
                    .probabilities
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::json!(v)))
                    .collect();
                println!(
                    "{}",
                    serde_json::Value::Object(serde_json::Map::from_iter([
                        (p.kind.to_string(), serde_json::json!(p.input)),
                        ("label".to_string(), serde_json::json!(p.label)),
                        ("probabilities".to_string(), serde_json::Value::Object(probs)),
                    ]))
                );
            }
        }
        Command::Export {
            adapter,
            merge,
            format,
            quant,
            base,
            reference_rounding,
            calibrate,
            calibration,
            output,
        } => {
            let req = lora_cli::export::Request {
                run_dir: adapter,
                merge,
                format,
                quant,
                base,
                rounding: if reference_rounding {
                    lora_export::llama::Rounding::Reference
                } else {
                    lora_export::llama::Rounding::Fitted
                },
                calibrate,
                calibration: if calibration == "imatrix" {
                    lora_export::calibrated::Method::Imatrix
                } else {
                    lora_export::calibrated::Method::Gptq
                },
                output,
            };
            let (path, bytes) = lora_cli::export::export(&req, &assets)?;
            println!("wrote {} ({:.1} MB)", path.display(), bytes as f64 / 1e6);
        }
        Command::Generate {
            adapter,
            model,
            chat,
            backend,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            timing,
            prompt,
        } => {
            use lora_cli::generate::{Sampling, Source, generate, load, prompt_ids};
            let sampling = Sampling {
                temperature,
                top_k,
                top_p,
                seed,
            };
            sampling.check()?;
            let (mut m, tok) = load(
                &Source {
                    adapter,
                    model,
                    backend,
                },
                &assets,
            )?;
            let ids = prompt_ids(&tok, &prompt, chat)?;
            lora_cli::pipes::survive_closed_pipes();
            let started = std::time::Instant::now();
            let new = generate(
                m.as_mut(),
                &tok,
                &ids,
                max_new_tokens,
                &sampling,
                &mut std::io::stdout(),
            )?;
            if timing {
                let s = started.elapsed().as_secs_f64();
                eprintln!(
                    "{} prompt tokens, {} new tokens in {s:.2} s ({:.2} tokens/s)",
                    ids.len(),
                    new.len(),
                    new.len() as f64 / s
                );
            }
        }
        Command::Validate { file, layers } => {
            let started = std::time::Instant::now();
            let checked = lora_cli::validate::check_file(&file, &layers.overrides(Vec::new()), &assets)?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if checked.has_errors() {
                return Err(lora_core::Error::Invalid(checked.diagnostics));
            }
            let warnings = checked.diagnostics.0.len();
            if warnings > 0 {
                eprintln!("{}\n", checked.diagnostics);
            }
            println!("{}: ok, {warnings} warning(s), checked in {ms:.0} ms", file.display());
        }
        Command::Plan { file, json, layers } => {
            let mut pipeline = validated(&file, layers.overrides(Vec::new()), &assets)?;
            let ctx = pipeline.context(&assets)?;
            let (data, mut model) = pipeline.prepare(&ctx)?;
            let available = lora_validate::machine::facts().available_memory_bytes;
            let planner = lora_cli::plan::Planner::new(&pipeline, model.as_ref(), &data, available)?;
            let (micro, accumulation, choice) = match pipeline.train.auto_batch() {
                Some(auto) => {
                    let choice = planner.choose(&auto, model.as_mut(), &data)?;
                    (choice.micro_batch, choice.accumulation, Some(choice))
                }
                None => {
                    let (m, a) = pipeline.train.batch().unwrap_or((1, 1));
                    (m, a, None)
                }
            };
            let predicted = planner.predict(micro);
            let _ = pipeline.train.set_batch(micro, accumulation);
            if json {
                let answer = serde_json::json!({
                    "backend": planner.backend,
                    "dtype": planner.options.dtype.name(),
                    "gradient_checkpointing": planner.options.gradient_checkpointing,
                    "micro_batch": micro,
                    "accumulation": accumulation,
                    "train_tokens": planner.train_tokens,
                    "eval_batch": planner.eval_batch,
                    "eval_tokens": planner.eval_tokens,
                    "available_bytes": available,
                    "predicted": predicted,
                    "auto": choice,
                });
                println!("{}", serde_json::to_string_pretty(&answer).expect("json"));
            } else {
                println!(
                    "{}: {} backend, dtype {}, gradient checkpointing {}",
                    file.display(),
                    planner.backend,
                    planner.options.dtype.name(),
                    if planner.options.gradient_checkpointing {
                        "on"
                    } else {
                        "off"
                    }
                );
                println!(
                    "micro-batch {micro} x {accumulation} accumulation steps; longest example {} tokens (training), {} (validation, batches of {})",
                    planner.train_tokens, planner.eval_tokens, planner.eval_batch
                );
                println!("predicted peak: {}", lora_cli::plan::describe(&predicted));
                if let Some(a) = available {
                    println!("available now: {:.0} MiB", lora_cli::plan::mib(a as f64));
                }
                if let Some(c) = choice {
                    println!(
                        "batch-size auto ({} mode), effective batch {}, budget {:.0} MiB:",
                        if c.throughput { "throughput" } else { "memory" },
                        c.effective,
                        lora_cli::plan::mib(c.budget_bytes as f64)
                    );
                    for k in &c.candidates {
                        println!(
                            "  {:>5} x {:<4} {:>8.0} MiB {}{}{}",
                            k.micro_batch,
                            k.accumulation,
                            lora_cli::plan::mib(k.predicted.total),
                            if k.fits { "fits" } else { "over budget" },
                            k.seconds_per_example
                                .map_or(String::new(), |s| format!(", {:.2} ms per example", s * 1e3)),
                            if k.micro_batch == c.micro_batch {
                                "  <- chosen"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Show { file, layers },
        } => {
            let checked = lora_cli::validate::check_file(&file, &layers.overrides(Vec::new()), &assets)?;
            match &checked.pipeline {
                Some(p) => print!("{}", lora_cli::show::render(p, &checked.source)),
                None => return Err(lora_core::Error::Invalid(checked.diagnostics)),
            }
        }
        Command::Plugins { file, layers } => {
            if let Some(file) = file {
                let composed = lora_validate::compose(&file, &layers.overrides(Vec::new()))?;
                let doc = lora_core::doc::ConfigDoc::parse(&composed.source)?;
                let diags = lora_cli::plugins::load_from(&doc);
                if diags.has_errors() {
                    return Err(lora_core::Error::Invalid(diags));
                }
            }
            print!("{}", lora_cli::plugins::listing());
        }
        Command::Rules {
            id,
            markdown,
            pipeline,
            plugins,
            layers,
        } => {
            let mut diags = lora_cli::plugins::load_paths(&plugins);
            if let Some(file) = pipeline {
                let composed = lora_validate::compose(&file, &layers.overrides(Vec::new()))?;
                let doc = lora_core::doc::ConfigDoc::parse(&composed.source)?;
                diags.0.extend(lora_cli::plugins::load_from(&doc).0);
            }
            if diags.has_errors() {
                return Err(lora_core::Error::Invalid(diags));
            }
            if markdown {
                print!("{}", lora_validate::docs::markdown());
                return Ok(());
            }
            let rules = lora_core::rules::rules();
            match id {
                Some(id) => {
                    let Some(r) = rules.iter().find(|r| r.id == id) else {
                        let names = rules.iter().map(|r| r.id);
                        let mut hint = lora_core::diag::did_you_mean(&id, names)
                            .map_or(String::new(), |s| format!("; did you mean `{s}`?"));
                        if lora_plugin_host::loaded().is_empty() {
                            hint.push_str(
                                " (a plugin's rules are listed once it is loaded: \
                                 `lora rules ID --pipeline FILE` or `--plugin LIB`)",
                            );
                        }
                        return Err(lora_core::Error::Other(format!("no rule `{id}`{hint}")));
                    };
                    println!(
                        "{} ({:?}, {})\n\n{}\n\n{}",
                        r.id,
                        r.severity,
                        r.category.name(),
                        r.summary,
                        r.doc
                    );
                }
                None => {
                    for r in &rules {
                        let sev = if r.severity == Severity::Error {
                            "error"
                        } else {
                            "warning"
                        };
                        println!("{:<44} {:<8} {:<12} {}", r.id, sev, r.category.name(), r.summary);
                    }
                    let counts: Vec<String> = lora_validate::docs::counts()
                        .iter()
                        .map(|(c, n)| format!("{} {n}", c.name()))
                        .collect();
                    println!("\n{} rules: {}", rules.len(), counts.join(", "));
                }
            }
        }
        Command::Bench {
            backend,
            warmup,
            steps,
            monitoring,
            causal,
            batch,
            seq_len,
            checkpointing,
            dtype,
            inference,
            dropout,
        } => {
            lora_cli::pipes::survive_closed_pipes();
            if causal {
                let opts = lora_cli::bench_causal::Options {
                    warmup,
                    steps,
                    case: batch.zip(seq_len),
                    checkpointing,
                    generate_only: inference,
                };
                lora_cli::bench_causal::run(&backend, opts, &assets)?;
            } else if monitoring {
                lora_cli::bench_monitor::run(&backend, steps, &assets)?;
            } else {
                let dtype: lora_core::DType = serde_json::from_value(serde_json::Value::String(dtype.clone()))
                    .map_err(|_| lora_core::Error::Other(format!("unknown dtype `{dtype}` (f32, bf16, f16)")))?;
                let opts = lora_cli::bench::Options {
                    warmup,
                    steps: steps.max(1),
                    case: batch
                        .zip(seq_len)
                        .map(|(batch, seq_len)| lora_cli::bench::Case { batch, seq_len }),
                    model: lora_core::ModelOptions {
                        dtype,
                        gradient_checkpointing: checkpointing,
                    },
                    inference,
                    dropout,
                };
                lora_cli::bench::run(&backend, &opts, &assets)?;
            }
        }
        Command::List => {
            fn section<E: Entry>(title: &str, extra: impl Fn(&E) -> String)
            where
                lora_core::inventory::iter<E>: IntoIterator<Item = &'static E>,
            {
                println!("{title}:");
                for e in registry::entries::<E>() {
                    println!("  {:<18} {}{}", e.name(), e.summary(), extra(e));
                }
            }
            section::<registry::DataSourceEntry>("data sources", |_| String::new());
            section::<registry::ModelEntry>("models", |e| format!(" [{}]", e.backend));
            section::<registry::TrainerEntry>("trainers", |_| String::new());
            section::<registry::EvaluatorEntry>("evaluators", |_| String::new());
            section::<registry::OptimizerEntry>("optimizers", |_| String::new());
            section::<registry::SchedulerEntry>("schedulers", |_| String::new());
            section::<registry::CallbackEntry>("callbacks", |_| String::new());
            println!("strategies ([strategy] type, for mpirun -np N):");
            for e in lora_strategy::entries() {
                println!("  {:<18} {}", e.name, e.summary);
            }
        }
    }
    Ok(())
}
