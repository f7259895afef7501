//! Loading dynamic plugins: `[plugins] paths = [...]`.
//!
//! For each library: open it (`libloading`), find the declaration symbol, read
//! the declaration and check the handshake (magic, interface version, compiler)
//! before calling anything, then call its registration through a
//! [`lora_plugin_api::Registrar`] and adapt what it registers to the host's
//! registries. Every failure is a message naming the plugin and what was
//! expected and found; all of them are reported together. Libraries are never
//! unloaded. Panics inside a plugin are caught on the plugin's side of the
//! boundary (by the wrappers `lora_plugin_api::boundary` compiles into it) and
//! come back as errors naming the plugin and the component.

mod adapt;
mod handshake;
mod load;

pub use adapt::{build_callback_for_run, resolve, take_unresolved_paths};
pub use handshake::{Declared, check_handshake};
pub use load::{LoadError, LoadedPlugin, Request, load_all, loaded};
/// The interface this host provides (`lora --version` shows it), and what a run tells a callback.
pub use lora_plugin_api::{API_VERSION, RUSTC_VERSION, RunInfo};
