//! Opening libraries, the handshake, and registration.

use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lora_core::diag::Location;
use lora_plugin_api::boundary::{GuardedAugmentationEntry, GuardedCallbackEntry, GuardedRuleEntry, Host};
use lora_plugin_api::{DECLARATION_SYMBOL, PluginDeclaration};

use crate::handshake::{Declared, check_handshake};

/// A library to load, and where the pipeline names it.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: PathBuf,
    pub location: Option<Location>,
}

/// Why one library could not be loaded.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub path: PathBuf,
    /// The plugin's declared name, when the declaration could be read.
    pub plugin: Option<String>,
    pub message: String,
    pub location: Option<Location>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.plugin {
            Some(name) => write!(f, "plugin `{name}` ({}): {}", self.path.display(), self.message),
            None => write!(f, "plugin {}: {}", self.path.display(), self.message),
        }
    }
}

/// A loaded plugin and what it added.
#[derive(Debug, Clone)]
pub struct LoadedPlugin {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    /// (kind, name) of every contribution.
    pub contributions: Vec<(&'static str, String)>,
    /// Open, handshake and registration.
    pub load_time: Duration,
}

/// Every plugin loaded in this process, by canonical path: a library is loaded once.
static LOADED: Mutex<Vec<LoadedPlugin>> = Mutex::new(Vec::new());

/// The plugins loaded so far.
pub fn loaded() -> Vec<LoadedPlugin> {
    LOADED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Loads every requested library; all failures are returned together.
pub fn load_all(requests: &[Request]) -> (Vec<LoadedPlugin>, Vec<LoadError>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in requests {
        let canonical = std::fs::canonicalize(&r.path).unwrap_or_else(|_| r.path.clone());
        if let Some(p) = loaded().into_iter().find(|p| p.path == canonical) {
            ok.push(p);
            continue;
        }
        match load_one(&canonical) {
            Ok(p) => {
                LOADED.lock().unwrap_or_else(|e| e.into_inner()).push(p.clone());
                ok.push(p);
            }
            Err((plugin, message)) => errors.push(LoadError {
                path: r.path.clone(),
                plugin,
                message,
                location: r.location.clone(),
            }),
        }
    }
    (ok, errors)
}

type Failure = (Option<String>, String);

fn load_one(path: &Path) -> Result<LoadedPlugin, Failure> {
    let started = Instant::now();
    if !path.is_file() {
        return Err((None, "the library file does not exist".into()));
    }
    // Safety: loading runs the library's initialisers; that is what loading a plugin means.
    let library =
        unsafe { libloading::Library::new(path) }.map_err(|e| (None, format!("cannot open the library: {e}")))?;
    // Never unloaded: registered components point into the library.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    let symbol = format!("{DECLARATION_SYMBOL}\0");
    // Safety: the symbol is declared by `export_plugin!` as a `PluginDeclaration` static.
    let declaration: &'static PluginDeclaration = unsafe {
        let s = library.get::<*const PluginDeclaration>(symbol.as_bytes()).map_err(|_| {
            (
                None,
                format!(
                    "missing entry symbol `{DECLARATION_SYMBOL}`: expected a library built with `lora_plugin_api::export_plugin!`"
                ),
            )
        })?;
        &**s
    };
    let declared = read_declaration(declaration);
    check_handshake(&declared).map_err(|m| (Some(declared.name.clone()), m))?;

    let mut registrar = Collect::default();
    let message = {
        let mut dynamic: &mut dyn Host = &mut registrar;
        let arg = &mut dynamic as *mut &mut dyn Host as *mut std::ffi::c_void;
        // Safety: the handshake passed, so `register` has the signature we call it with;
        // it catches the plugin's own panics and returns a message instead, and wraps
        // every component so that later calls catch their panics in the plugin too.
        unsafe { (declaration.register)(arg) }
    };
    if !message.is_null() {
        // Safety: a NUL-terminated string the shim leaked for us.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
        return Err((Some(declared.name), text));
    }
    let origin: &'static str = Box::leak(path.display().to_string().into_boxed_str());
    let who: &'static str = Box::leak(format!("plugin `{}` ({origin})", declared.name).into_boxed_str());
    let contributions = crate::adapt::install(registrar, origin, who).map_err(|m| (Some(declared.name.clone()), m))?;
    Ok(LoadedPlugin {
        name: declared.name,
        version: declared.version,
        path: path.to_path_buf(),
        contributions,
        load_time: started.elapsed(),
    })
}

fn read_declaration(d: &PluginDeclaration) -> Declared {
    // Reading the magic first keeps us from following the pointers of something else.
    let text = |p: *const c_char| {
        if p.is_null() || d.magic != lora_plugin_api::MAGIC {
            String::new()
        } else {
            // Safety: `export_plugin!` stores NUL-terminated static strings.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    Declared {
        magic: d.magic,
        api: d.api,
        rustc: text(d.rustc),
        name: text(d.name),
        version: text(d.version),
    }
}

/// What a plugin registers (wrapped by the plugin's side of the boundary), before
/// it is adapted to the host's registries.
#[derive(Default)]
pub(crate) struct Collect {
    pub augmentations: Vec<GuardedAugmentationEntry>,
    pub rules: Vec<GuardedRuleEntry>,
    pub callbacks: Vec<GuardedCallbackEntry>,
}

impl Host for Collect {
    fn augmentation(&mut self, entry: GuardedAugmentationEntry) {
        self.augmentations.push(entry);
    }
    fn rule(&mut self, entry: GuardedRuleEntry) {
        self.rules.push(entry);
    }
    fn callback(&mut self, entry: GuardedCallbackEntry) {
        self.callbacks.push(entry);
    }
}
