//! `cargo xtask fetch [NAME...]`: downloads and verifies pinned assets into
//! the cache, so that later runs (and offline machines after a copy of the
//! cache) never wait on a registry.

use std::process::ExitCode;

pub const USAGE: &str = "fetch [NAME...]      fetch pinned assets into the cache (all when no NAME)";

pub fn run(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: cargo xtask {USAGE}\n\nassets:");
        for asset in lora_assets::assets() {
            println!("  {:<20} {} ({})", asset.name, asset.source, asset.licence);
        }
        return ExitCode::SUCCESS;
    }
    if let Some(flag) = args.iter().find(|a| a.starts_with('-')) {
        eprintln!("error: unknown option `{flag}`\nusage: cargo xtask {USAGE}");
        return ExitCode::from(2);
    }

    // All names are checked before anything is downloaded: a typo is a usage error.
    let mut names = Vec::new();
    for arg in args {
        match lora_assets::find(arg) {
            Ok(asset) => names.push(asset.name),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if names.is_empty() {
        names = lora_assets::assets().iter().map(|a| a.name).collect();
    }

    // Keep going after a failure so that one run reports every broken asset.
    let mut failed = false;
    for name in names {
        match fetch_one(name) {
            Ok((root, was_cached)) => {
                let state = if was_cached { "already cached" } else { "fetched" };
                println!("{name:<20} {state:<15} {}", root.display());
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The asset root, and whether it was in the cache before this call.
fn fetch_one(name: &str) -> Result<(std::path::PathBuf, bool), lora_core::Error> {
    let was_cached = lora_assets::status(name)?.cached;
    Ok((lora_assets::ensure(name)?, was_cached))
}
