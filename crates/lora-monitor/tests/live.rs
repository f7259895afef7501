//! The monitor end to end, without a model: events in, then the dashboard's
//! page, its event stream, `/metrics` (parsed strictly) and the report out.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use lora_core::config::MonitorConfig;
use lora_core::events::{Callback, ModuleStats, StepMetrics, TrainEvent};
use lora_core::stage::EvalReport;
use lora_monitor::Monitor;

fn step(step: usize) -> TrainEvent {
    TrainEvent::Step(StepMetrics {
        step,
        total_steps: 4,
        epoch: 0,
        loss: 1.0 / step as f64,
        lr: 1e-3,
        grad_norm: 0.5,
        samples: 8,
        tokens: 100,
        elapsed_s: step as f64,
        samples_per_s: 8.0,
        tokens_per_s: 100.0,
        data_s: 0.01,
        forward_backward_s: 0.9,
        optimizer_s: 0.001,
        update_ratio: 1e-3,
        modules: (0..2)
            .map(|i| ModuleStats {
                module: format!("bert.encoder.layer.{i}.attention.self.query"),
                a_weight_norm: 1.0,
                b_weight_norm: 0.1 * step as f64,
                a_grad_norm: 0.2,
                b_grad_norm: 0.3,
                update_ratio: 0.01,
                effective_rank: 1.5,
            })
            .collect(),
        ranks: (0..2)
            .map(|rank| lora_core::events::RankFigures {
                rank,
                step_s: 0.5 + rank as f64,
                bytes_sent: 1000.0 * step as f64,
                comm_s: 0.1,
            })
            .collect(),
    })
}

fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// A strict reader of the Prometheus text format: every sample line is
/// `name{label="value",...} number`, every name has HELP and TYPE first.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(valid_name(name) && kind == "gauge", "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "stray line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "{line}");
        assert!(typed.contains(name), "no TYPE before {line}");
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).unwrap();
            for pair in inner.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
                assert!(valid_name(k), "{line}");
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        assert!(out.insert(series.to_string(), value).is_none(), "duplicate {series}");
    }
    out
}

#[test]
fn dashboard_stream_metrics_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = MonitorConfig {
        dashboard: true,
        port: 0,
        system_interval_ms: 100,
        ..Default::default()
    };
    let mut monitor = Monitor::start(&cfg, true, "test-run", Some(dir.path().join("report"))).unwrap();
    let url = monitor.url().unwrap();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();

    monitor
        .on_event(&TrainEvent::Start {
            total_steps: 4,
            epochs: 1,
            train_samples: 32,
            trainable_parameters: 10,
        })
        .unwrap();
    monitor.on_event(&step(1)).unwrap();

    // The stream replays what happened and then pushes what comes.
    let mut sse = TcpStream::connect(addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(sse, "GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reader = BufReader::new(sse);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut data_lines = Vec::new();
    let next_data = |reader: &mut BufReader<TcpStream>| loop {
        let mut l = String::new();
        assert!(reader.read_line(&mut l).unwrap() > 0, "stream closed");
        if let Some(d) = l.strip_prefix("data: ") {
            return serde_json::from_str::<serde_json::Value>(d).unwrap();
        }
    };
    // Replayed: start, step 1 (system samples may come between).
    while data_lines.len() < 2 {
        let v = next_data(&mut reader);
        if v["values"].get("train_loss").is_some() || v["values"].get("total_steps").is_some() {
            data_lines.push(v);
        }
    }
    monitor.on_event(&step(2)).unwrap();
    loop {
        let v = next_data(&mut reader);
        if v["step"] == 2 && v["values"].get("train_loss").is_some() {
            assert_eq!(v["values"]["train_loss"], 0.5);
            break;
        }
    }
    monitor
        .on_event(&TrainEvent::Intervention {
            step: 2,
            source: "early-stopping".into(),
            action: "stop".into(),
            message: "no better".into(),
            elapsed_s: 2.0,
        })
        .unwrap();
    loop {
        let v = next_data(&mut reader);
        if let Some(i) = v.get("intervention") {
            assert_eq!(i["source"], "early-stopping");
            break;
        }
    }

    let (head, page) = get(addr, "/");
    assert!(head.contains("text/html"), "{head}");
    assert!(page.contains("new EventSource(\"events\")"));

    // Wait for one system sample, then read /metrics.
    std::thread::sleep(Duration::from_millis(300));
    let (head, text) = get(addr, "/metrics");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let m = parse_prometheus(&text);
    assert_eq!(m["lora_train_loss"], 0.5);
    assert_eq!(m["lora_step"], 2.0);
    assert_eq!(
        m["lora_lora_b_weight_norm{module=\"bert.encoder.layer.1.attention.self.query\"}"],
        0.2
    );
    assert!(m["lora_process_rss_bytes"] > 0.0, "{text}");
    // Each process's step time and bytes, one line per rank.
    assert_eq!(m["lora_rank_step_seconds{rank=\"1\"}"], 1.5);
    assert_eq!(m["lora_rank_bytes_sent{rank=\"0\"}"], 2000.0);
    assert_eq!(m["lora_interventions_total"], 1.0);

    monitor
        .on_event(&TrainEvent::Eval {
            step: 2,
            epoch: 0,
            report: EvalReport {
                samples: 10,
                loss: 0.7,
                metrics: BTreeMap::from([("accuracy".into(), 0.6), ("macro_f1".into(), 0.5)]),
                details: serde_json::Value::Null,
            },
        })
        .unwrap();
    monitor
        .on_event(&TrainEvent::End {
            step: 2,
            epoch: 0,
            elapsed_s: 3.0,
        })
        .unwrap();
    // The stream says that the run has ended.
    let mut rest = String::new();
    while !rest.contains("event: end") {
        assert!(
            reader.read_line(&mut rest).unwrap() > 0,
            "stream closed before its end: {rest}"
        );
    }

    let report = dir.path().join("report");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(
        html.contains("eval_accuracy") && html.contains("early-stopping"),
        "{html}"
    );
    for f in [
        "loss.svg",
        "learning-rate.svg",
        "effective-rank.svg",
        "eval-accuracy.svg",
        "memory.svg",
    ] {
        let svg = std::fs::read_to_string(report.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(svg.starts_with("<svg"), "{f}");
        assert!(html.contains(f), "{f} not in the page");
    }
    drop(monitor);
}
