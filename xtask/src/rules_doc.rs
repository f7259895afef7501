//! `cargo xtask rules-doc`: regenerates docs/RULES.md from the rule registry.

use std::process::{Command, ExitCode};

use crate::cargo;

pub const USAGE: &str = "rules-doc            regenerate docs/RULES.md from the validation rule registry";

pub fn run(_args: &[String]) -> ExitCode {
    let lora = match cargo::build_lora_for("candle") {
        Ok(p) => p,
        Err(code) => return code,
    };
    let output = match Command::new(lora).args(["rules", "--markdown"]).output() {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => {
            eprintln!("error: lora rules failed: {}", String::from_utf8_lossy(&o.stderr));
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: cannot start lora: {e}");
            return ExitCode::from(1);
        }
    };
    let path = cargo::workspace_root().join("docs/RULES.md");
    // Written beside the target and renamed, so a failure never leaves half a page.
    let tmp = path.with_extension("md.tmp");
    let written = std::fs::create_dir_all(path.parent().expect("docs/"))
        .and_then(|_| std::fs::write(&tmp, &output))
        .and_then(|_| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => {
            println!("wrote {} ({} bytes)", path.display(), output.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}
