//! Checkpoint folders: writing one atomically, checking one by its checksums,
//! finding the latest valid one, and reading it back for a resumed run.
//!
//! A checkpoint is `checkpoints/step-NNNNNNNN/` in the run's output folder:
//!
//! | file | holds |
//! |---|---|
//! | `adapter_model.safetensors`, `adapter_config.json` | the trainable parameters in PEFT's layout (`lora eval --adapter` reads the folder) |
//! | `optimizer.safetensors` | the optimizer's buffers; its kind and step count in the metadata |
//! | `rollback.safetensors` | the parameters (and, when a callback can roll back, the optimizer buffers) a rollback returns to |
//! | `trainer.json` | the loop state (epoch, position in the epoch, micro-step and step counters that seed the data order, augmentation and dropout streams; learning-rate scale), losses and evaluations so far, elapsed time, the callbacks' states (the metrics log's byte offset among them) |
//! | `resolved-config.json` | the resolved configuration, to list what changed on resume |
//! | `process-K.safetensors` | on several processes, with a strategy whose processes hold state of their own (zero1/zero2, topk, powersgd, local-sgd, diloco): process K's parameters, optimizer state and strategy state (residuals, factors, outer step, counters), gathered to rank 0 before it writes the folder, so the folder is still written by one process and atomically |
//! | `manifest.json` | format, step, the run's identity (config hash, data fingerprint, base-model hash, backend) and the size and sha256 of every other file |
//!
//! The folder is written under a temporary name (`.tmp-step-...`), every file
//! and the folder synced, then renamed into place: a crash leaves either the
//! whole checkpoint or a temporary folder that is never read. `manifest.json`
//! is written last; a checkpoint whose manifest is missing or whose files do
//! not match their checksums is damaged and skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use lora_core::adapter::{AdapterModel, ParamInfo};
use lora_core::checkpoint::{CheckpointConfig, Checkpoints, LoopSnapshot, ResumeFrom, TrainSnapshot};
use lora_core::optim::OptimizerState;
use lora_core::strategy::StrategyState;
use lora_core::{Error, LoraSpec, Result};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the folder layout; a checkpoint of another version is not read.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
const OPTIMIZER: &str = "optimizer.safetensors";
const ROLLBACK: &str = "rollback.safetensors";
const TRAINER: &str = "trainer.json";
const PROCESS_PREFIX: &str = "process-";
const PROCESS_SUFFIX: &str = ".safetensors";
pub const CONFIG: &str = "resolved-config.json";
const PREFIX: &str = "step-";
const TMP_PREFIX: &str = ".tmp-step-";
/// A replaced checkpoint, moved aside until its successor is in place.
const OLD_PREFIX: &str = ".old-step-";

/// What a run is: a checkpoint of another run is refused (or, for the safe
/// differences, accepted with `--force`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// sha256 of the resolved configuration (canonical JSON).
    pub config_hash: String,
    /// sha256 of the prepared training and validation examples (inputs and labels).
    pub data_fingerprint: String,
    /// sha256 of the base model's files; `none` for a model built from scratch.
    pub base_model_hash: String,
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub step: usize,
    pub epoch: usize,
    /// Micro-batches of `epoch` already consumed: where the data continues.
    pub batch_in_epoch: usize,
    pub identity: Identity,
    pub files: BTreeMap<String, FileSum>,
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 and length of a file, read in blocks.
pub fn file_sum(path: &Path) -> std::io::Result<FileSum> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum {
        bytes,
        sha256: hex(&h.finalize()),
    })
}

/// The folder name of the checkpoint after `step`.
pub fn folder_name(step: usize) -> String {
    format!("{PREFIX}{step:08}")
}

fn step_of(name: &str) -> Option<usize> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// Whether a path names a published checkpoint folder (`step-N`), not a temporary one.
pub fn is_checkpoint_name(path: &Path) -> bool {
    path.file_name().and_then(|n| step_of(&n.to_string_lossy())).is_some()
}

/// JSON whose floats survive a round trip bit for bit: serde_json's default
/// parser may be one unit in the last place off, so floats are written as
/// strings (`"f64:0.1"`, Rust's shortest exact form) and parsed by `str::parse`.
mod exact_json {
    use serde_json::{Number, Value};

    const FLOAT: &str = "f64:";
    const STRING: &str = "str:";

    pub fn encode(v: Value) -> Value {
        match v {
            Value::Number(n) if n.is_f64() => Value::String(format!("{FLOAT}{:?}", n.as_f64().unwrap_or(0.0))),
            // A string that looks like an encoded value is escaped.
            Value::String(s) if s.starts_with(FLOAT) || s.starts_with(STRING) => Value::String(format!("{STRING}{s}")),
            Value::Array(a) => Value::Array(a.into_iter().map(encode).collect()),
            Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, encode(v))).collect()),
            other => other,
        }
    }

    pub fn decode(v: Value) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => {
                if let Some(f) = s.strip_prefix(FLOAT) {
                    let x: f64 = f.parse().map_err(|_| format!("`{s}` is not a number"))?;
                    Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null)
                } else if let Some(rest) = s.strip_prefix(STRING) {
                    Value::String(rest.to_string())
                } else {
                    Value::String(s)
                }
            }
            Value::Array(a) => Value::Array(a.into_iter().map(decode).collect::<Result<_, _>>()?),
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| decode(v).map(|v| (k, v)))
                    .collect::<Result<_, _>>()?,
            ),
            other => other,
        })
    }
}

/// Named flat buffers as a safetensors file (1-D F32 tensors) with string metadata.
fn flat_file(buffers: &BTreeMap<String, Vec<f32>>, metadata: BTreeMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<u8>)> = buffers
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for ((name, data), v) in bytes.iter().zip(buffers.values()) {
        let view = TensorView::new(Dtype::F32, vec![v.len()], data)
            .map_err(|e| Error::Other(format!("cannot serialise {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, Some(metadata.into_iter().collect()))
        .map_err(|e| Error::Other(format!("cannot serialise a checkpoint file: {e}")))
}

/// Named flat buffers and string metadata.
type Flat = (BTreeMap<String, Vec<f32>>, BTreeMap<String, String>);

fn read_flat(path: &Path) -> Result<Flat> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read checkpoint file", path, e))?;
    flat_from_bytes(&bytes).map_err(|m| Error::Data(format!("{}: {m}", path.display())))
}

fn flat_from_bytes(bytes: &[u8]) -> std::result::Result<Flat, String> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let metadata: BTreeMap<String, String> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        if t.dtype() != Dtype::F32 {
            return Err(format!("tensor `{name}` is {:?}, not F32", t.dtype()));
        }
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, v);
    }
    Ok((out, metadata))
}

fn optimizer_file(
    state: &OptimizerState,
    prefix: &str,
    buffers: &mut BTreeMap<String, Vec<f32>>,
) -> BTreeMap<String, String> {
    for (k, v) in &state.buffers {
        buffers.insert(format!("{prefix}{k}"), v.clone());
    }
    BTreeMap::from([
        (format!("{prefix}optimizer"), state.optimizer.clone()),
        (format!("{prefix}step"), state.step.to_string()),
    ])
}

fn optimizer_from(
    buffers: &mut BTreeMap<String, Vec<f32>>,
    meta: &BTreeMap<String, String>,
    prefix: &str,
) -> Option<OptimizerState> {
    let optimizer = meta.get(&format!("{prefix}optimizer"))?.clone();
    let step = meta.get(&format!("{prefix}step"))?.parse().ok()?;
    let names: Vec<String> = buffers.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
    let own = names
        .into_iter()
        .filter_map(|k| {
            let v = buffers.remove(&k)?;
            Some((k[prefix.len()..].to_string(), v))
        })
        .collect();
    Some(OptimizerState {
        optimizer,
        step,
        buffers: own,
    })
}

/// One process's own state in a checkpoint of several processes.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessState {
    pub rank: usize,
    pub world: usize,
    /// This process's trainable parameters, flat.
    pub params: Vec<f32>,
    /// This process's optimizer state (ZeRO: its tensors' only).
    pub optimizer: OptimizerState,
    pub strategy: StrategyState,
}

/// The file name of process `rank`'s state.
fn process_file_name(rank: usize) -> String {
    format!("{PROCESS_PREFIX}{rank}{PROCESS_SUFFIX}")
}

/// Encodes a process's state as a safetensors file: `params`,
/// `optimizer.<buffer>`, `strategy.<buffer>`; rank, world size, the
/// optimizer's kind and step and the strategy's counters in the metadata.
pub fn encode_process(state: &ProcessState) -> Result<Vec<u8>> {
    let mut buffers = BTreeMap::from([("params".to_string(), state.params.clone())]);
    let mut meta = optimizer_file(&state.optimizer, "optimizer.", &mut buffers);
    for (k, v) in &state.strategy.buffers {
        buffers.insert(format!("strategy.{k}"), v.clone());
    }
    for (k, v) in &state.strategy.counters {
        meta.insert(format!("counter.{k}"), v.to_string());
    }
    meta.insert("rank".into(), state.rank.to_string());
    meta.insert("world".into(), state.world.to_string());
    flat_file(&buffers, meta)
}

/// Decodes [`encode_process`]'s file; `what` names it in errors.
pub fn decode_process(bytes: &[u8], what: &str) -> Result<ProcessState> {
    let bad = |m: String| Error::Data(format!("{what}: {m}"));
    let (mut buffers, meta) = flat_from_bytes(bytes).map_err(bad)?;
    let number = |key: &str| -> Result<u64> {
        meta.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("no `{key}` in the metadata")))
    };
    let (rank, world) = (number("rank")? as usize, number("world")? as usize);
    let optimizer =
        optimizer_from(&mut buffers, &meta, "optimizer.").ok_or_else(|| bad("no optimizer state".into()))?;
    let params = buffers.remove("params").ok_or_else(|| bad("no `params`".into()))?;
    let mut strategy = StrategyState::default();
    for (k, v) in buffers {
        match k.strip_prefix("strategy.") {
            Some(name) => strategy.buffers.insert(name.to_string(), v),
            None => return Err(bad(format!("unexpected tensor `{k}`"))),
        };
    }
    for (k, v) in &meta {
        if let Some(name) = k.strip_prefix("counter.") {
            let n = v
                .parse()
                .map_err(|_| bad(format!("counter `{name}` is not a count: {v}")))?;
            strategy.counters.insert(name.to_string(), n);
        }
    }
    Ok(ProcessState {
        rank,
        world,
        params,
        optimizer,
        strategy,
    })
}

/// Syncs a folder's entry list (a rename or a new file in it) to disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes the run's checkpoints into `<output-dir>/checkpoints`.
pub struct CheckpointWriter {
    dir: PathBuf,
    cfg: CheckpointConfig,
    identity: Identity,
    config: serde_json::Value,
    lora: LoraSpec,
    base_model: String,
    /// Files synced before each checkpoint is published (the metrics log, whose
    /// offset the checkpoint records).
    sync_first: Vec<PathBuf>,
    interrupt: Box<dyn Fn() -> Option<String> + Send>,
    /// Test hook: the n-th save (1-based) fails with "no space left on device"
    /// half-way through, after the adapter is written.
    fail_save: Option<usize>,
    saves: usize,
}

impl CheckpointWriter {
    /// `config`: the resolved configuration; `lora` and `base_model` go into the adapter's config.
    pub fn new(
        output_dir: &Path,
        cfg: CheckpointConfig,
        identity: Identity,
        config: serde_json::Value,
        lora: LoraSpec,
        base_model: String,
    ) -> Self {
        Self {
            dir: output_dir.join("checkpoints"),
            cfg,
            identity,
            config,
            lora,
            base_model,
            sync_first: Vec::new(),
            interrupt: Box::new(|| None),
            fail_save: None,
            saves: 0,
        }
    }

    /// How the writer learns that the process was asked to stop (the signal's name).
    pub fn with_interrupt(mut self, interrupt: impl Fn() -> Option<String> + Send + 'static) -> Self {
        self.interrupt = Box::new(interrupt);
        self
    }

    /// A file to sync before each checkpoint is published.
    pub fn sync_before(mut self, path: PathBuf) -> Self {
        self.sync_first.push(path);
        self
    }

    /// Test hook (fault injection): save number `n` (1-based) fails with ENOSPC.
    pub fn fail_save(mut self, n: Option<usize>) -> Self {
        self.fail_save = n;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the temporary and moved-aside folders that a killed run left behind.
    pub fn clean_partial(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) || name.starts_with(OLD_PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    fn write_files(&self, tmp: &Path, model: &dyn AdapterModel, snapshot: &TrainSnapshot) -> Result<Manifest> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |e| Error::io(what, path, e)
        };
        crate::peft::save_adapter(tmp, model, &self.lora, &self.base_model)?;
        if self.fail_save == Some(self.saves) {
            let e = std::io::Error::from_raw_os_error(28);
            return Err(Error::io("cannot write checkpoint file", tmp.join(OPTIMIZER), e));
        }
        let mut buffers = BTreeMap::new();
        let meta = optimizer_file(&snapshot.optimizer, "", &mut buffers);
        let path = tmp.join(OPTIMIZER);
        write_synced(&path, &flat_file(&buffers, meta)?).map_err(io("cannot write checkpoint file", &path))?;

        let mut buffers = BTreeMap::from([("params".to_string(), snapshot.good_params.clone())]);
        let meta = match &snapshot.good_optimizer {
            Some(o) => optimizer_file(o, "optimizer.", &mut buffers),
            None => BTreeMap::new(),
        };
        let path = tmp.join(ROLLBACK);
        write_synced(&path, &flat_file(&buffers, meta)?).map_err(io("cannot write checkpoint file", &path))?;

        let state = serde_json::to_value(&snapshot.loop_state).map_err(|e| Error::Other(e.to_string()))?;
        let text = serde_json::to_vec_pretty(&exact_json::encode(state)).expect("JSON values serialise");
        let path = tmp.join(TRAINER);
        write_synced(&path, &text).map_err(io("cannot write checkpoint file", &path))?;
        let text = serde_json::to_vec_pretty(&self.config).expect("JSON values serialise");
        let path = tmp.join(CONFIG);
        write_synced(&path, &text).map_err(io("cannot write checkpoint file", &path))?;

        let mut names: Vec<String> = [
            crate::peft::WEIGHTS_FILE,
            crate::peft::CONFIG_FILE,
            OPTIMIZER,
            ROLLBACK,
            TRAINER,
            CONFIG,
        ]
        .map(String::from)
        .into();
        for (rank, bytes) in snapshot.processes.iter().enumerate() {
            let name = process_file_name(rank);
            let path = tmp.join(&name);
            write_synced(&path, bytes).map_err(io("cannot write checkpoint file", &path))?;
            names.push(name);
        }

        // Checksums of the files as they are on disk.
        let mut files = BTreeMap::new();
        for name in names {
            let path = tmp.join(&name);
            // save_adapter's files are synced by its atomic writes.
            files.insert(name, file_sum(&path).map_err(io("cannot read back", &path))?);
        }
        let s = &snapshot.loop_state.state;
        Ok(Manifest {
            format: FORMAT,
            step: s.step,
            epoch: s.epoch,
            batch_in_epoch: s.batch_in_epoch,
            identity: self.identity.clone(),
            files,
        })
    }

    /// Deletes the oldest checkpoints before `step` beyond `keep-last`.
    fn prune(&self, step: usize) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut older: Vec<(usize, PathBuf)> = entries
            .flatten()
            .filter_map(|e| Some((step_of(&e.file_name().to_string_lossy())?, e.path())))
            .filter(|(s, _)| *s < step)
            .collect();
        older.sort_by_key(|o| std::cmp::Reverse(o.0));
        for (_, path) in older.into_iter().skip(self.cfg.keep_last.saturating_sub(1)) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                eprintln!("warning: cannot delete old checkpoint {}: {e}", path.display());
            }
        }
    }
}

impl Checkpoints for CheckpointWriter {
    fn due(&self, step: usize) -> bool {
        self.cfg.checkpoint_every_steps > 0 && step.is_multiple_of(self.cfg.checkpoint_every_steps)
    }

    fn interrupted(&self) -> Option<String> {
        (self.interrupt)()
    }

    fn save(&mut self, model: &dyn AdapterModel, snapshot: &TrainSnapshot) -> Result<PathBuf> {
        self.saves += 1;
        let step = snapshot.loop_state.state.step;
        let name = folder_name(step);
        let fail = |e: Error| {
            Error::Other(format!(
                "cannot write checkpoint {name} in {}: {e}; earlier checkpoints are left as they were",
                self.dir.display()
            ))
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| fail(Error::io("cannot create folder", &self.dir, e)))?;
        for path in &self.sync_first {
            if let Ok(f) = File::open(path) {
                f.sync_all().map_err(|e| fail(Error::io("cannot sync", path, e)))?;
            }
        }
        let tmp = self.dir.join(format!("{TMP_PREFIX}{step:08}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let written = std::fs::create_dir(&tmp)
            .map_err(|e| Error::io("cannot create folder", &tmp, e))
            .and_then(|()| self.write_files(&tmp, model, snapshot))
            .and_then(|manifest| {
                let path = tmp.join(MANIFEST);
                let text = serde_json::to_vec_pretty(&manifest).expect("JSON values serialise");
                write_synced(&path, &text)
                    .and_then(|()| sync_dir(&tmp))
                    .map_err(|e| Error::io("cannot write checkpoint file", &path, e))
            });
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(fail(e));
        }
        let target = self.dir.join(&name);
        // A folder of the same step (a stale or damaged one from before a
        // resume) is moved aside first: rename cannot replace a folder.
        let aside = self.dir.join(format!("{OLD_PREFIX}{step:08}-{}", std::process::id()));
        if target.exists() {
            std::fs::rename(&target, &aside).map_err(|e| fail(Error::io("cannot move aside", &target, e)))?;
        }
        std::fs::rename(&tmp, &target)
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|e| fail(Error::io("cannot publish checkpoint", &target, e)))?;
        let _ = std::fs::remove_dir_all(&aside);
        self.prune(step);
        Ok(target)
    }
}

/// A process other than rank 0 of a multi-process run: it writes nothing, but
/// knows when a checkpoint is due, so that it hands its own state to rank 0
/// at the same steps (`Strategy::gather_bytes`).
pub struct Follower {
    cfg: CheckpointConfig,
}

impl Follower {
    pub fn new(cfg: CheckpointConfig) -> Self {
        Self { cfg }
    }
}

impl Checkpoints for Follower {
    fn due(&self, step: usize) -> bool {
        self.cfg.checkpoint_every_steps > 0 && step.is_multiple_of(self.cfg.checkpoint_every_steps)
    }

    /// Rank 0 writes the folder.
    fn save(&mut self, _model: &dyn AdapterModel, _snapshot: &TrainSnapshot) -> Result<PathBuf> {
        Ok(PathBuf::new())
    }
}

/// Checks a checkpoint folder: its manifest, and every file against its size and sha256.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| Error::io("no manifest", &path, e))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| Error::Data(format!("{}: not a checkpoint manifest: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(Error::Data(format!(
            "{}: checkpoint format {} (this build reads {FORMAT})",
            path.display(),
            manifest.format
        )));
    }
    for name in [
        crate::peft::WEIGHTS_FILE,
        crate::peft::CONFIG_FILE,
        OPTIMIZER,
        ROLLBACK,
        TRAINER,
        CONFIG,
    ] {
        if !manifest.files.contains_key(name) {
            return Err(Error::Data(format!("{}: lists no `{name}`", path.display())));
        }
    }
    for (name, sum) in &manifest.files {
        let file = dir.join(name);
        let actual = file_sum(&file).map_err(|e| Error::io("missing file", &file, e))?;
        if actual.bytes != sum.bytes {
            return Err(Error::Data(format!(
                "{} has {} bytes, the manifest says {}",
                file.display(),
                actual.bytes,
                sum.bytes
            )));
        }
        if actual.sha256 != sum.sha256 {
            return Err(Error::Data(format!("{}: checksum mismatch", file.display())));
        }
    }
    Ok(manifest)
}

/// The outcome of looking for a checkpoint to resume from.
pub struct Found {
    /// The latest valid checkpoint and its manifest.
    pub latest: Option<(PathBuf, Manifest)>,
    /// Newer checkpoints that were skipped, each with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The latest valid checkpoint in `dir`: either a checkpoint folder itself
/// (then it must be valid), or a folder of them (newest first, damaged ones
/// and unfinished temporary folders skipped).
pub fn find_latest(dir: &Path) -> Result<Found> {
    if dir.join(MANIFEST).exists() {
        let manifest = verify(dir)?;
        return Ok(Found {
            latest: Some((dir.to_path_buf(), manifest)),
            skipped: Vec::new(),
        });
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("cannot read checkpoint folder", dir, e))?;
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = step_of(&name) {
            steps.push((step, e.path()));
        } else if name.starts_with(TMP_PREFIX) {
            skipped.push((e.path(), "partial: its write never finished".to_string()));
        }
    }
    steps.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (_, path) in steps {
        match verify(&path) {
            Ok(manifest) => {
                return Ok(Found {
                    latest: Some((path, manifest)),
                    skipped,
                });
            }
            Err(e) => skipped.push((path, e.to_string())),
        }
    }
    Ok(Found { latest: None, skipped })
}

/// The resolved configuration a checkpoint was written with.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join(CONFIG);
    let text = std::fs::read(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
}

/// The loop's state of a checkpoint (with exact floats).
pub fn read_loop_state(dir: &Path) -> Result<LoopSnapshot> {
    let path = dir.join(TRAINER);
    let text = std::fs::read(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    let bad = |m: String| Error::Data(format!("{}: {m}", path.display()));
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    serde_json::from_value(exact_json::decode(v).map_err(bad)?).map_err(|e| bad(e.to_string()))
}

/// The `process-K.safetensors` files of a checkpoint, K = 0, 1, ... (none in
/// a checkpoint of one process); a gap in the numbers is an error.
fn read_processes(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("cannot list checkpoint", dir, e))?;
    let mut ranks: Vec<usize> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(PROCESS_PREFIX)?
                .strip_suffix(PROCESS_SUFFIX)?
                .parse()
                .ok()
        })
        .collect();
    ranks.sort_unstable();
    if ranks.iter().enumerate().any(|(i, &r)| i != r) {
        return Err(Error::Data(format!(
            "{}: the per-process files are not process-0 to process-{}",
            dir.display(),
            ranks.len().saturating_sub(1)
        )));
    }
    ranks
        .iter()
        .map(|&r| {
            let path = dir.join(process_file_name(r));
            std::fs::read(&path).map_err(|e| Error::io("cannot read checkpoint file", &path, e))
        })
        .collect()
}

/// Reads a verified checkpoint for a model with trainable parameters `params`.
pub fn load(dir: &Path, params: &[ParamInfo]) -> Result<ResumeFrom> {
    let values = crate::peft::read_adapter_values(dir, params)?;
    let len: usize = params.iter().map(ParamInfo::numel).sum();
    let loop_state = read_loop_state(dir)?;
    let path = dir.join(OPTIMIZER);
    let (mut buffers, meta) = read_flat(&path)?;
    let optimizer = optimizer_from(&mut buffers, &meta, "")
        .ok_or_else(|| Error::Data(format!("{}: no optimizer kind or step", path.display())))?;
    let path = dir.join(ROLLBACK);
    let (mut buffers, meta) = read_flat(&path)?;
    let good_optimizer = optimizer_from(&mut buffers, &meta, "optimizer.");
    let good_params = buffers
        .remove("params")
        .ok_or_else(|| Error::Data(format!("{}: no `params`", path.display())))?;
    let processes = read_processes(dir)?;
    // With per-process files, `optimizer.safetensors` is rank 0's (a ZeRO
    // shard is shorter); each process takes its own from its file.
    let shared_optimizer = if processes.is_empty() { Some(&optimizer) } else { None };
    for (what, n) in std::iter::once(("rollback params", good_params.len())).chain(
        shared_optimizer
            .into_iter()
            .flat_map(|o| o.buffers.iter())
            .chain(good_optimizer.iter().flat_map(|o| o.buffers.iter()))
            .map(|(k, v)| (k.as_str(), v.len())),
    ) {
        if n != len {
            return Err(Error::Data(format!(
                "{}: `{what}` has {n} values, the model's parameters {len}",
                dir.display()
            )));
        }
    }
    Ok(ResumeFrom {
        snapshot: TrainSnapshot {
            loop_state,
            optimizer,
            good_params,
            good_optimizer,
            processes,
        },
        params: values,
        path: dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_json_keeps_every_float_bit() {
        let values = [0.1f64, 1.0 / 3.0, 2.0f64.powi(-1074), 1e308, -0.0, 0.30000000000000004];
        let v = serde_json::json!({"x": values, "s": "f64:not a float", "t": "str:x", "n": 3});
        let text = serde_json::to_string(&exact_json::encode(v.clone())).unwrap();
        let back = exact_json::decode(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, v);
        let xs: Vec<f64> = serde_json::from_value(back["x"].clone()).unwrap();
        assert_eq!(
            xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn flat_files_round_trip_optimizer_states() {
        let state = OptimizerState {
            optimizer: "adamw".into(),
            step: 7,
            buffers: BTreeMap::from([
                ("exp_avg".into(), vec![1.5, -2.0]),
                ("exp_avg_sq".into(), vec![0.25, 4.0]),
            ]),
        };
        let mut buffers = BTreeMap::new();
        let meta = optimizer_file(&state, "optimizer.", &mut buffers);
        buffers.insert("params".into(), vec![3.0, f32::MIN_POSITIVE]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        std::fs::write(&path, flat_file(&buffers, meta).unwrap()).unwrap();
        let (mut back, meta) = read_flat(&path).unwrap();
        assert_eq!(optimizer_from(&mut back, &meta, "optimizer."), Some(state));
        assert_eq!(back.remove("params"), Some(vec![3.0, f32::MIN_POSITIVE]));
        assert!(back.is_empty());
    }

    #[test]
    fn process_files_round_trip_every_part_and_name_a_bad_one() {
        let state = ProcessState {
            rank: 1,
            world: 2,
            params: vec![0.5, -0.0, f32::MIN_POSITIVE],
            optimizer: OptimizerState {
                optimizer: "sgd".into(),
                step: 4,
                buffers: BTreeMap::from([("momentum_buffer".into(), vec![1.0, 2.0])]),
            },
            strategy: StrategyState {
                buffers: BTreeMap::from([("residual".into(), vec![1e-30, -3.0, 7.5])]),
                counters: BTreeMap::from([("steps".into(), u64::MAX)]),
            },
        };
        let bytes = encode_process(&state).unwrap();
        let back = decode_process(&bytes, "p").unwrap();
        assert_eq!(back, state);
        assert_eq!(back.params[1].to_bits(), (-0.0f32).to_bits());
        let e = decode_process(&bytes[..bytes.len() - 4], "process-1.safetensors").unwrap_err();
        assert!(e.to_string().contains("process-1.safetensors"), "{e}");
    }
}
