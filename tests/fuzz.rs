//! Fuzzing on stable Rust, driven by `arbitrary`: the configuration loader and its
//! layering (with every rule run on the result), the CSV and JSONL readers, the
//! safetensors header reader (with the model rules run on what it reads), the
//! plugin handshake, the IDX reader of the image sources, the GGUF header reader
//! (with the Llama configuration and facts read from it), and a text data source
//! end to end (validation's facts and rules, then the load a run does).
//!
//! Each input is a buffer of seeded random bytes that `arbitrary::Unstructured`
//! turns into a target's input: raw bytes, or one of the fixtures' real inputs
//! (pipelines, data files, weight headers) with a few mutations. An input must not
//! panic (a rule that panics counts too), hang (a watchdog aborts after
//! `HANG_SECONDS`) or ask for more than `ALLOCATION_LIMIT` bytes at once (the
//! allocator refuses: inputs are at most 64 KiB, so such a request is sized by a
//! length field that was not checked). A finding is written to
//! `$CARGO_TARGET_TMPDIR/fuzz-findings/` and replays with `LORA_FUZZ_REPLAY=FILE`.
//!
//! `cargo xtask fuzz [--seconds N] [TARGET]` runs each target for N seconds
//! (`LORA_FUZZ_SECONDS`, `LORA_FUZZ_TARGET`, `LORA_FUZZ_SEED`); the normal test run
//! gives each target `DEFAULT_SECONDS`. Each target reports the inputs it tried.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use lora_core::diag::SourceFile;
use lora_core::doc::ConfigDoc;
use lora_core::rules::Facts;
use lora_validate::Overrides;

/// Seconds per target in a normal test run.
const DEFAULT_SECONDS: f64 = 2.0;
/// An input that runs this long is a hang.
const HANG_SECONDS: u64 = 20;
/// The largest single allocation an input may cause.
const ALLOCATION_LIMIT: usize = 256 << 20;
/// The largest input a target gets.
const MAX_INPUT: usize = 64 << 10;

// ---------------------------------------------------------------------------
// The guards: allocation size, hangs, panics.

/// The input being run, for the allocator and the watchdog to print.
static CURRENT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
static CURRENT_TARGET: AtomicUsize = AtomicUsize::new(usize::MAX);
/// When the current input started, in milliseconds since `epoch()`, plus one (0: none).
static STARTED: AtomicU64 = AtomicU64::new(0);
/// Inputs that got past parsing (a document the rules ran on, rows, model facts).
static DEEP: AtomicU64 = AtomicU64::new(0);

fn deep() {
    DEEP.fetch_add(1, Ordering::Relaxed);
}

struct Guard;

/// Writes without allocating: called from inside the allocator.
fn report_raw(what: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(what);
    let target = CURRENT_TARGET.load(Ordering::Relaxed);
    if let Some(t) = TARGETS.get(target) {
        let _ = err.write_all(b" (target ");
        let _ = err.write_all(t.name.as_bytes());
        let _ = err.write_all(b")");
    }
    let _ = err.write_all(b"; the input, in hex:\n");
    let (ptr, len) = (CURRENT.load(Ordering::Relaxed), CURRENT_LEN.load(Ordering::Relaxed));
    if !ptr.is_null() {
        // Safety: the buffer stays alive while its input runs (see `run_one`).
        let input = unsafe { std::slice::from_raw_parts(ptr, len) };
        let hex = b"0123456789abcdef";
        for chunk in input.chunks(64) {
            let mut line = [0u8; 129];
            for (i, b) in chunk.iter().enumerate() {
                line[2 * i] = hex[(b >> 4) as usize];
                line[2 * i + 1] = hex[(b & 15) as usize];
            }
            line[2 * chunk.len()] = b'\n';
            let _ = err.write_all(&line[..2 * chunk.len() + 1]);
        }
    }
}

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_LIMIT {
            report_raw(b"fuzz: an allocation above the limit");
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_LIMIT {
            report_raw(b"fuzz: an allocation above the limit");
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_LIMIT {
            report_raw(b"fuzz: an allocation above the limit");
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Guard = Guard;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Aborts the process when one input runs longer than `HANG_SECONDS`.
fn start_watchdog() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        epoch();
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let started = STARTED.load(Ordering::Relaxed);
                let now = epoch().elapsed().as_millis() as u64 + 1;
                if started != 0 && now.saturating_sub(started) > HANG_SECONDS * 1000 {
                    report_raw(b"fuzz: an input ran longer than the hang limit");
                    std::process::abort();
                }
            }
        });
    });
}

// ---------------------------------------------------------------------------
// Inputs: seeds from the fixtures, and mutations.

/// A deterministic byte stream (splitmix64) to feed `Unstructured`.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// Real inputs to mutate, and tokens worth splicing in.
struct Corpus {
    seeds: Vec<Vec<u8>>,
    tokens: &'static [&'static [u8]],
}

impl Corpus {
    /// Raw bytes (one time in eight) or a seed with a few mutations: mostly one or
    /// two, so that most inputs still get past the parser to the code behind it.
    fn input(&self, u: &mut Unstructured) -> Result<Vec<u8>> {
        if self.seeds.is_empty() || u.ratio(1, 8)? {
            let n = u.int_in_range(0..=u.len().min(4096))?;
            return Ok(u.bytes(n)?.to_vec());
        }
        let mut data = u.choose(&self.seeds)?.clone();
        for _ in 0..*u.choose(&[0, 1, 1, 1, 1, 2, 2, 3, 4, 8])? {
            self.mutate(u, &mut data)?;
        }
        data.truncate(MAX_INPUT);
        Ok(data)
    }

    fn mutate(&self, u: &mut Unstructured, data: &mut Vec<u8>) -> Result<()> {
        let at = |u: &mut Unstructured, data: &Vec<u8>| u.int_in_range(0..=data.len());
        match u.int_in_range(0..=7)? {
            // Flip one byte.
            0 if !data.is_empty() => {
                let i = u.choose_index(data.len())?;
                data[i] ^= 1 << u.int_in_range(0..=7)?;
            }
            // A byte that delimits things.
            1 if !data.is_empty() => {
                let i = u.choose_index(data.len())?;
                data[i] = *u.choose(&b"\0\n\r\t \",;=[]{}#.-0123456789\\'\xff\xc3"[..])?;
            }
            // Insert a token.
            2 => {
                let i = at(u, data)?;
                let t = u.choose(self.tokens)?;
                data.splice(i..i, t.iter().copied());
            }
            // Delete a range.
            3 if !data.is_empty() => {
                let i = u.choose_index(data.len())?;
                let n = u.int_in_range(1..=(data.len() - i).min(64))?;
                data.drain(i..i + n);
            }
            // Repeat a range somewhere else.
            4 if !data.is_empty() => {
                let i = u.choose_index(data.len())?;
                let n = u.int_in_range(1..=(data.len() - i).min(256))?;
                let chunk: Vec<u8> = data[i..i + n].to_vec();
                let j = at(u, data)?;
                data.splice(j..j, chunk);
            }
            // Cut the end.
            5 => {
                let i = at(u, data)?;
                data.truncate(i);
            }
            // Splice another seed's tail in.
            6 if !self.seeds.is_empty() => {
                let other = u.choose(&self.seeds)?;
                let j = u.int_in_range(0..=other.len())?;
                let i = at(u, data)?;
                data.truncate(i);
                data.extend_from_slice(&other[j..]);
            }
            // Replace a run of digits with an extreme number.
            _ => {
                if let Some(i) = data.iter().position(|b| b.is_ascii_digit()).map(|first| {
                    let skip = u.int_in_range(0..=data.len() - first).unwrap_or(0);
                    data[first + skip..]
                        .iter()
                        .position(|b| b.is_ascii_digit())
                        .map_or(first, |p| first + skip + p)
                }) {
                    let end = data[i..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(data.len(), |p| i + p);
                    let number: &[u8] = u.choose(&[
                        b"0".as_slice(),
                        b"-1",
                        b"4294967296",
                        b"18446744073709551615",
                        b"18446744073709551616",
                        b"9223372036854775807",
                        b"1e308",
                        b"1e309",
                        b"nan",
                        b"inf",
                        b"-0.0",
                    ])?;
                    data.splice(i..end, number.iter().copied());
                }
            }
        }
        Ok(())
    }
}

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_with(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

// ---------------------------------------------------------------------------
// The targets.

/// A target ready to run: its seeds read, its temporary files made.
type Runner = Box<dyn Fn(&mut Unstructured) -> Result<()>>;

struct Target {
    name: &'static str,
    setup: fn() -> Runner,
}

static TARGETS: [Target; 8] = [
    Target {
        name: "config",
        setup: config,
    },
    Target {
        name: "csv",
        setup: csv,
    },
    Target {
        name: "jsonl",
        setup: jsonl,
    },
    Target {
        name: "safetensors",
        setup: safetensors,
    },
    Target {
        name: "handshake",
        setup: handshake,
    },
    Target {
        name: "idx",
        setup: idx,
    },
    Target {
        name: "data",
        setup: data,
    },
    Target {
        name: "gguf",
        setup: gguf,
    },
];

/// Every rule on a document; a rule that panicked is a finding.
fn run_rules(doc: &ConfigDoc, facts: &Facts) {
    let found = lora_validate::check(doc, facts);
    if let Some(d) = found.iter().find(|d| d.code == "validate::rule-panicked") {
        panic!("{}", d.message);
    }
    let _ = lora_validate::finish(Default::default(), found).to_string();
}

/// The configuration loader: layering (`extends`, environment, `--set`), the
/// structural parse, the spanned document, every rule, and the rendering of
/// every diagnostic (which maps spans back through the layers).
fn config() -> Runner {
    let mut seeds = files_with(&tests_dir().join("validate/broken"), "toml");
    seeds.extend(files_with(&tests_dir().join("validate"), "toml"));
    seeds.extend(files_with(&tests_dir().join("../configs"), "toml"));
    let corpus = Corpus {
        seeds,
        tokens: &[
            b"extends = [\"../corpus-base.toml\"]\n",
            b"extends = \"../corpus-base.toml\"\n",
            b"extends = [\"fuzz.toml\"]\n",
            b"extends = [3]\n",
            b"\n[train]\n",
            b"\n[train.optimizer]\n",
            b"\n[[data.augment]]\ntype = \"random-crop\"\n",
            b"\n[callbacks.early-stopping]\n",
            b"\n[plugins]\npaths = []\n",
            b"\n[data]\n",
            b"\n[model]\n",
            b"\n[lora]\n",
            b"rank-pattern = { \"layer.0\" = 16 }\n",
            b"target-modules = []\n",
            b"= inf\n",
            b"= nan\n",
            b"= -1\n",
            b"= \"\"\n",
            b"= [1, 2, 3]\n",
            b"= { a = 1 }\n",
            b"\"\"\"\n",
            b"'''",
            b"type = \"sgd\"\n",
            b"type = \"cosine\"\n",
            b"type = \"jsonl\"\n",
            b"type = \"vit-classifier\"\n",
            b"\xef\xbb\xbf",
            b"\r\n",
        ],
    };
    let path = tests_dir().join("validate/broken/fuzz.toml");
    let env_names = [
        "LORA__TRAIN__BATCH_SIZE",
        "LORA__TRAIN__OPTIMIZER__LR",
        "LORA__TRAIN",
        "LORA__",
        "LORA___",
        "LORA__A__B__C__D",
        "OVERRIDE_LR",
        "LORA_TRAIN_BATCH_SIZE",
        "lora__train__epochs",
        "Lora_Callbacks_Early_Stopping_Patience",
        "LORA_CACHE_DIR",
        "LORA_",
    ];
    let sets = [
        "train.batch-size=16",
        "train.optimizer.lr=1e-3",
        "lora.r=0",
        "data.labels=[\"a\"]",
        "run.name=x y",
        "a.b.c.d=1",
        "train.epochs.x=1",
        "=",
        ".=1",
        "train.=1",
        "train",
        "data.augment=1",
        "train.optimizer=3",
    ];
    Box::new(move |u| {
        let text = String::from_utf8_lossy(&corpus.input(u)?).into_owned();
        let mut overrides = Overrides::default();
        for _ in 0..u.int_in_range(0..=3)? {
            let name = if u.ratio(3, 4)? {
                u.choose(&env_names)?.to_string()
            } else {
                u.arbitrary::<String>()?
            };
            overrides.env.push((name, u.arbitrary()?));
        }
        for _ in 0..u.int_in_range(0..=3)? {
            let set = if u.ratio(3, 4)? {
                u.choose(&sets)?.to_string()
            } else {
                u.arbitrary::<String>()?
            };
            overrides.sets.push(set);
        }
        match lora_validate::compose_text(&path, text, &overrides) {
            Ok(composed) => {
                let _ = composed.warnings.to_string();
                let (_, diagnostics) = lora_core::config::PartialConfig::parse(composed.source.clone());
                let _ = diagnostics.to_string();
                match ConfigDoc::parse(&composed.source) {
                    Ok(doc) => {
                        deep();
                        run_rules(&doc, &Facts::default());
                    }
                    Err(d) => {
                        let _ = d.to_string();
                    }
                }
            }
            Err(d) => {
                let _ = d.to_string();
            }
        }
        Ok(())
    })
}

/// Line numbers are those of the file: increasing, from 2 (after the header) to the last line.
fn check_lines(rows: &[lora_data::read::RawRow], bytes: &[u8], first: usize) {
    let breaks = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count();
    let last = breaks + 1;
    let mut previous = 0;
    for r in rows {
        assert!(
            r.line >= first && r.line <= last && r.line > previous,
            "row at line {} (previous {previous}, file of {last} lines)",
            r.line
        );
        previous = r.line;
    }
    let _ = lora_data::LabelMap::from_rows(rows);
}

fn data_tokens() -> &'static [&'static [u8]] {
    &[
        b"\"",
        b"\"\"",
        b"\r\n",
        b"\n",
        b"\r",
        b",",
        b";",
        b"\t",
        b"text,label\n",
        b"sentiment,confidence,text\n",
        b"{\"text\": \"a\", \"label\": 1}\n",
        b"{\"text\": \"a\", \"label\": -1}\n",
        b"{\"text\": null}\n",
        b"[1, 2]\n",
        b"\xef\xbb\xbf",
        b"\xe9",
        b"\xff\xfe",
        b"\0",
    ]
}

/// The CSV reader, on every delimiter.
fn csv() -> Runner {
    let mut seeds = files_with(&tests_dir().join("validate/data"), "csv");
    seeds.push(b"text,label\r\nok,pos\r\n\"two\r\nlines\",neg\r\n".to_vec());
    let corpus = Corpus {
        seeds,
        tokens: data_tokens(),
    };
    let path = PathBuf::from("fuzz.csv");
    Box::new(move |u| {
        let bytes = corpus.input(u)?;
        let delimiter = if u.ratio(3, 4)? {
            b','
        } else {
            *u.choose(&b",;\t|"[..])?
        };
        // Mostly two columns of the header as written, so that rows get read.
        let header: Vec<String> = bytes
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or_default()
            .split(|&b| b == delimiter)
            .map(|f| String::from_utf8_lossy(f).trim_end_matches('\r').to_string())
            .collect();
        let (text, label) = if u.ratio(3, 4)? {
            (u.choose(&header)?.clone(), u.choose(&header)?.clone())
        } else {
            let (t, l) = *u.choose(&[("text", "sentiment"), ("text", "label"), ("", "")])?;
            (t.to_string(), l.to_string())
        };
        if let Ok(rows) = lora_data::read::parse_csv(&path, &bytes, delimiter, &text, &label) {
            deep();
            check_lines(&rows, &bytes, 2);
        }
        Ok(())
    })
}

/// The JSONL reader.
fn jsonl() -> Runner {
    let corpus = Corpus {
        seeds: vec![
            b"{\"text\": \"good film\", \"label\": \"pos\"}\n\n{\"text\": \"bad\", \"label\": 1}\r\n".to_vec(),
            b"\xef\xbb\xbf{\"text\": \"caf\xe9\", \"label\": 0, \"id\": [1, {\"a\": null}]}".to_vec(),
            b"{\"text\": \"a\\u00e9\\n\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": 18446744073709551615}\n"
                .to_vec(),
        ],
        tokens: data_tokens(),
    };
    let path = PathBuf::from("fuzz.jsonl");
    Box::new(move |u| {
        let bytes = corpus.input(u)?;
        if let Ok(rows) = lora_data::read::parse_jsonl(&path, &bytes[..], "text", "label") {
            deep();
            check_lines(&rows, &bytes, 1);
        }
        Ok(())
    })
}

/// The safetensors header reader and the model facts (config.json plus the header),
/// then every rule on the reference pipeline with the facts that were read.
fn safetensors() -> Runner {
    let models = tests_dir().join("validate/models");
    let mut weights = Vec::new();
    let mut configs = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&models)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    for dir in dirs {
        weights.extend(std::fs::read(dir.join("model.safetensors")));
        configs.extend(std::fs::read(dir.join("config.json")));
    }
    // The real MiniLM's header (with only the start of its data), when the asset is fetched.
    if let Ok(dir) = lora_core::stage::AssetResolver::resolve(&lora_assets::CacheResolver, "asset:all-minilm-l6-v2")
        && let Ok(mut f) = std::fs::File::open(dir.join("model.safetensors"))
    {
        use std::io::Read;
        let mut len = [0u8; 8];
        if f.read_exact(&mut len).is_ok() {
            let n = u64::from_le_bytes(len).min(1 << 20) as usize;
            let mut header = vec![0u8; n + 64];
            if f.read_exact(&mut header).is_ok() {
                weights.push([len.as_slice(), &header].concat());
            }
        }
        configs.extend(std::fs::read(dir.join("config.json")));
    }
    let weights = Corpus {
        seeds: weights,
        tokens: &[
            b"{\"__metadata__\": {\"a\": \"b\"}}",
            b"\"dtype\": \"F16\"",
            b"\"dtype\": \"BOOL\"",
            b"\"shape\": []",
            b"\"shape\": [18446744073709551615, 2]",
            b"\"data_offsets\": [0, 18446744073709551615]",
            b"\xff\xff\xff\xff\xff\xff\xff\x7f",
            b"\0\0\0\0\0\0\0\0",
        ],
    };
    let configs = Corpus {
        seeds: configs,
        tokens: &[
            b"{}",
            b"null",
            b"\"vocab_size\": -1",
            b"\"hidden_size\": 0",
            b"[]",
            b"1e400",
        ],
    };
    // Two small files written per input: in memory where the machine has a tmpfs.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir()).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let reference = tests_dir().join("../configs/sentiment-minilm.toml");
    let source = SourceFile::new(&reference, std::fs::read_to_string(&reference).unwrap());
    let doc = ConfigDoc::parse(&source).unwrap();
    Box::new(move |u| {
        let path = dir.path();
        std::fs::write(path.join("model.safetensors"), weights.input(u)?).unwrap();
        std::fs::write(path.join("config.json"), configs.input(u)?).unwrap();
        let _ = lora_core::bert::read_header(&path.join("model.safetensors"));
        if let Ok(model) = lora_core::bert::read_facts(path) {
            deep();
            let mut facts = Facts {
                model: Some(model),
                ..Facts::default()
            };
            facts.paths.insert("model.path".into(), Ok(path.to_path_buf()));
            run_rules(&doc, &facts);
        }
        Ok(())
    })
}

/// The GGUF header reader on the fixtures (tiny Llama, another architecture, a
/// K-quant, a truncated file) and, when fetched, the start of SmolLM2's real
/// header; then the Llama configuration and the model facts read from a header.
fn gguf() -> Runner {
    let mut seeds = files_with(&tests_dir().join("validate/models"), "gguf");
    if let Ok(dir) =
        lora_core::stage::AssetResolver::resolve(&lora_assets::CacheResolver, "asset:smollm2-135m-instruct")
        && let Some(file) = std::fs::read_dir(&dir).ok().and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "gguf"))
        })
        && let Ok(f) = std::fs::File::open(file)
    {
        use std::io::Read;
        let mut start = Vec::new();
        let _ = f.take(48 * 1024).read_to_end(&mut start);
        seeds.push(start);
    }
    let corpus = Corpus {
        seeds,
        tokens: &[
            b"GGUF",
            b"\x03\0\0\0",
            b"\xff\xff\xff\xff\xff\xff\xff\x7f",
            b"\0\0\0\0\0\0\0\0",
            b"general.architecture",
            b"llama.block_count",
            b"tokenizer.ggml.tokens",
        ],
    };
    let path = PathBuf::from("fuzz.gguf");
    Box::new(move |u| {
        let bytes = corpus.input(u)?;
        if let Ok(h) = lora_core::gguf::Header::parse(bytes.as_slice(), bytes.len() as u64, &path) {
            let _ = h.check_tensors();
            if let Ok(cfg) = lora_core::llama::LlamaConfig::from_header(&h) {
                deep();
                let _ = lora_core::llama::facts(&h, &cfg);
            }
        }
        Ok(())
    })
}

/// A text data source end to end: the facts validation gathers (a read, the split,
/// label counts, a tokenized sample), every rule on them, then the load a run does
/// (tokenizing every row), on fuzzed CSV and JSONL files and `[data]` options.
fn data() -> Runner {
    let mut seeds = files_with(&tests_dir().join("validate/data"), "csv");
    seeds.push(b"{\"text\": \"good film\", \"label\": \"pos\"}\n{\"text\": \"bad\", \"label\": \"neg\"}\n".to_vec());
    let corpus = Corpus {
        seeds,
        tokens: data_tokens(),
    };
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir()).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let tokenizer = tests_dir().join("validate/tiny-tokenizer.json");
    let options = [
        "",
        "labels = [\"negative\", \"neutral\", \"positive\"]\n",
        "labels = [\"pos\", \"neg\"]\non-unknown-label = \"skip\"\n",
        "validation-fraction = 0.5\n",
        "validation-fraction = 0.01\n",
        "max-length = 3\n",
        "max-length = 8\ntruncation = \"head-tail\"\n",
        "max-train-samples = 2\nmax-validation-samples = 1\n",
        "on-unknown-label = \"skip\"\n",
    ];
    Box::new(move |u| {
        let bytes = corpus.input(u)?;
        let jsonl = bytes.first() == Some(&b'{') || u.ratio(1, 8)?;
        let file = dir.path().join(if jsonl { "d.jsonl" } else { "d.csv" });
        std::fs::write(&file, &bytes).unwrap();
        let header: Vec<String> = bytes
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or_default()
            .split(|&b| b == b',')
            .map(|f| String::from_utf8_lossy(f).trim_end_matches('\r').to_string())
            .collect();
        let (text, label) = if jsonl || u.ratio(1, 8)? {
            ("text".to_string(), "label".to_string())
        } else {
            (u.choose(&header)?.clone(), u.choose(&header)?.clone())
        };
        let body = format!(
            "type = \"{}\"\npath = {:?}\ntokenizer = {:?}\ntext-column = {:?}\nlabel-column = {:?}\n{}",
            if jsonl { "jsonl" } else { "csv" },
            file.display().to_string(),
            tokenizer.display().to_string(),
            text,
            label,
            u.choose(&options)?
        );
        let pipeline = format!(
            "[run]\nname = \"fuzz\"\noutput-dir = \"fuzz-out\"\n\n[data]\n{body}\n[model]\ntype = \"bert-classifier\"\npath = \"no-model\"\n\n\
             [lora]\nr = 4\nalpha = 8\ntarget-modules = [\"query\"]\n\n[train]\nepochs = 1\nbatch-size = 4\n\n[train.optimizer]\ntype = \"adamw\"\nlr = 1e-3\n\n[eval]\n"
        );
        let Ok(config) = lora_core::config::PipelineConfig::parse(Path::new("fuzz.toml"), pipeline.clone()) else {
            return Ok(());
        };
        let Ok(src) = lora_data::TextData::from_component(&config.data, if jsonl { "jsonl" } else { "csv" }) else {
            return Ok(());
        };
        let ctx = lora_core::stage::StageContext {
            seed: u.arbitrary()?,
            assets: &lora_core::stage::NoAssets,
            tokenizer: None,
        };
        if let Ok(facts) = lora_data::facts::gather(&src, &ctx) {
            if facts.read_error.is_none() {
                deep();
            }
            let mut all = Facts {
                data: Some(facts),
                ..Facts::default()
            };
            all.paths.insert("data.path".into(), Ok(file.clone()));
            all.paths.insert("data.tokenizer".into(), Ok(tokenizer.clone()));
            let source = SourceFile::new(Path::new("fuzz.toml"), pipeline);
            run_rules(&ConfigDoc::parse(&source).unwrap(), &all);
        }
        let _ = src.load(&ctx);
        Ok(())
    })
}

/// The IDX reader (MNIST's format): a header of dimensions, then the values.
fn idx() -> Runner {
    let header = |dims: &[u32]| -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend(std::iter::repeat_n(7u8, dims.iter().product::<u32>() as usize));
        v
    };
    let corpus = Corpus {
        seeds: vec![header(&[3, 4, 5]), header(&[10]), header(&[2, 28, 28])],
        tokens: &[b"\xff\xff\xff\xff", b"\0\0\0\0", b"\0\0\x08\xff", b"\x80\0\0\0"],
    };
    Box::new(move |u| {
        let bytes = corpus.input(u)?;
        if let Ok(array) = lora_data::image::idx::parse_idx(&bytes) {
            deep();
            assert_eq!(array.dims.iter().product::<usize>(), array.data.len());
        }
        Ok(())
    })
}

/// The plugin handshake: a declaration passes exactly when its magic number, the
/// interface's major and minor version and the compiler match the host's.
fn handshake() -> Runner {
    use lora_plugin_api::{API_VERSION, MAGIC, RUSTC_VERSION, Version};
    Box::new(|u| {
        let near = |u: &mut Unstructured, v: u32| -> Result<u32> {
            Ok(match u.int_in_range(0..=3)? {
                0 | 1 => v,
                2 => v.wrapping_add(1),
                _ => u.arbitrary()?,
            })
        };
        let magic = if u.ratio(3, 4)? { MAGIC } else { u.arbitrary()? };
        let api = Version {
            major: near(u, API_VERSION.major)?,
            minor: near(u, API_VERSION.minor)?,
            patch: near(u, API_VERSION.patch)?,
        };
        let mut rustc = RUSTC_VERSION.as_bytes().to_vec();
        if u.ratio(1, 2)? {
            let corpus = Corpus {
                seeds: vec![rustc.clone()],
                tokens: &[b"\0", b"-nightly", b" ", b"\xff"],
            };
            rustc = corpus.input(u)?;
        }
        let declared = lora_plugin_host::Declared {
            magic,
            api,
            rustc: String::from_utf8_lossy(&rustc).into_owned(),
            name: u.arbitrary()?,
            version: u.arbitrary()?,
        };
        let result = lora_plugin_host::check_handshake(&declared);
        if result.is_ok() {
            deep();
        }
        let expected = magic == MAGIC
            && api.major == API_VERSION.major
            && api.minor == API_VERSION.minor
            && declared.rustc == RUSTC_VERSION;
        assert_eq!(result.is_ok(), expected, "{declared:?}: {result:?}");
        if let Err(e) = result {
            assert!(!e.is_empty());
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The driver.

/// Runs one input (the raw bytes `Unstructured` reads); `Err` holds the panic message.
fn run_one(
    target: usize,
    run: &dyn Fn(&mut Unstructured) -> Result<()>,
    bytes: &[u8],
) -> std::result::Result<(), String> {
    CURRENT.store(bytes.as_ptr() as *mut u8, Ordering::Relaxed);
    CURRENT_LEN.store(bytes.len(), Ordering::Relaxed);
    CURRENT_TARGET.store(target, Ordering::Relaxed);
    STARTED.store(epoch().elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _ = run(&mut Unstructured::new(bytes));
    }));
    STARTED.store(0, Ordering::Relaxed);
    CURRENT.store(std::ptr::null_mut(), Ordering::Relaxed);
    result.map_err(|p| lora_core::error::panic_message(p.as_ref()))
}

fn findings_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings")
}

#[test]
fn fuzz_every_target() {
    // rules() must see the built-in rules: the crate is linked for them.
    assert!(
        lora_core::rules::rules().len() >= 150,
        "the built-in rules are not linked"
    );
    let seconds: f64 = std::env::var("LORA_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let only = std::env::var("LORA_FUZZ_TARGET").ok().filter(|t| !t.is_empty());
    if let Some(t) = &only {
        assert!(
            TARGETS.iter().any(|x| x.name == t),
            "no fuzz target `{t}`; targets: {}",
            TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
        );
    }
    let seed: u64 = std::env::var("LORA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(19, |d| d.as_nanos() as u64)
        });
    // Panics are caught and reported once each, not printed for every input.
    std::panic::set_hook(Box::new(|_| {}));
    start_watchdog();

    let mut findings = Vec::new();
    if let Ok(replay) = std::env::var("LORA_FUZZ_REPLAY") {
        let bytes = std::fs::read(&replay).unwrap();
        let name = only.as_deref().expect("LORA_FUZZ_REPLAY needs LORA_FUZZ_TARGET");
        let i = TARGETS.iter().position(|t| t.name == name).unwrap();
        let run = (TARGETS[i].setup)();
        let result = run_one(i, run.as_ref(), &bytes);
        let _ = std::panic::take_hook();
        assert!(result.is_ok(), "{name}: {}", result.unwrap_err());
        return;
    }
    println!("fuzz: seed {seed} (LORA_FUZZ_SEED={seed} repeats this run), {seconds} s per target");
    for (i, target) in TARGETS.iter().enumerate() {
        if only.as_deref().is_some_and(|t| t != target.name) {
            continue;
        }
        let run = (target.setup)();
        let mut stream = Stream(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let start = Instant::now();
        let mut tried: u64 = 0;
        DEEP.store(0, Ordering::Relaxed);
        while start.elapsed().as_secs_f64() < seconds {
            let n = (stream.next() % 8192) as usize + 16;
            let bytes = stream.fill(n);
            tried += 1;
            if let Err(message) = run_one(i, run.as_ref(), &bytes) {
                std::fs::create_dir_all(findings_dir()).unwrap();
                let file = findings_dir().join(format!("{}-{seed}-{tried}.bin", target.name));
                std::fs::write(&file, &bytes).unwrap();
                findings.push(format!(
                    "{}: panic `{message}`; replay: LORA_FUZZ_TARGET={} LORA_FUZZ_REPLAY={}",
                    target.name,
                    target.name,
                    file.display()
                ));
                break;
            }
        }
        println!(
            "fuzz {}: {tried} inputs in {:.1} s ({} got past parsing)",
            target.name,
            start.elapsed().as_secs_f64(),
            DEEP.load(Ordering::Relaxed)
        );
    }
    let _ = std::panic::take_hook();
    assert!(findings.is_empty(), "fuzz findings:\n{}", findings.join("\n"));
}

/// The harness itself: a panicking input is caught and reported, and a target's
/// input depends only on its bytes.
#[test]
fn the_harness_catches_panics_and_replays_inputs() {
    let panics: Runner = Box::new(|u| {
        if u.arbitrary::<u8>()? == 7 {
            // As a panic would, without the panic hook's message in the test output.
            std::panic::resume_unwind(Box::new("seven"));
        }
        Ok(())
    });
    assert_eq!(run_one(0, panics.as_ref(), &[7]).unwrap_err(), "seven");
    assert!(run_one(0, panics.as_ref(), &[8]).is_ok());
    let corpus = Corpus {
        seeds: vec![b"[train]\nepochs = 1\n".to_vec()],
        tokens: &[b"inf"],
    };
    let mut stream = Stream(5);
    for _ in 0..100 {
        let bytes = stream.fill(64);
        let a = corpus.input(&mut Unstructured::new(&bytes)).unwrap();
        let b = corpus.input(&mut Unstructured::new(&bytes)).unwrap();
        assert_eq!(a, b);
        assert!(a.len() <= MAX_INPUT);
    }
}
