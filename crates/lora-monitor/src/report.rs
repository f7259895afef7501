//! The end-of-run report: SVG plots of the main curves and `report.html`,
//! which shows them beside the final figures and every intervention.

use std::fmt::Write;
use std::path::Path;

use lora_core::Result;
use lora_core::fsutil::write_atomic;

use crate::record::{Recorder, base_name};
use crate::svg::{Line, chart};

/// One plot: file name, title, x axis, series keys (or metric names: every label of it).
struct Plot {
    file: &'static str,
    title: &'static str,
    by_time: bool,
    names: &'static [&'static str],
}

const PLOTS: &[Plot] = &[
    Plot {
        file: "loss.svg",
        title: "Training loss (raw and smoothed) and evaluation loss",
        by_time: false,
        names: &["train_loss", "train_loss_smoothed", "eval_loss"],
    },
    Plot {
        file: "learning-rate.svg",
        title: "Learning rate",
        by_time: false,
        names: &["learning_rate"],
    },
    Plot {
        file: "grad-norm.svg",
        title: "Global gradient norm (before clipping)",
        by_time: false,
        names: &["grad_norm"],
    },
    Plot {
        file: "update-ratio.svg",
        title: "Update-to-weight ratio",
        by_time: false,
        names: &["update_ratio"],
    },
    Plot {
        file: "effective-rank.svg",
        title: "Effective rank of B*A per module",
        by_time: false,
        names: &["effective_rank"],
    },
    Plot {
        file: "lora-b-norm.svg",
        title: "Norm of LoRA B per module",
        by_time: false,
        names: &["lora_b_weight_norm"],
    },
    Plot {
        file: "throughput.svg",
        title: "Samples per second",
        by_time: false,
        names: &["samples_per_second"],
    },
    Plot {
        file: "step-time.svg",
        title: "Step time: data, forward-backward, optimizer (s)",
        by_time: false,
        names: &[
            "step_data_seconds",
            "step_forward_backward_seconds",
            "step_optimizer_seconds",
        ],
    },
    Plot {
        file: "memory.svg",
        title: "Process RSS (MiB)",
        by_time: true,
        names: &["process_rss_bytes"],
    },
];

fn lines_for<'a>(rec: &Recorder, keys: &'a [String], by_time: bool) -> Vec<(&'a str, Vec<(f64, f64)>)> {
    keys.iter()
        .map(|k| {
            let scale = if k.ends_with("_bytes") {
                1.0 / (1024.0 * 1024.0)
            } else {
                1.0
            };
            let pts = rec
                .series(k)
                .into_iter()
                .map(|(step, t, v)| (if by_time { t } else { step as f64 }, v * scale))
                .collect();
            let label = k
                .split_once("module=\"")
                .map_or(k.as_str(), |(_, m)| m.trim_end_matches("\"}"));
            (label, pts)
        })
        .filter(|(_, p): &(&str, Vec<(f64, f64)>)| !p.is_empty())
        .collect()
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Writes `dir/*.svg` and `dir/report.html`; returns the HTML's path.
pub fn write(dir: &Path, rec: &Recorder, title: &str, final_figures: &[(String, f64)]) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| lora_core::Error::io("cannot create report folder", dir, e))?;
    let all = rec.keys();
    let mut plots: Vec<(String, String)> = Vec::new();
    let mut emit = |file: String, title: String, keys: Vec<String>, by_time: bool| -> Result<()> {
        let lines = lines_for(rec, &keys, by_time);
        if lines.is_empty() {
            return Ok(());
        }
        let refs: Vec<Line> = lines.iter().map(|(l, p)| Line::new(l, p)).collect();
        let svg = chart(&title, if by_time { "seconds" } else { "step" }, &refs);
        write_atomic(&dir.join(&file), svg.as_bytes())?;
        plots.push((file, title));
        Ok(())
    };
    for p in PLOTS {
        let keys: Vec<String> = all
            .iter()
            .filter(|k| p.names.contains(&base_name(k)))
            .cloned()
            .collect();
        // Keep the order of `names`, not the alphabetical order of keys.
        let mut ordered = Vec::new();
        for n in p.names {
            ordered.extend(keys.iter().filter(|k| base_name(k) == *n).cloned());
        }
        emit(p.file.to_string(), p.title.to_string(), ordered, p.by_time)?;
    }
    for k in all.iter().filter(|k| k.starts_with("eval_") && *k != "eval_loss") {
        emit(
            format!("{}.svg", k.replace('_', "-")),
            format!("Evaluation: {}", &k[5..]),
            vec![k.clone()],
            false,
        )?;
    }

    let mut html = page_start(title, "run report");
    let _ = write!(
        html,
        "<p>{} optimizer steps of {} in {:.1} s.</p><h2>Final figures</h2><table id=\"final\"><tr><th>figure</th><th>value</th></tr>",
        rec.step, rec.total_steps, rec.elapsed_s
    );
    for (k, v) in final_figures {
        let _ = write!(html, "<tr><td>{}</td><td>{v:.6}</td></tr>", escape(k));
    }
    html.push_str("</table><h2>Interventions</h2>");
    if rec.interventions.is_empty() {
        html.push_str("<p>None: no callback or check acted.</p>");
    } else {
        html.push_str(
            "<table id=\"interventions\"><tr><th>step</th><th>source</th><th>action</th><th>message</th></tr>",
        );
        for i in &rec.interventions {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                i.step,
                escape(&i.source),
                escape(&i.action),
                escape(&i.message)
            );
        }
        html.push_str("</table>");
    }
    page_end(html, "Curves", &plots, dir)
}

/// The head of a report page: its style and its title.
pub(crate) fn page_start(title: &str, kind: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}: {kind}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:12px}}.plots figure{{margin:0}}.bar{{background:#1f77b4;height:10px}}</style></head><body><h1>{t}: {kind}</h1>",
        t = escape(title)
    )
}

/// The plots (file, title) under `heading`, the page's end, and the page
/// written atomically as `dir/report.html`, whose path is returned.
pub(crate) fn page_end(
    mut html: String,
    heading: &str,
    plots: &[(String, String)],
    dir: &Path,
) -> Result<std::path::PathBuf> {
    let _ = write!(html, "<h2>{heading}</h2><div class=\"plots\">");
    for (file, title) in plots {
        let _ = write!(html, "<figure><img src=\"{file}\" alt=\"{}\"></figure>", escape(title));
    }
    html.push_str("</div></body></html>\n");
    let path = dir.join("report.html");
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}
