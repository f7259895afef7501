//! The Prometheus text exposition format (version 0.0.4) of the latest values.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::record::{base_name, help};

/// Every series as a gauge, `lora_` prefixed, grouped by metric name with its HELP and TYPE.
pub fn render(latest: &BTreeMap<String, f64>) -> String {
    let mut out = String::new();
    let mut current = "";
    for (key, value) in latest {
        let name = base_name(key);
        if name != current {
            let h = help(name);
            let _ = writeln!(out, "# HELP lora_{name} {}", if h.is_empty() { name } else { h });
            let _ = writeln!(out, "# TYPE lora_{name} gauge");
            current = name;
        }
        let _ = writeln!(out, "lora_{key} {}", number(*value));
    }
    out
}

/// Prometheus spells the special values `NaN`, `+Inf` and `-Inf`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}
