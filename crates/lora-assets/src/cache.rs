//! Where assets live on disk, and the fetch-once logic around that.
//!
//! The cache sits outside the repository so that `git clean` and fresh
//! checkouts keep it, and several checkouts share one copy of each asset.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use lora_core::Error;

use crate::download;
use crate::manifest::{self, Asset};
use crate::scratch::ScratchDir;

/// Name of the marker file that makes an asset folder count as complete.
/// It is written after every check has passed, and only then is the folder
/// renamed into place, so its presence means "verified".
pub(crate) const COMPLETE: &str = ".complete";

/// Serialises installs within this process: scratch folders are named by
/// process id, so two threads installing at once would share one.
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

pub(crate) fn install_lock() -> MutexGuard<'static, ()> {
    // A panic elsewhere while holding the lock leaves nothing to repair:
    // scratch folders are recreated from scratch.
    INSTALL_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An asset cache rooted at one folder.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// Where an asset lives and whether it is already there; see [`Cache::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub name: &'static str,
    /// The asset root (it exists only when `cached`).
    pub root: PathBuf,
    /// The asset is unpacked and verified.
    pub cached: bool,
}

impl Cache {
    /// A cache rooted at `root` (created on first install).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    /// The cache of this environment: `$LORA_CACHE_DIR` if set, else
    /// `$HOME/.cache/lora-scripts`. Made absolute so that paths handed out
    /// stay valid when the working directory changes.
    pub fn from_env() -> Result<Self, Error> {
        let root = match non_empty_var("LORA_CACHE_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => match non_empty_var("HOME") {
                Some(home) => Path::new(&home).join(".cache").join("lora-scripts"),
                None => return Err(Error::Other("no asset cache: set LORA_CACHE_DIR (or HOME)".to_string())),
            },
        };
        let root = std::path::absolute(&root).map_err(|e| Error::io("asset cache", root, e))?;
        Ok(Cache::new(root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<cache>/assets/<name>`: the asset root once installed.
    pub fn asset_dir(&self, name: &str) -> PathBuf {
        self.root.join("assets").join(name)
    }

    /// `<cache>/downloads`: scratch space for registry clients.
    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// Where asset `name` lives and whether it is already cached; fetches nothing.
    pub fn status(&self, name: &str) -> Result<Status, Error> {
        let asset = manifest::find(name)?;
        let root = self.asset_dir(asset.name);
        Ok(Status {
            name: asset.name,
            cached: is_complete(&root),
            root,
        })
    }

    /// The root folder of asset `name`, fetched from its registry and
    /// verified first if it is not cached yet.
    pub fn ensure(&self, name: &str) -> Result<PathBuf, Error> {
        self.ensure_with(manifest::find(name)?, download::download)
    }

    /// [`Cache::ensure`] with the download step supplied by the caller:
    /// `fetch(asset, empty_dir)` puts the archive into `empty_dir` and
    /// returns its path, or says why it could not.
    pub(crate) fn ensure_with(
        &self,
        asset: &Asset,
        fetch: impl FnOnce(&Asset, &Path) -> Result<PathBuf, String>,
    ) -> Result<PathBuf, Error> {
        let dest = self.asset_dir(asset.name);
        if is_complete(&dest) {
            return Ok(dest);
        }
        let _lock = install_lock();
        if is_complete(&dest) {
            return Ok(dest); // another thread installed it while we waited
        }
        let downloads = self.downloads_dir();
        fs::create_dir_all(&downloads)
            .map_err(|e| asset.error(format!("cannot create {}: {e}", downloads.display())))?;
        // Removed when this function returns: the archive is not needed once unpacked.
        let scratch = ScratchDir::create(downloads.join(format!("{}.tmp-{}", asset.name, std::process::id())))
            .map_err(|e| {
                asset.error(format!(
                    "cannot create a download folder in {}: {e}",
                    downloads.display()
                ))
            })?;
        let archive = fetch(asset, scratch.path()).map_err(|reason| asset.error(reason))?;
        self.install_unlocked(asset, &archive)
    }
}

/// Whether the folder is an installed, verified asset root.
pub(crate) fn is_complete(root: &Path) -> bool {
    root.join(COMPLETE).is_file()
}

fn non_empty_var(key: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(key).filter(|v| !v.is_empty())
}
