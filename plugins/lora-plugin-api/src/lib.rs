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
//! Panics: a plugin and the host each have their own copy of the standard
//! library, and a panic cannot unwind from one into the other (the process
//! would abort). So every panic is caught on the plugin's side: the shim that
//! [`export_plugin!`] writes catches one in `register`, and wraps every
//! component the plugin registers so that each later call (a factory, an
//! augmentation, a rule, a callback) runs under `catch_unwind` inside the
//! plugin and returns the panic's message to the host as an error (see
//! [`boundary`]). Libraries are never unloaded, so what a plugin registers
//! stays valid for the process.
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

pub mod boundary;
mod components;
mod value;

pub use components::{
    Action, Augmentation, AugmentationEntry, AugmentationFactory, Callback, CallbackEntry, CallbackFactory, Event,
    EventKind, Finding, Image, Registrar, Rule, RuleEntry, RunInfo, Severity,
};
pub use value::{ConfigView, Params, Value};

/// The interface version this crate defines: this crate's own package version
/// (`version` in its `Cargo.toml`), read at compile time, so that the two cannot
/// disagree.
pub const API_VERSION: Version = {
    let v = Version::parse(env!("CARGO_PKG_VERSION"));
    if cfg!(feature = "__test-future-major") {
        Version {
            major: v.major + 1,
            minor: 0,
            patch: 0,
        }
    } else {
        v
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
    /// Parses `MAJOR.MINOR.PATCH` (a pre-release or build suffix after the patch is ignored).
    /// Used at compile time on the crate's version; panics (a compile error there) on anything else.
    pub const fn parse(text: &str) -> Version {
        let bytes = text.as_bytes();
        let mut parts = [0u32; 3];
        let mut part = 0;
        let mut digits = 0;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'.' && part < 2 {
                assert!(digits > 0, "a version part without digits");
                part += 1;
                digits = 0;
            } else if b.is_ascii_digit() {
                parts[part] = parts[part] * 10 + (b - b'0') as u32;
                digits += 1;
            } else if (b == b'-' || b == b'+') && part == 2 {
                break;
            } else {
                panic!("not a MAJOR.MINOR.PATCH version");
            }
            i += 1;
        }
        assert!(part == 2 && digits > 0, "not a MAJOR.MINOR.PATCH version");
        Version {
            major: parts[0],
            minor: parts[1],
            patch: parts[2],
        }
    }

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
    /// Called only after the handshake passed. `registrar` is a `*mut &mut dyn boundary::Host`.
    /// Returns null on success, or a NUL-terminated message (leaked) on failure.
    pub register: unsafe extern "C" fn(registrar: *mut std::ffi::c_void) -> *const c_char,
}

// The pointers refer to static, immutable strings.
unsafe impl Sync for PluginDeclaration {}

/// Runs the plugin's registration function with a [`Registrar`] that wraps every
/// component for the host ([`boundary::Wrapping`]), turning a panic into a message.
///
/// Used by [`export_plugin!`]; not for plugin authors. Compiled into the plugin,
/// so the panics it catches are the plugin's own.
#[doc(hidden)]
pub fn __register_shim(host: *mut std::ffi::c_void, register: fn(&mut dyn Registrar)) -> *const c_char {
    // Safety: the host passes a `*mut &mut dyn boundary::Host` that outlives this call.
    let host: &mut &mut dyn boundary::Host = unsafe { &mut *(host as *mut &mut dyn boundary::Host) };
    boundary::install_panic_hook();
    let mut wrapping = boundary::Wrapping { host: *host };
    match boundary::catch(|| register(&mut wrapping)) {
        Ok(()) => std::ptr::null(),
        Err(message) => {
            let message = std::ffi::CString::new(message.replacen("panicked", "panicked while registering", 1))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_version_is_the_package_version() {
        let package = env!("CARGO_PKG_VERSION");
        if cfg!(feature = "__test-future-major") {
            assert_eq!(API_VERSION.major, Version::parse(package).major + 1);
        } else {
            assert_eq!(API_VERSION.to_string(), package);
        }
    }

    #[test]
    fn versions_parse_with_or_without_a_suffix() {
        let v = |major, minor, patch| Version { major, minor, patch };
        assert_eq!(Version::parse("1.1.0"), v(1, 1, 0));
        assert_eq!(Version::parse("12.30.4-rc.1"), v(12, 30, 4));
        assert_eq!(Version::parse("2.0.7+build.5"), v(2, 0, 7));
        for bad in ["1.1", "1..0", "x.1.0", "1.1.0.0", ""] {
            assert!(std::panic::catch_unwind(|| Version::parse(bad)).is_err(), "{bad}");
        }
    }
}

/// `docs/PLUGINS.md`, compiled as doctests so that the guide's code keeps compiling.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/PLUGINS.md")]
pub struct PluginsGuide;
