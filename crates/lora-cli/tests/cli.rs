//! The `lora` binary as a user runs it: exit codes and messages when a plugin
//! panics, `--version`, `rules` with a plugin's rules, and a closed stdout or
//! stderr (`lora rules | head`), which must end the process quietly, never with
//! a panic (exit 101). Uses the plugins `cargo xtask build-plugins` builds and
//! the cached assets.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn lora() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lora"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn test_plugin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("plugins/test-panicky").join(format!(
        "{}test_panicky{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask build-plugins`",
        path.display()
    );
    path
}

/// A tiny digits pipeline with the test plugin; `augment` and `callback` go into
/// the `panicky` augmentation's and the `event-log` callback's tables.
fn pipeline(dir: &Path, augment: &str, callback: &str) -> PathBuf {
    let text = format!(
        r#"[run]
name = "cli-test"
seed = 5
output-dir = "{out}"

[plugins]
paths = [{plugin:?}]

[data]
type = "mnist-json"
path = "asset:mnist-digits"
validation-fraction = 0.1
max-train-samples = 64
max-validation-samples = 32

[[data.augment]]
type = "panicky"
{augment}

{tiny_vit}
[train]
max-steps = 2
batch-size = 32

[train.optimizer]
type = "adamw"
lr = 1e-3

[eval]
batch-size = 32

[callbacks.log]
type = "event-log"
{callback}
"#,
        tiny_vit = common::TINY_VIT,
        out = dir.join("run").display(),
        plugin = test_plugin().display().to_string(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Never a crash: no abort (134), no panic (101), no foreign exception.
fn assert_no_crash(out: &Output) {
    let stderr = text(&out.stderr);
    assert!(
        !matches!(out.status.code(), Some(101) | Some(134)) && !stderr.contains("foreign exception"),
        "{:?}\n{stderr}",
        out.status
    );
}

#[test]
fn version_shows_the_plugin_interface_and_the_compiler() {
    let out = lora().arg("--version").output().unwrap();
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "plugin interface: lora-plugin-api {}",
            lora_plugin_host::API_VERSION
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("compiler: {}", lora_plugin_host::RUSTC_VERSION)),
        "{stdout}"
    );
}

#[test]
fn rules_shows_a_plugins_rule_once_the_plugin_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let id = "test-panicky::find";
    let missing = lora().args(["rules", id]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("--pipeline FILE"),
        "{}",
        text(&missing.stderr)
    );

    let file = pipeline(dir.path(), "", "");
    let by_pipeline = lora().args(["rules", id, "--pipeline"]).arg(&file).output().unwrap();
    let by_library = lora()
        .args(["rules", id, "--plugin"])
        .arg(test_plugin())
        .output()
        .unwrap();
    for out in [by_pipeline, by_library] {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.starts_with(&format!("{id} (Warning, plugin)")) && stdout.contains("Reports each path it is given"),
            "{stdout}"
        );
    }
    let listing = lora().args(["rules", "--plugin"]).arg(test_plugin()).output().unwrap();
    assert!(text(&listing.stdout).contains("test-panicky::panics"));
}

#[test]
fn a_panicking_rule_ends_validate_with_exit_2_naming_the_plugin_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let out = lora()
        .arg("validate")
        .arg(pipeline(dir.path(), "panic-in-rule = true", ""))
        .output()
        .unwrap();
    assert_no_crash(&out);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rule `test-panicky::panics` panicked: plugin `test-panicky`")
            && stderr.contains("panics on purpose"),
        "{stderr}"
    );
}

#[test]
fn a_panicking_augmentation_or_callback_ends_run_with_exit_1_and_a_finished_log() {
    for (augment, callback, expected) in [
        ("panic = true", "", "augmentation `panicky` of plugin `test-panicky`"),
        ("", "panic-at-step = 1", "callback `event-log` of plugin `test-panicky`"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = lora()
            .args(["run", "--quiet"])
            .arg(pipeline(dir.path(), augment, callback))
            .output()
            .unwrap();
        assert_no_crash(&out);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected) && stderr.contains("on purpose"), "{stderr}");
        let run = dir.path().join("run");
        let log = std::fs::read_to_string(run.join("metrics.jsonl")).expect("the log is finished");
        assert!(log.contains("on purpose") && !run.join("metrics.jsonl.partial").exists());
        assert!(run.join("report/report.html").is_file());
    }
}

/// Runs `lora ARGS` with stdout (and, with `both`, stderr) a pipe whose reading end is
/// closed at once, and returns the exit status and whatever reached stderr.
fn with_closed_pipe(args: &[&std::ffi::OsStr], both: bool) -> (std::process::ExitStatus, String) {
    let mut child = lora()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    if both {
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        return (status, String::new());
    }
    let out = child.wait_with_output().unwrap();
    (out.status, text(&out.stderr))
}

fn assert_quiet_end(status: std::process::ExitStatus, stderr: &str, what: &str) {
    assert_ne!(status.code(), Some(101), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        // Ended by SIGPIPE like `cat`, or finished before writing.
        assert!(
            status.signal() == Some(13) || status.success(),
            "{what}: {status:?} {stderr}"
        );
    }
}

#[test]
fn a_closed_stdout_or_stderr_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), "", "");
    let f = file.as_os_str();
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    for (args, what) in [
        (vec![os("validate"), f], "validate"),
        (vec![os("rules")], "rules"),
        (vec![os("plugins"), f], "plugins"),
        (vec![os("config"), os("show"), f], "config show"),
    ] {
        let (status, stderr) = with_closed_pipe(&args, false);
        assert_quiet_end(status, &stderr, what);
        let (status, stderr) = with_closed_pipe(&args, true);
        assert_quiet_end(status, &stderr, what);
    }
    // stderr closed while writing diagnostics: an invalid pipeline.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[train]\nbatch-size = 0\n").unwrap();
    let (status, _) = with_closed_pipe(&[os("validate"), broken.as_os_str()], true);
    assert_ne!(status.code(), Some(101));

    // predict needs a trained run; `--output-dir` also moves the plugin callback's file.
    let elsewhere = dir.path().join("elsewhere");
    let run = lora()
        .args(["run", "--quiet", "--output-dir"])
        .arg(&elsewhere)
        .arg(&file)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        elsewhere.join("plugin-events.jsonl").is_file(),
        "the callback wrote into --output-dir"
    );
    assert!(!dir.path().join("run").exists());
    // That run trained a whole (tiny) model; LoRA on it gives an adapter to predict with.
    let full = std::fs::read_to_string(&file).unwrap();
    let model_start = full.find("[model]").unwrap();
    let model_end = full.find("[lora]").unwrap();
    let adapted_dir = dir.path().join("adapted");
    let adapted = format!(
        "{}[model]\ntype = \"vit-classifier\"\nmode = \"lora\"\npath = {:?}\n\n{}",
        &full[..model_start],
        elsewhere.display().to_string(),
        &full[model_end..]
    )
    .replace("target-modules = []", "target-modules = [\"query\"]");
    let adapted_file = dir.path().join("adapted.toml");
    std::fs::write(&adapted_file, adapted).unwrap();
    let run = lora()
        .args(["run", "--quiet", "--output-dir"])
        .arg(&adapted_dir)
        .arg(&adapted_file)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    let digit = dir.path().join("digit.png");
    image_png(&digit);
    let (status, stderr) = with_closed_pipe(
        &[
            os("predict"),
            os("--adapter"),
            adapted_dir.as_os_str(),
            digit.as_os_str(),
        ],
        false,
    );
    assert_quiet_end(status, &stderr, "predict");
    let ok = lora()
        .args(["predict", "--adapter"])
        .arg(&adapted_dir)
        .arg(&digit)
        .output()
        .unwrap();
    assert!(ok.status.success(), "predict itself works: {}", text(&ok.stderr));
}

/// A 28x28 grey PNG: a white bar on black.
fn image_png(path: &Path) {
    common::grey_png(path, |x, y| {
        if (10..18).contains(&x) && (4..24).contains(&y) {
            255
        } else {
            0
        }
    });
}
