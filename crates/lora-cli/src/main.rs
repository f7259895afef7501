//! `lora`: run, evaluate and apply LoRA fine-tuning pipelines.
//!
//! Exit codes: 0 success, 1 failure while running, 2 invalid configuration or input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lora_assets::CacheResolver;
use lora_core::config::PipelineConfig;
use lora_core::registry::{self, Entry};

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
    },
    /// Score an adapter on the pipeline's validation split (JSON on stdout).
    Eval {
        #[arg(long)]
        adapter: PathBuf,
        file: PathBuf,
    },
    /// Class probabilities of texts under a run's adapter (JSON lines on stdout).
    Predict {
        #[arg(long)]
        adapter: PathBuf,
        /// The pipeline; defaults to the copy the run saved beside the adapter.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Check a pipeline without running it.
    Validate { file: PathBuf },
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
    },
}

fn main() -> ExitCode {
    lora_cli::alloc::keep_freed_memory();
    let cli = Cli::parse();
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

fn run(command: Command) -> lora_core::Result<()> {
    let assets = CacheResolver;
    match command {
        Command::Run {
            file,
            quiet,
            backend,
            output_dir,
        } => {
            let mut config = PipelineConfig::load(&file)?;
            if let Some(b) = backend {
                config.run.backend = b;
            }
            if let Some(o) = output_dir {
                config.run.output_dir = o;
            }
            let out = lora_cli::pipeline::run(config, &assets, quiet)?;
            let metrics: Vec<String> = out
                .final_eval
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            println!(
                "{}: validation loss {:.4} {} in {:.1}s; outputs written to {}",
                file.display(),
                out.final_eval.loss,
                metrics.join(" "),
                out.elapsed_s,
                out.output_dir.display()
            );
        }
        Command::Eval { adapter, file } => {
            let config = PipelineConfig::load(&file)?;
            let report = lora_cli::pipeline::eval(config, &adapter, &assets)?;
            println!("{}", serde_json::to_string_pretty(&report).expect("json"));
        }
        Command::Predict { adapter, config, texts } => {
            let file = config.unwrap_or_else(|| adapter.join("pipeline.toml"));
            let config = PipelineConfig::load(&file)?;
            for p in lora_cli::pipeline::predict(config, &adapter, &texts, &assets)? {
                let probs: serde_json::Map<String, serde_json::Value> = p
                    .probabilities
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::json!(v)))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"text": p.text, "label": p.label, "probabilities": probs})
                );
            }
        }
        Command::Validate { file } => {
            let config = PipelineConfig::load(&file)?;
            let pipeline = lora_cli::pipeline::Pipeline::build(config)?;
            let ctx = pipeline.context(&assets)?;
            pipeline.prepare(&ctx)?;
            println!("{}: ok", file.display());
        }
        Command::Bench { backend, warmup, steps } => {
            lora_cli::bench::run(&backend, warmup, steps.max(1), &assets)?;
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
        }
    }
    Ok(())
}
