//! Line charts as standalone SVG files for the run report.
//!
//! Written by hand rather than with plotters: plotters needs a font backend
//! (ttf or ab_glyph plus a font file) to lay out axis labels, and a line
//! chart with ticks is a hundred lines of text output with no dependency.

use std::fmt::Write;

pub struct Line<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
    pub mark: Mark,
}

/// How a series is drawn: joined points, or one dot per point (a scatter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Line,
    Dots,
}

impl<'a> Line<'a> {
    pub fn new(label: &'a str, points: &'a [(f64, f64)]) -> Self {
        Self {
            label,
            points,
            mark: Mark::Line,
        }
    }

    pub fn dots(label: &'a str, points: &'a [(f64, f64)]) -> Self {
        Self {
            label,
            points,
            mark: Mark::Dots,
        }
    }
}

const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

const W: f64 = 640.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Compact tick labels: 1.5e-4, 0.25, 1200.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        // Three significant digits: 0.0015, not 0.002.
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A chart of one or more lines; non-finite points are left out.
pub fn chart(title: &str, x_label: &str, lines: &[Line]) -> String {
    let finite = lines
        .iter()
        .flat_map(|l| l.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in finite {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 * y1.abs().max(1e-12) {
        y0 -= 0.5 * y0.abs().max(1e-6);
        y1 += 0.5 * y1.abs().max(1e-6);
    }
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{}" y="18" font-size="14" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let (y, x) = (y0 + f * (y1 - y0), x0 + f * (x1 - x0));
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            W - RIGHT,
            LEFT - 5.0,
            sy(y) + 4.0,
            tick(y),
            H - BOTTOM + 15.0,
            tick(x),
            py = sy(y),
            px = sx(x),
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#888"/><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM,
        (W + LEFT - RIGHT) / 2.0,
        H - 5.0,
        escape(x_label)
    );
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = line
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if pts.len() == 1 || line.mark == Mark::Dots {
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
            }
        } else if !pts.is_empty() {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                pts.join(" ")
            );
        }
        if lines.len() > 1 && i < 12 {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
                LEFT + 6.0,
                TOP + 14.0 + 12.0 * i as f64,
                escape(line.label)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_svg_with_one_polyline_per_line() {
        let a = [(1.0, 2.0), (2.0, 1.0), (3.0, f64::NAN)];
        let b = [(1.0, 0.5)];
        let svg = chart("loss <train>", "step", &[Line::new("a", &a), Line::new("b", &b)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("loss &lt;train&gt;"));
        assert!(!svg.contains("NaN"));
        let scatter = chart("s", "x", &[Line::dots("a", &a)]);
        assert_eq!(scatter.matches("<circle").count(), 2, "one dot per finite point");
        assert_eq!(scatter.matches("<polyline").count(), 0);
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(2e-5), "2.0e-5");
        assert_eq!(tick(1200.0), "1200");
        assert_eq!(tick(0.0015), "0.0015");
        assert_eq!(tick(1.054), "1.05");
    }
}
