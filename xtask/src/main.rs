//! `cargo xtask <command>`: project chores written in Rust, so they run the
//! same on every machine that can build the project (see .cargo/config.toml).
//!
//! Each command lives in its own module with `pub const USAGE: &str` and
//! `pub fn run(args: &[String]) -> ExitCode`. Adding one takes a `mod` line,
//! a match arm in [`main`] and its `USAGE` in [`COMMANDS`].

use std::process::ExitCode;

mod against_torch;
mod bench;
mod bench_accuracy;
mod bench_causal;
mod bench_strategies;
mod bench_vit;
mod build_plugins;
mod cargo;
mod fetch;
mod fuzz;
mod rules_doc;
mod run;
mod test;

/// Usage lines of every command, in the order `help` lists them.
const COMMANDS: &[&str] = &[
    run::USAGE,
    fetch::USAGE,
    test::USAGE,
    fuzz::USAGE,
    bench::USAGE,
    rules_doc::USAGE,
    build_plugins::USAGE,
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{}", usage());
        return ExitCode::from(2);
    };
    match command.as_str() {
        "fetch" => fetch::run(rest),
        "run" => run::run(rest),
        "test" => test::run(rest),
        "fuzz" => fuzz::run(rest),
        "bench" => bench::run(rest),
        "rules-doc" => rules_doc::run(rest),
        "build-plugins" => build_plugins::run(rest),
        "help" | "-h" | "--help" => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        other => {
            eprint!("error: unknown command `{other}`\n\n{}", usage());
            ExitCode::from(2)
        }
    }
}

fn usage() -> String {
    let mut text = String::from("usage: cargo xtask <command> [args]\n\ncommands:\n");
    for line in COMMANDS {
        text.push_str(&format!("  {line}\n"));
    }
    text.push_str("  help                 print this message\n");
    text
}
