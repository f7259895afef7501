//! The handshake: what a declaration must say before the host calls into it.

use lora_plugin_api::{API_VERSION, MAGIC, RUSTC_VERSION, Version};

/// What a plugin declared, read from its `PluginDeclaration`.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub magic: u64,
    pub api: Version,
    pub rustc: String,
    pub name: String,
    pub version: String,
}

/// Checks a declaration against this host; the error says what was expected and found.
pub fn check_handshake(d: &Declared) -> Result<(), String> {
    check_against(d, API_VERSION, RUSTC_VERSION)
}

pub(crate) fn check_against(d: &Declared, api: Version, rustc: &str) -> Result<(), String> {
    if d.magic != MAGIC {
        return Err("the declaration symbol does not hold a lora plugin declaration (bad magic number)".into());
    }
    if !d.api.compatible_with(api) {
        return Err(format!(
            "plugin interface version mismatch: the plugin was built against lora-plugin-api {}, this host provides {} \
             (major and minor must match); rebuild the plugin against lora-plugin-api {}.{}",
            d.api, api, api.major, api.minor
        ));
    }
    if d.rustc != rustc {
        return Err(format!(
            "compiler mismatch: the plugin was built with `{}`, this host with `{rustc}`; Rust has no stable ABI, \
             so rebuild the plugin with the host's compiler",
            d.rustc
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> Declared {
        Declared {
            magic: MAGIC,
            api: API_VERSION,
            rustc: RUSTC_VERSION.into(),
            name: "p".into(),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn a_matching_declaration_passes_and_each_mismatch_says_what_differs() {
        assert_eq!(check_handshake(&declared()), Ok(()));
        let patch = Declared {
            api: Version {
                patch: API_VERSION.patch + 3,
                ..API_VERSION
            },
            ..declared()
        };
        assert_eq!(check_handshake(&patch), Ok(()), "patches are compatible");

        let minor = Declared {
            api: Version {
                minor: API_VERSION.minor + 1,
                ..API_VERSION
            },
            ..declared()
        };
        let e = check_handshake(&minor).unwrap_err();
        assert!(
            e.contains("interface version mismatch") && e.contains(&format!("{}", minor.api)),
            "{e}"
        );

        let compiler = Declared {
            rustc: "rustc 1.80.0 (051478957 2024-07-21)".into(),
            ..declared()
        };
        let e = check_handshake(&compiler).unwrap_err();
        assert!(e.contains("rustc 1.80.0") && e.contains(RUSTC_VERSION), "{e}");

        let magic = Declared { magic: 7, ..declared() };
        assert!(check_handshake(&magic).unwrap_err().contains("magic"));
    }
}
