//! A hyperparameter study's live dashboard ([`StudyFeed`], `study.html`) and
//! its report ([`write_report`]: the objective by trial, each trial's
//! intermediate values, a slice per parameter and the parameters' rank
//! correlation with the objective).
//!
//! The study is described here in plain terms ([`StudyView`]) rather than
//! with the search crate's types, so that the monitor depends on the core
//! alone; the study's driver fills the view in.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use lora_core::Result;
use lora_core::fsutil::write_atomic;

use crate::report::{escape, page_end, page_start};
use crate::server::Feed;
use crate::svg::{Line, chart};

const PAGE: &str = include_str!("study.html");

/// The study's journal records as the live page reads them: each line a JSON
/// object with a `kind` (`study`, `start`, `launched`, `report`, `end`).
#[derive(Default)]
pub struct StudyFeed {
    state: Mutex<(Vec<String>, bool)>,
    wake: Condvar,
}

impl StudyFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends records and wakes every viewer.
    pub fn push(&self, lines: impl IntoIterator<Item = String>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0.extend(lines);
        drop(state);
        self.wake.notify_all();
    }

    /// The study is over: viewers get the end of the stream.
    pub fn finish(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.wake.notify_all();
    }
}

impl Feed for StudyFeed {
    fn page(&self) -> &'static str {
        PAGE
    }

    fn wait_from(&self, from: usize, timeout: Duration) -> (Vec<String>, bool) {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |s| s.0.len() <= from && !s.1)
            .unwrap_or_else(|e| e.into_inner());
        (guard.0.get(from..).map(<[String]>::to_vec).unwrap_or_default(), guard.1)
    }

    fn resource(&self, path: &str) -> Option<(&'static str, String)> {
        (path == "/api/study").then(|| {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            ("application/json", format!("[{}]", state.0.join(",")))
        })
    }
}

/// A study, as its report shows it.
pub struct StudyView {
    pub title: String,
    pub objective: String,
    pub maximize: bool,
    pub params: Vec<ParamAxis>,
    pub trials: Vec<TrialView>,
}

pub struct ParamAxis {
    /// The pipeline path the parameter sets (`train.optimizer.lr`).
    pub name: String,
    /// Drawn on a log scale.
    pub log: bool,
}

pub struct TrialView {
    pub id: usize,
    /// `complete`, `pruned`, `invalid`, `failed` or `running`.
    pub state: String,
    pub value: Option<f64>,
    pub steps: usize,
    pub seconds: f64,
    /// Each parameter's value as a number: a choice's value, or its position
    /// in the list when the values are not numbers.
    pub params: Vec<Option<f64>>,
    /// The parameters as the table shows them.
    pub param_text: String,
    /// The objective at each evaluation: (step, value).
    pub reports: Vec<(usize, f64)>,
}

impl StudyView {
    fn complete(&self) -> impl Iterator<Item = &TrialView> {
        self.trials
            .iter()
            .filter(|t| t.state == "complete" && t.value.is_some_and(f64::is_finite))
    }

    /// The best value after each complete trial, in trial order.
    fn best_so_far(&self) -> Vec<(f64, f64)> {
        let mut best: Option<f64> = None;
        self.complete()
            .map(|t| {
                let v = t.value.unwrap_or(f64::NAN);
                let b = match best {
                    Some(b) if (self.maximize && b >= v) || (!self.maximize && b <= v) => b,
                    _ => v,
                };
                best = Some(b);
                (t.id as f64, b)
            })
            .collect()
    }
}

/// Spearman's rank correlation of two equally long samples (average ranks
/// for ties); `None` with fewer than three pairs or a constant sample.
pub fn rank_correlation(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 3 {
        return None;
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    (vx > 0.0 && vy > 0.0).then(|| cov / (vx * vy).sqrt())
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = average;
        }
        i = j + 1;
    }
    out
}

/// Writes `dir/*.svg` and `dir/report.html`; returns the HTML's path.
pub fn write_report(dir: &Path, study: &StudyView) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| lora_core::Error::io("cannot create report folder", dir, e))?;
    let mut plots: Vec<(String, String)> = Vec::new();
    let mut emit = |file: String, title: String, svg: String| -> Result<()> {
        write_atomic(&dir.join(&file), svg.as_bytes())?;
        plots.push((file, title));
        Ok(())
    };

    let complete: Vec<(f64, f64)> = study
        .complete()
        .map(|t| (t.id as f64, t.value.unwrap_or(f64::NAN)))
        .collect();
    let pruned: Vec<(f64, f64)> = study
        .trials
        .iter()
        .filter(|t| t.state == "pruned")
        .filter_map(|t| t.reports.last().map(|&(_, v)| (t.id as f64, v)))
        .collect();
    let best = study.best_so_far();
    let title = format!("{} by trial", study.objective);
    emit(
        "objective.svg".into(),
        title.clone(),
        chart(
            &title,
            "trial",
            &[
                Line::dots("complete", &complete),
                Line::dots("pruned (last evaluation)", &pruned),
                Line::new("best so far", &best),
            ],
        ),
    )?;

    let curves: Vec<(String, Vec<(f64, f64)>)> = study
        .trials
        .iter()
        .filter(|t| !t.reports.is_empty())
        .map(|t| {
            let pts = t.reports.iter().map(|&(s, v)| (s as f64, v)).collect();
            (format!("trial {} ({})", t.id, t.state), pts)
        })
        .collect();
    if !curves.is_empty() {
        let lines: Vec<Line> = curves.iter().map(|(l, p)| Line::new(l, p)).collect();
        let title = format!("{} at each evaluation", study.objective);
        emit("intermediate.svg".into(), title.clone(), chart(&title, "step", &lines))?;
    }

    let mut importance: Vec<(String, Option<f64>)> = Vec::new();
    for (i, axis) in study.params.iter().enumerate() {
        let pairs: Vec<(f64, f64)> = study
            .complete()
            .filter_map(|t| Some((t.params.get(i).copied().flatten()?, t.value?)))
            .filter(|(x, _)| x.is_finite() && (!axis.log || *x > 0.0))
            .collect();
        let xs: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let ys: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        importance.push((axis.name.clone(), rank_correlation(&xs, &ys)));
        let shown: Vec<(f64, f64)> = pairs
            .iter()
            .map(|&(x, y)| (if axis.log { x.log10() } else { x }, y))
            .collect();
        let x_label = if axis.log {
            format!("log10 {}", axis.name)
        } else {
            axis.name.clone()
        };
        let title = format!("{} against {}", study.objective, axis.name);
        emit(
            format!("slice-{i}.svg"),
            title.clone(),
            chart(&title, &x_label, &[Line::dots("complete", &shown)]),
        )?;
    }

    let mut html = page_start(&study.title, "study report");
    let steps: usize = study.trials.iter().map(|t| t.steps).sum();
    let seconds: f64 = study.trials.iter().map(|t| t.seconds).sum();
    let _ = write!(
        html,
        "<p>{} trials, {steps} training steps, {seconds:.1} s of trial time; objective: {} ({}).</p>",
        study.trials.len(),
        escape(&study.objective),
        if study.maximize { "maximized" } else { "minimized" }
    );
    html.push_str("<h2>Trials</h2><table id=\"trials\"><tr><th>trial</th><th>state</th><th>objective</th><th>steps</th><th>time (s)</th><th>parameters</th></tr>");
    for t in &study.trials {
        let value = t.value.map_or("-".to_string(), |v| format!("{v:.6}"));
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{value}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
            t.id,
            escape(&t.state),
            t.steps,
            t.seconds,
            escape(&t.param_text)
        );
    }
    html.push_str("</table><h2>Parameters</h2><p>Spearman's rank correlation of each parameter with the objective over the complete trials: a simple measure of importance (its sign says in which direction the objective moves).</p><table id=\"importance\"><tr><th>parameter</th><th>rank correlation</th><th></th></tr>");
    for (name, rho) in &importance {
        let (text, width) = rho.map_or(("-".to_string(), 0.0), |r| (format!("{r:+.3}"), r.abs() * 200.0));
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{text}</td><td><div class=\"bar\" style=\"width:{width:.0}px\"></div></td></tr>",
            escape(name)
        );
    }
    html.push_str("</table>");
    page_end(html, "Plots", &plots, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_correlation_matches_hand_values() {
        // Monotone: 1 and -1 whatever the spacing.
        assert_eq!(rank_correlation(&[1.0, 2.0, 10.0], &[0.1, 0.2, 0.3]), Some(1.0));
        assert_eq!(rank_correlation(&[1.0, 2.0, 10.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // Ranks x (1 2 3 4), y (2 1 4 3): d^2 sum 4, rho = 1 - 6 * 4 / (4 * 15) = 0.6.
        let r = rank_correlation(&[1.0, 2.0, 3.0, 4.0], &[20.0, 10.0, 40.0, 30.0]).unwrap();
        assert!((r - 0.6).abs() < 1e-12);
        // Ties take average ranks; a constant sample has no correlation.
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), vec![2.5, 1.0, 2.5]);
        assert_eq!(rank_correlation(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
    }

    fn trial(id: usize, state: &str, value: Option<f64>, lr: f64, reports: &[(usize, f64)]) -> TrialView {
        TrialView {
            id,
            state: state.into(),
            value,
            steps: reports.last().map_or(0, |r| r.0),
            seconds: 1.0,
            params: vec![Some(lr)],
            param_text: format!("lr={lr}"),
            reports: reports.to_vec(),
        }
    }

    #[test]
    fn the_report_has_the_objective_curves_slices_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let study = StudyView {
            title: "s".into(),
            objective: "accuracy".into(),
            maximize: true,
            params: vec![ParamAxis {
                name: "train.optimizer.lr".into(),
                log: true,
            }],
            trials: vec![
                trial(0, "complete", Some(0.6), 1e-3, &[(20, 0.5), (40, 0.6)]),
                trial(1, "pruned", None, 1e-4, &[(20, 0.3)]),
                trial(2, "complete", Some(0.7), 3e-3, &[(20, 0.55), (40, 0.7)]),
                trial(3, "complete", Some(0.65), 2e-3, &[(20, 0.5), (40, 0.65)]),
                trial(4, "invalid", None, 1.0, &[]),
            ],
        };
        assert_eq!(study.best_so_far(), vec![(0.0, 0.6), (2.0, 0.7), (3.0, 0.7)]);
        let html = std::fs::read_to_string(write_report(dir.path(), &study).unwrap()).unwrap();
        for f in ["objective.svg", "intermediate.svg", "slice-0.svg"] {
            assert!(html.contains(f), "{f} linked");
            assert!(dir.path().join(f).exists(), "{f} written");
        }
        assert_eq!(html.matches("<tr><td>").count(), 5 + 1, "five trials and one parameter");
        // lr 1e-3, 3e-3, 2e-3 against 0.6, 0.7, 0.65: the same order, correlation +1.
        assert!(html.contains("<td>+1.000</td>"), "{html}");
        let objective = std::fs::read_to_string(dir.path().join("objective.svg")).unwrap();
        assert_eq!(
            objective.matches("<circle").count(),
            4,
            "three complete dots and one pruned"
        );
        assert_eq!(objective.matches("<polyline").count(), 1, "the best so far");
    }
}
