//! Records the compiler's version, which the handshake compares: Rust has no
//! stable ABI, so a plugin must be built by the same rustc as the host.

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LORA_PLUGIN_RUSTC={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
