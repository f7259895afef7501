//! `lora search` as a user runs it, on a tiny image pipeline (a 1-layer ViT
//! trained from scratch on 64 digits): trials are validated first, each runs
//! as its own `lora run`, the best becomes a pipeline that `lora validate`
//! accepts, and a study killed midway resumes without repeating finished trials.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn lora() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lora"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn pipeline(dir: &Path, trials: usize, space: &str) -> PathBuf {
    let text = format!(
        r#"[run]
name = "search-test"
seed = 5
output-dir = "{out}"

[data]
type = "mnist-json"
path = "asset:mnist-digits"
validation-fraction = 0.1
max-train-samples = 64
max-validation-samples = 32

{tiny_vit}
[train]
max-steps = 4
batch-size = 16

[train.optimizer]
type = "adamw"
lr = 1e-3

[eval]
batch-size = 32
every-steps = 1

[search]
trials = {trials}
objective = "accuracy"
pruner = "median"
pruner-startup-trials = 1
warmup-evals = 0
startup-trials = 2
seed = 3

[search.space]
{space}
"#,
        tiny_vit = common::TINY_VIT,
        out = dir.join("run").display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("run/search/journal.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn ends(records: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    records.iter().filter(|r| r["kind"] == "end").collect()
}

#[test]
fn a_study_validates_each_trial_and_writes_a_runnable_best_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    // A batch size of 0 breaks a rule: such a trial must cost no training.
    let file = pipeline(
        dir.path(),
        5,
        "\"train.optimizer.lr\" = { low = 1e-4, high = 1e-2, log = true }\n\"train.batch-size\" = { choice = [16, 0] }",
    );
    let out = lora().arg("search").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(dir.path());
    let starts: Vec<_> = recs.iter().filter(|r| r["kind"] == "start").collect();
    assert_eq!(starts.len(), 5);
    let mut invalid = 0;
    for s in &starts {
        let id = &s["trial"];
        let end = ends(&recs)
            .into_iter()
            .find(|e| &e["trial"] == id)
            .expect("every trial ended");
        if s["values"]["train.batch-size"] == 0 {
            invalid += 1;
            assert_eq!(
                (end["state"].as_str(), end["steps"].as_u64()),
                (Some("invalid"), Some(0)),
                "{end}"
            );
            assert!(
                !dir.path()
                    .join(format!("run/search/trial-{:03}", id.as_u64().unwrap()))
                    .exists()
            );
        } else {
            assert!(matches!(end["state"].as_str(), Some("complete" | "pruned")), "{end}");
            // A pruned trial stops early; a complete one trains its 4 steps.
            let steps = end["steps"].as_u64().unwrap();
            assert!((1..=4).contains(&steps), "{end}");
            assert!(end["state"] == "pruned" || steps == 4, "{end}");
        }
    }
    // Seed 3 draws both kinds (deterministic: the sampler is seeded by study seed and trial number).
    assert!((1..5).contains(&invalid), "{stdout}");
    assert!(
        stdout.contains("trial(s):") && stdout.contains(&format!("{invalid} invalid")),
        "{stdout}"
    );
    let best = dir.path().join("run/search/best.toml");
    let out = lora().arg("validate").arg(&best).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A second search over the same folder is refused (exit 2), naming --resume.
    let out = lora().arg("search").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
}

#[test]
fn a_study_killed_midway_resumes_without_repeating_finished_trials() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(
        dir.path(),
        3,
        "\"train.optimizer.lr\" = { low = 1e-4, high = 1e-2, log = true }",
    );
    let mut driver = lora().arg("search").arg(&file).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ends(&records(dir.path())).is_empty() {
        assert!(Instant::now() < deadline, "no trial finished in 5 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    driver.kill().unwrap();
    driver.wait().unwrap();
    let finished: Vec<u64> = ends(&records(dir.path()))
        .iter()
        .map(|e| e["trial"].as_u64().unwrap())
        .collect();
    let out = lora().arg("search").arg(&file).arg("--resume").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = records(dir.path());
    for id in &finished {
        let starts = recs
            .iter()
            .filter(|r| r["kind"] == "start" && r["trial"] == *id)
            .count();
        assert_eq!(starts, 1, "trial {id} finished before the kill and was started again");
    }
    let mut ended: Vec<u64> = ends(&recs).iter().map(|e| e["trial"].as_u64().unwrap()).collect();
    ended.sort();
    ended.dedup();
    assert_eq!(
        ended,
        vec![0, 1, 2],
        "every trial of the budget ended once the study resumed"
    );
}

/// The study page's event stream, read over plain HTTP until the server closes it.
fn read_events(addr: &str) -> Vec<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

#[test]
fn a_gp_study_is_served_live_and_reported() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(
        dir.path(),
        3,
        "\"train.optimizer.lr\" = { low = 1e-4, high = 1e-2, log = true }\n\"lora.r\" = { choice = [2, 4] }",
    );
    let mut driver = lora()
        .arg("search")
        .arg(&file)
        .args(["--dashboard", "--port", "0", "--set", "search.sampler=\"gp\""])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(driver.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the driver ended without serving the study"
        );
        if let Some(url) = line.trim().strip_prefix("study dashboard: http://") {
            break url.trim_end_matches('/').to_string();
        }
    };
    let events = read_events(&addr);
    let out = driver.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // What the page received is the journal, in order, live: at least the study, a start and an end.
    let recs = records(dir.path());
    assert!(events.len() >= 3 && events.len() <= recs.len(), "{events:?}");
    assert_eq!(&recs[..events.len()], &events[..]);
    assert_eq!(events[0]["kind"], "study");
    assert_eq!(events[0]["spec"]["sampler"], "gp");
    assert!(events.iter().any(|e| e["kind"] == "end"), "{events:?}");
    // The report: the objective by trial, each parameter's slice, the table of all three trials.
    let report = dir.path().join("run/search/report");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    for f in ["objective.svg", "slice-0.svg", "slice-1.svg"] {
        assert!(report.join(f).exists() && html.contains(f), "{f}");
    }
    let rows = html
        .split("<table id=\"trials\">")
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    assert_eq!(rows.matches("<tr><td>").count(), 3, "{rows}");
}
