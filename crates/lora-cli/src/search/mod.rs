//! `lora search`: the study driver. Each trial is an ordinary `lora run` of the
//! pipeline with the trial's `--set` overrides, validated first (a trial that
//! breaks a rule is recorded as invalid and costs no training), in its own
//! output folder and its own process, with `cores / parallel` threads so that
//! parallel trials do not contend. The trial reports its evaluations to the
//! journal and asks the pruner itself (`lora run --trial`, `lora_search::TrialReporter`).
//! With `[monitor] dashboard` the study is served live (`board`); with
//! `[monitor] report` (the default) its report is written at the end.

mod board;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lora_core::stage::AssetResolver;
use lora_core::{Error, Result};
use lora_search::journal::{Journal, Record, Study, Trial, TrialState};
use lora_search::sampler::{Observation, suggest};
use lora_search::space::SearchSpec;
use lora_validate::Overrides;

pub struct SearchOptions {
    pub file: PathBuf,
    /// `--set` and environment layers, applied to every trial.
    pub sets: Vec<String>,
    pub resume: bool,
    /// Serve the live study page (also `[monitor] dashboard = true`).
    pub dashboard: bool,
    /// Its port (`[monitor] port` otherwise; 0 picks a free one).
    pub port: Option<u16>,
}

struct Running {
    id: usize,
    child: Child,
    started: Instant,
    log: PathBuf,
}

/// Runs (or resumes) the study of `opts.file`; prints the table and writes the best pipeline.
pub fn search(opts: &SearchOptions, assets: &dyn AssetResolver) -> Result<Study> {
    let overrides = Overrides::from_process(opts.sets.clone());
    let composed = lora_validate::compose(&opts.file, &overrides).map_err(Error::Invalid)?;
    let doc: toml::Table = composed
        .source
        .text
        .parse()
        .map_err(|e: toml::de::Error| Error::Other(format!("{}: {e}", opts.file.display())))?;
    let spec = SearchSpec::from_document(&doc)?;
    // The base pipeline must be valid before any trial runs.
    let base = crate::validate::check_composed(composed, assets).into_pipeline()?;
    let dir = base.config.run.output_dir.join("search");
    let journal = Journal::new(dir.join("journal.jsonl"));
    let mut study = open_study(&journal, &opts.file, &spec, opts.resume, &dir)?;
    let monitor = &base.config.monitor;
    let mut board = if opts.dashboard || monitor.dashboard {
        Some(board::Board::start(opts.port.unwrap_or(monitor.port), journal.path())?)
    } else {
        None
    };

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / spec.parallel).max(1);
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("cannot find the lora binary: {e}")))?;
    let started = Instant::now();
    let mut running: Vec<Running> = Vec::new();
    let mut next_id = study.trials.iter().map(|t| t.id + 1).max().unwrap_or(0);
    // Trials cut short by a crash run again, with the same parameters, before new ones.
    let mut again: Vec<Trial> = study
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Running)
        .cloned()
        .collect();
    for t in &again {
        stop_left_behind(t, journal.path());
    }
    if !again.is_empty() {
        eprintln!(
            "search: resuming {}: {} finished trial(s) kept, {} cut short to run again",
            journal.path().display(),
            study.trials.len() - again.len(),
            again.len()
        );
    }
    loop {
        if let Some(b) = board.as_mut() {
            b.pump();
        }
        let finished = study.trials.iter().filter(|t| t.state != TrialState::Running).count();
        let out_of_time = spec.wall_time.is_some_and(|w| started.elapsed() >= w);
        let budget_left = spec.trials.is_none_or(|n| finished + running.len() < n) && !out_of_time;
        if running.len() < spec.parallel && (budget_left || !again.is_empty()) && !out_of_time {
            let (id, point, values) = match again.pop() {
                Some(t) => (t.id, t.point, t.values),
                None => {
                    let id = next_id;
                    next_id += 1;
                    let point = suggest(&spec, id, &observations(&study));
                    let values = spec.values(&point);
                    (id, point, values)
                }
            };
            journal.append(&Record::Start {
                trial: id,
                point,
                values: values.clone(),
            })?;
            let trial_dir = dir.join(format!("trial-{id:03}"));
            let mut sets = opts.sets.clone();
            sets.extend(values.iter().map(|(k, v)| format!("{k}={v}")));
            sets.push(format!("run.output-dir={}", trial_dir.display()));
            // The study has the dashboard; parallel trials would contend for its port.
            sets.push("monitor.dashboard=false".into());
            match crate::validate::check_file(&opts.file, &Overrides::from_process(sets.clone()), assets) {
                Ok(c) if !c.has_errors() => {
                    let r = launch(&exe, &opts.file, &sets, &journal, id, &trial_dir, threads)?;
                    journal.append(&Record::Launched {
                        trial: id,
                        pid: r.child.id(),
                    })?;
                    running.push(r);
                }
                Ok(c) => invalid(&journal, id, &c.diagnostics.to_string())?,
                Err(d) => invalid(&journal, id, &d.to_string())?,
            }
            study = journal.read()?;
            continue;
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            let status = running[i]
                .child
                .try_wait()
                .map_err(|e| Error::Other(format!("trial {}: {e}", running[i].id)))?;
            let Some(status) = status else {
                i += 1;
                continue;
            };
            let r = running.swap_remove(i);
            study = journal.read()?;
            let ended = study
                .trials
                .iter()
                .any(|t| t.id == r.id && t.state != TrialState::Running);
            if !ended {
                let tail = log_tail(&r.log);
                journal.append(&Record::End {
                    trial: r.id,
                    state: TrialState::Failed,
                    value: None,
                    steps: 0,
                    seconds: r.started.elapsed().as_secs_f64(),
                    message: Some(format!("{status}; {tail}")),
                })?;
                study = journal.read()?;
            }
            if let Some(t) = study.trials.iter().find(|t| t.id == r.id) {
                eprintln!("{}", row(t));
            }
        }
    }
    // Every start and every end above re-read the journal: `study` is current.
    println!("{}", table(&study));
    if monitor.report {
        let title = format!("{} search", base.config.run.name);
        let path = lora_monitor::study::write_report(&dir.join("report"), &board::view(&study, &title))?;
        println!("report: {}", path.display());
    }
    if let Some(b) = board {
        b.finish();
    }
    if let Some(best) = study.best() {
        let path = dir.join("best.toml");
        write_best(&path, &opts.file, &opts.sets, &study, best)?;
        println!(
            "best: trial {} with {} = {:.6}; its pipeline: {}",
            best.id,
            study.spec.objective,
            best.value.unwrap_or(f64::NAN),
            path.display()
        );
    }
    Ok(study)
}

fn open_study(journal: &Journal, pipeline: &Path, spec: &SearchSpec, resume: bool, dir: &Path) -> Result<Study> {
    if journal.path().exists() {
        if !resume {
            return Err(invalid_input(format!(
                "a study already exists in {}; continue it with `lora search --resume`, or remove the folder",
                dir.display()
            )));
        }
        let study = journal.read()?;
        if &study.spec != spec {
            return Err(invalid_input(format!(
                "the [search] table changed since the study in {} started; resume it unchanged, or remove the folder",
                dir.display()
            )));
        }
        return Ok(study);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the study folder", dir, e))?;
    journal.append(&Record::Study {
        pipeline: pipeline.to_path_buf(),
        spec: spec.clone(),
    })?;
    Ok(journal.read()?)
}

/// A trial of a study whose driver was killed may still be running: it would
/// write to the journal beside its rerun. It is stopped first (only a process
/// whose command line names this journal).
fn stop_left_behind(t: &Trial, journal: &Path) {
    let Some(pid) = t.pid else { return };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let needle = format!("{}:{}", journal.display(), t.id);
    if String::from_utf8_lossy(&cmdline).contains(&needle) {
        eprintln!(
            "search: stopping trial {} (process {pid}), left behind by the interrupted study",
            t.id
        );
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn invalid_input(message: String) -> Error {
    Error::Invalid(lora_core::diag::Diagnostic::error("search::study-exists", message).into())
}

fn invalid(journal: &Journal, id: usize, diagnostics: &str) -> Result<()> {
    let first = diagnostics
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or(diagnostics)
        .to_string();
    journal.append(&Record::End {
        trial: id,
        state: TrialState::Invalid,
        value: None,
        steps: 0,
        seconds: 0.0,
        message: Some(first),
    })?;
    Ok(())
}

fn launch(
    exe: &Path,
    file: &Path,
    sets: &[String],
    journal: &Journal,
    id: usize,
    dir: &Path,
    threads: usize,
) -> Result<Running> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating a trial folder", dir, e))?;
    let log = dir.join("log.txt");
    let out = std::fs::File::create(&log).map_err(|e| Error::io("creating a trial log", &log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("creating a trial log", &log, e))?;
    let mut cmd = Command::new(exe);
    // `--resume`: a trial interrupted with its study (Ctrl-C checkpoints it) goes on from its
    // checkpoint when the study resumes; a trial without one starts from the beginning.
    cmd.arg("run").arg(file).arg("--quiet").arg("--resume");
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd.arg("--trial")
        .arg(format!("{}:{id}", journal.path().display()))
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("starting trial {id}: {e}")))?;
    Ok(Running {
        id,
        child,
        started: Instant::now(),
        log,
    })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(2)..].join(" | ")
}

fn observations(study: &Study) -> Vec<Observation> {
    let dir = study.spec.direction;
    study
        .trials
        .iter()
        .filter_map(|t| match (t.state, t.value) {
            (TrialState::Complete, Some(v)) if v.is_finite() => Some(Observation {
                point: t.point.clone(),
                loss: dir.as_loss(v),
            }),
            (TrialState::Pruned, _) => Some(Observation {
                point: t.point.clone(),
                loss: f64::INFINITY,
            }),
            _ => None,
        })
        .collect()
}

pub(crate) fn state_name(s: TrialState) -> &'static str {
    match s {
        TrialState::Running => "running",
        TrialState::Complete => "complete",
        TrialState::Pruned => "pruned",
        TrialState::Invalid => "invalid",
        TrialState::Failed => "failed",
    }
}

pub(crate) fn params_text(values: &BTreeMap<String, toml::Value>) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn row(t: &Trial) -> String {
    let value = t.value.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mut line = format!(
        "{:>5}  {:<9} {:>9} {:>6} {:>7.1}s  {}",
        t.id,
        state_name(t.state),
        value,
        t.steps,
        t.seconds,
        params_text(&t.values)
    );
    if matches!(t.state, TrialState::Invalid | TrialState::Failed)
        && let Some(m) = &t.message
    {
        line.push_str(&format!("  ({m})"));
    }
    line
}

/// The study's table: trial, state, objective, steps trained, time, parameters.
pub fn table(study: &Study) -> String {
    let mut out = format!(
        "{:>5}  {:<9} {:>9} {:>6} {:>8}  parameters\n",
        "trial", "state", study.spec.objective, "steps", "time"
    );
    for t in &study.trials {
        out.push_str(&row(t));
        out.push('\n');
    }
    let steps: usize = study.trials.iter().map(|t| t.steps).sum();
    let seconds: f64 = study.trials.iter().map(|t| t.seconds).sum();
    out.push_str(&format!(
        "{} trial(s): {} complete, {} pruned, {} invalid, {} failed; {steps} training steps in {seconds:.1}s",
        study.trials.len(),
        count(study, TrialState::Complete),
        count(study, TrialState::Pruned),
        count(study, TrialState::Invalid),
        count(study, TrialState::Failed)
    ));
    out
}

fn count(study: &Study, s: TrialState) -> usize {
    study.trials.iter().filter(|t| t.state == s).count()
}

/// The best trial as a pipeline that `lora run` accepts: the searched file,
/// extended with the trial's values (written atomically).
fn write_best(path: &Path, pipeline: &Path, sets: &[String], study: &Study, best: &Trial) -> Result<()> {
    let base = std::path::absolute(pipeline).unwrap_or_else(|_| pipeline.to_path_buf());
    let mut root = toml::Table::new();
    root.insert("extends".into(), toml::Value::String(base.display().to_string()));
    // The study's own `--set` layers, then the trial's values.
    let mut values: Vec<(String, toml::Value)> = sets
        .iter()
        .filter_map(|s| s.split_once('='))
        .map(|(k, v)| {
            let v = format!("v = {}", v.trim())
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(v.trim().to_string()));
            (k.trim().to_string(), v)
        })
        .collect();
    values.extend(best.values.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (path, value) in &values {
        let mut node = &mut root;
        let keys: Vec<&str> = path.split('.').collect();
        for key in &keys[..keys.len() - 1] {
            node = node
                .entry(key.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("search paths name tables, then a key");
        }
        node.insert(keys[keys.len() - 1].to_string(), value.clone());
    }
    let text = format!(
        "# Trial {} of the study in {}: {} = {:.6}.\n{}",
        best.id,
        path.parent().map_or(String::new(), |p| p.display().to_string()),
        study.spec.objective,
        best.value.unwrap_or(f64::NAN),
        toml::to_string(&root).map_err(|e| Error::Other(e.to_string()))?
    );
    lora_core::fsutil::write_atomic(path, text.as_bytes())
}
