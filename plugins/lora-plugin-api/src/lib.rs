//! The interface a lora-scripts plugin compiles against.
//!
//! A plugin is a `cdylib` that depends on this crate only. It exports one
//! static, [`PluginDeclaration`], with [`export_plugin!`]. The host (`lora`)
//! opens the library, reads the declaration *before calling anything*, and
//! compares two things:
//!
//! - the interface version: the plugin's `major.minor` must equal the host's
//!   (the patch may differ: patches change documentation only). Rust trait
//!   objects cross the boundary, and adding a method changes their layout, so
//!   any interface change is a minor (or major) bump;
//! - the compiler: Rust has no stable ABI, so the plugin must be built by the
//!   same `rustc` as the host (`rustc --version`, compared verbatim).
//!
//! Only then does the host call the declaration's `register` with a
//! [`Registrar`], through which the plugin adds components:
//! image augmentations ([`Augmentation`]), validation rules ([`Rule`]) and
//! training callbacks ([`Callback`]). Every type that crosses the boundary is
//! defined in this crate with std types only; nothing of the host's own crates
//! does, so the host can change its internals without breaking plugins.
//!
//! Panics: the `register` shim that [`export_plugin!`] writes catches a panic
//! inside the plugin and reports it; the host catches panics of every later
//! call (an augmentation, a rule, a callback) at the boundary. Libraries are
//! never unloaded, so what a plugin registers stays valid for the process.
//!
//! ```
//! use lora_plugin_api::{export_plugin, Registrar};
//!
//! fn register(r: &mut dyn Registrar) {
//!     // r.augmentation(...), r.rule(...), r.callback(...)
//!     let _ = r;
//! }
//! export_plugin!("my-plugin", "0.1.0", register);
//! ```

use std::ffi::c_char;

mod components;
mod value;

pub use components::{
    Action, Augmentation, AugmentationEntry, Callback, CallbackEntry, Event, EventKind, Finding, Image, Registrar,
    Rule, RuleEntry, Severity,
};
pub use value::{ConfigView, Params, Value};

/// The interface version this crate defines.
pub const API_VERSION: Version = if cfg!(feature = "__test-future-major") {
    Version {
        major: 2,
        minor: 0,
        patch: 0,
    }
} else {
    Version {
        major: 1,
        minor: 0,
        patch: 0,
    }
};

/// `rustc --version` of the compiler that built this crate (and so the plugin, in the same build).
pub const RUSTC_VERSION: &str = env!("LORA_PLUGIN_RUSTC");

#[doc(hidden)]
pub const RUSTC_VERSION_NUL: &str = concat!(env!("LORA_PLUGIN_RUSTC"), "\0");

/// Marks a [`PluginDeclaration`]: "LORAPLUG" in ASCII.
pub const MAGIC: u64 = u64::from_le_bytes(*b"LORAPLUG");

/// The symbol every plugin exports.
pub const DECLARATION_SYMBOL: &str = "LORA_PLUGIN_DECLARATION";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// Whether a plugin declaring `self` may be loaded by a host of `host`.
    pub fn compatible_with(self, host: Version) -> bool {
        self.major == host.major && self.minor == host.minor
    }
}

/// What a plugin exports, laid out in C so that the host can read it whatever
/// compiled the plugin. Strings are NUL-terminated UTF-8.
#[repr(C)]
pub struct PluginDeclaration {
    pub magic: u64,
    pub api: Version,
    pub rustc: *const c_char,
    pub name: *const c_char,
    pub version: *const c_char,
    /// Called only after the handshake passed. `registrar` is a `*mut &mut dyn Registrar`.
    /// Returns null on success, or a NUL-terminated message (leaked) on failure.
    pub register: unsafe extern "C" fn(registrar: *mut std::ffi::c_void) -> *const c_char,
}

// The pointers refer to static, immutable strings.
unsafe impl Sync for PluginDeclaration {}

/// Runs the plugin's registration function, turning a panic into a message.
///
/// Used by [`export_plugin!`]; not for plugin authors.
#[doc(hidden)]
pub fn __register_shim(registrar: *mut std::ffi::c_void, register: fn(&mut dyn Registrar)) -> *const c_char {
    // Safety: the host passes a `*mut &mut dyn Registrar` that outlives this call.
    let registrar: &mut &mut dyn Registrar = unsafe { &mut *(registrar as *mut &mut dyn Registrar) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| register(*registrar))) {
        Ok(()) => std::ptr::null(),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            let message = std::ffi::CString::new(format!("panicked while registering: {what}"))
                .unwrap_or_else(|_| c"panicked while registering".into());
            message.into_raw()
        }
    }
}

/// Exports the plugin's declaration: `export_plugin!(name, version, register_fn)`.
///
/// `register_fn: fn(&mut dyn Registrar)` is called once, after the handshake.
#[macro_export]
macro_rules! export_plugin {
    ($name:expr, $version:expr, $register:path) => {
        #[doc(hidden)]
        unsafe extern "C" fn __lora_plugin_register(registrar: *mut ::std::ffi::c_void) -> *const ::std::ffi::c_char {
            $crate::__register_shim(registrar, $register)
        }

        #[unsafe(no_mangle)]
        pub static LORA_PLUGIN_DECLARATION: $crate::PluginDeclaration = $crate::PluginDeclaration {
            magic: $crate::MAGIC,
            api: $crate::API_VERSION,
            rustc: $crate::RUSTC_VERSION_NUL.as_ptr() as *const ::std::ffi::c_char,
            name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
            version: concat!($version, "\0").as_ptr() as *const ::std::ffi::c_char,
            register: __lora_plugin_register,
        };
    };
}
