//! The `[search]` table: the space of parameters, the objective, the sampler,
//! the pruner and the budget.
//!
//! ```toml
//! [search]
//! trials = 12
//! objective = "accuracy"          # or "loss", or any metric of the evaluator
//! sampler = "tpe"                 # tpe (default), gp or random
//! pruner = "median"               # none (default), median or asha
//!
//! [search.space]
//! "lora.r" = { choice = [4, 8, 16, 32] }
//! "lora.alpha" = { choice = [1, 2, 4], times = "lora.r" }
//! "train.optimizer.lr" = { low = 1e-5, high = 1e-2, log = true }
//! "lora.dropout" = { low = 0.0, high = 0.3 }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SearchError;

/// One dimension of the space, named by the pipeline path it sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    pub path: String,
    pub domain: Domain,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Domain {
    /// A number in `[low, high]`, sampled uniformly in `ln` space when `log`.
    Float { low: f64, high: f64, log: bool },
    /// An integer in `[low, high]`, likewise.
    Int { low: i64, high: i64, log: bool },
    /// One of the listed values; with `times`, a number multiplied by the value
    /// chosen for another path (alpha as a multiple of r).
    Choice {
        values: Vec<toml::Value>,
        times: Option<String>,
    },
}

/// Where a trial lies in the space: one coordinate per parameter, in the
/// sampler's own terms (the log for log-scale numbers, the index for choices).
pub type Point = Vec<f64>;

/// What a search optimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Minimize,
    Maximize,
}

impl Direction {
    /// `a` is better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Minimize => a < b,
            Direction::Maximize => a > b,
        }
    }

    /// The value as a loss: samplers and pruners minimize.
    pub fn as_loss(self, v: f64) -> f64 {
        match self {
            Direction::Minimize => v,
            Direction::Maximize => -v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    Tpe,
    /// A Gaussian process with expected improvement.
    Gp,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum PrunerKind {
    None,
    /// Stops a trial whose value at an evaluation is worse than the median of
    /// the finished trials' values at the same evaluation.
    Median {
        startup_trials: usize,
        warmup_evals: usize,
    },
    /// Asynchronous successive halving: at rungs of `min_evals * eta^k`
    /// evaluations, only the best `1 / eta` of the trials seen there go on.
    Asha {
        min_evals: usize,
        eta: usize,
    },
}

/// A whole `[search]` table, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSpec {
    pub params: Vec<Param>,
    /// `loss` or a metric the evaluator reports.
    pub objective: String,
    pub direction: Direction,
    pub sampler: SamplerKind,
    /// Trials drawn at random before the sampler models the results.
    pub startup_trials: usize,
    pub pruner: PrunerKind,
    pub trials: Option<usize>,
    pub wall_time: Option<Duration>,
    /// Trials run at once, each with `cores / parallel` threads.
    pub parallel: usize,
    pub seed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSearch {
    space: BTreeMap<String, RawParam>,
    #[serde(default = "default_objective")]
    objective: String,
    direction: Option<Direction>,
    #[serde(default = "default_sampler")]
    sampler: SamplerKind,
    #[serde(default = "default_startup")]
    startup_trials: usize,
    #[serde(default = "default_pruner")]
    pruner: String,
    #[serde(default)]
    pruner_startup_trials: Option<usize>,
    #[serde(default)]
    warmup_evals: Option<usize>,
    #[serde(default)]
    eta: Option<usize>,
    #[serde(default)]
    min_evals: Option<usize>,
    trials: Option<usize>,
    wall_time: Option<toml::Value>,
    #[serde(default = "one")]
    parallel: usize,
    #[serde(default)]
    seed: u64,
}

fn default_objective() -> String {
    "loss".into()
}
fn default_sampler() -> SamplerKind {
    SamplerKind::Tpe
}
fn default_startup() -> usize {
    4
}
fn default_pruner() -> String {
    "none".into()
}
fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    low: Option<toml::Value>,
    high: Option<toml::Value>,
    #[serde(default)]
    log: bool,
    #[serde(default)]
    int: bool,
    choice: Option<Vec<toml::Value>>,
    times: Option<String>,
}

fn invalid(msg: impl Into<String>) -> SearchError {
    SearchError::Spec(msg.into())
}

fn number(v: &toml::Value, what: &str) -> Result<f64, SearchError> {
    match v {
        toml::Value::Integer(i) => Ok(*i as f64),
        toml::Value::Float(f) => Ok(*f),
        other => Err(invalid(format!("{what} must be a number, found {}", other.type_str()))),
    }
}

/// `"90s"`, `"45m"`, `"2h"` or a number of seconds.
fn duration(v: &toml::Value) -> Result<Duration, SearchError> {
    let bad = || invalid("wall-time must be seconds or a string such as \"90s\", \"45m\" or \"2h\"");
    let secs = match v {
        toml::Value::Integer(i) if *i > 0 => *i as f64,
        toml::Value::Float(f) if *f > 0.0 && f.is_finite() => *f,
        toml::Value::String(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?);
            let n: f64 = num.trim().parse().map_err(|_| bad())?;
            let scale = match unit {
                "s" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            if !(n > 0.0 && n.is_finite()) {
                return Err(bad());
            }
            n * scale
        }
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs_f64(secs))
}

impl SearchSpec {
    /// Reads the `[search]` table of a pipeline document.
    pub fn from_document(doc: &toml::Table) -> Result<Self, SearchError> {
        let table = doc
            .get("search")
            .ok_or_else(|| invalid("the pipeline has no [search] table"))?
            .clone();
        let raw: RawSearch = table
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.message().to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawSearch) -> Result<Self, SearchError> {
        if raw.space.is_empty() {
            return Err(invalid("[search.space] names no parameter"));
        }
        let mut params = Vec::new();
        for (path, p) in &raw.space {
            if path.split('.').count() < 2 {
                return Err(invalid(format!(
                    "`{path}` does not name a key inside a section (for example \"lora.r\")"
                )));
            }
            params.push(Param {
                path: path.clone(),
                domain: domain(path, p)?,
            });
        }
        for p in &params {
            if let Domain::Choice { times: Some(of), .. } = &p.domain {
                let Some(base) = params.iter().find(|q| &q.path == of) else {
                    return Err(invalid(format!(
                        "`{}` is a multiple of `{of}`, which the space does not name",
                        p.path
                    )));
                };
                if matches!(&base.domain, Domain::Choice { times: Some(_), .. }) {
                    return Err(invalid(format!(
                        "`{}` is a multiple of `{of}`, itself a multiple",
                        p.path
                    )));
                }
            }
        }
        if raw.parallel == 0 {
            return Err(invalid("parallel must be at least 1"));
        }
        let wall_time = raw.wall_time.as_ref().map(duration).transpose()?;
        if raw.trials == Some(0) {
            return Err(invalid("trials must be at least 1"));
        }
        if raw.trials.is_none() && wall_time.is_none() {
            return Err(invalid("give a budget: trials, wall-time, or both"));
        }
        let pruner = match raw.pruner.as_str() {
            "none" => PrunerKind::None,
            "median" => PrunerKind::Median {
                startup_trials: raw.pruner_startup_trials.unwrap_or(3),
                warmup_evals: raw.warmup_evals.unwrap_or(1),
            },
            "asha" => {
                let eta = raw.eta.unwrap_or(3);
                if eta < 2 {
                    return Err(invalid("asha's eta must be at least 2"));
                }
                PrunerKind::Asha {
                    min_evals: raw.min_evals.unwrap_or(1).max(1),
                    eta,
                }
            }
            other => return Err(invalid(format!("unknown pruner `{other}`; known: none, median, asha"))),
        };
        let direction = raw.direction.unwrap_or(if raw.objective == "loss" {
            Direction::Minimize
        } else {
            Direction::Maximize
        });
        Ok(Self {
            params,
            objective: raw.objective,
            direction,
            sampler: raw.sampler,
            startup_trials: raw.startup_trials,
            pruner,
            trials: raw.trials,
            wall_time,
            parallel: raw.parallel,
            seed: raw.seed,
        })
    }

    /// The pipeline values of a point, as `path -> TOML value`.
    pub fn values(&self, point: &[f64]) -> BTreeMap<String, toml::Value> {
        let mut out = BTreeMap::new();
        for (p, &x) in self.params.iter().zip(point) {
            let v = match &p.domain {
                Domain::Float { log, .. } => toml::Value::Float(if *log { x.exp() } else { x }),
                Domain::Int { log, .. } => toml::Value::Integer((if *log { x.exp() } else { x }).round() as i64),
                Domain::Choice { values, .. } => values[(x as usize).min(values.len() - 1)].clone(),
            };
            out.insert(p.path.clone(), v);
        }
        // Multiples last: they read the value of their base.
        for p in &self.params {
            if let Domain::Choice { times: Some(of), .. } = &p.domain {
                let base = out.get(of).and_then(|v| number(v, of).ok()).unwrap_or(1.0);
                let factor = out.get(&p.path).and_then(|v| number(v, &p.path).ok()).unwrap_or(1.0);
                let product = base * factor;
                let v = if product.fract() == 0.0 {
                    toml::Value::Integer(product as i64)
                } else {
                    toml::Value::Float(product)
                };
                out.insert(p.path.clone(), v);
            }
        }
        out
    }
}

fn domain(path: &str, p: &RawParam) -> Result<Domain, SearchError> {
    match (&p.choice, &p.low, &p.high) {
        (Some(values), None, None) => {
            if values.is_empty() {
                return Err(invalid(format!("`{path}`: choice is empty")));
            }
            if p.times.is_some() {
                for v in values {
                    number(v, &format!("`{path}`: a multiple's choice"))?;
                }
            }
            Ok(Domain::Choice {
                values: values.clone(),
                times: p.times.clone(),
            })
        }
        (None, Some(low), Some(high)) => {
            if p.times.is_some() {
                return Err(invalid(format!("`{path}`: times goes with choice")));
            }
            let (lo, hi) = (
                number(low, &format!("`{path}`: low"))?,
                number(high, &format!("`{path}`: high"))?,
            );
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(invalid(format!("`{path}`: low ({lo}) must be below high ({hi})")));
            }
            if p.log && lo <= 0.0 {
                return Err(invalid(format!("`{path}`: a log scale needs low > 0, found {lo}")));
            }
            let int = p.int || (matches!(low, toml::Value::Integer(_)) && matches!(high, toml::Value::Integer(_)));
            Ok(if int {
                Domain::Int {
                    low: lo as i64,
                    high: hi as i64,
                    log: p.log,
                }
            } else {
                Domain::Float {
                    low: lo,
                    high: hi,
                    log: p.log,
                }
            })
        }
        _ => Err(invalid(format!(
            "`{path}`: give either `choice = [...]` or `low` and `high`"
        ))),
    }
}

impl Domain {
    /// The sampler's interval for this dimension: `[lo, hi]` in its own coordinates.
    pub fn bounds(&self) -> (f64, f64) {
        match self {
            Domain::Float { low, high, log } => scale(*low, *high, *log),
            Domain::Int { low, high, log } => {
                // Half a step either side, so that rounding gives each integer its share.
                if *log {
                    (
                        (*low as f64 - 0.5).max(*low as f64 * 0.5).ln(),
                        (*high as f64 + 0.5).ln(),
                    )
                } else {
                    (*low as f64 - 0.5, *high as f64 + 0.5)
                }
            }
            Domain::Choice { values, .. } => (0.0, values.len() as f64),
        }
    }

    pub fn is_categorical(&self) -> bool {
        matches!(self, Domain::Choice { .. })
    }
}

fn scale(low: f64, high: f64, log: bool) -> (f64, f64) {
    if log { (low.ln(), high.ln()) } else { (low, high) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<SearchSpec, SearchError> {
        SearchSpec::from_document(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn reads_the_issue_s_example_space() {
        let s = spec(
            r#"
            [search]
            trials = 12
            objective = "accuracy"
            pruner = "median"
            [search.space]
            "lora.r" = { choice = [4, 8, 16, 32, 64] }
            "lora.alpha" = { choice = [1, 2], times = "lora.r" }
            "train.optimizer.lr" = { low = 1e-5, high = 1e-2, log = true }
            "lora.target-modules" = { choice = [["query", "value"], ["query", "key", "value"]] }
            "#,
        )
        .unwrap();
        assert_eq!(s.direction, Direction::Maximize);
        assert_eq!(s.params.len(), 4);
        // lora.alpha, lora.r, lora.target-modules, train.optimizer.lr (sorted by path).
        let v = s.values(&[1.0, 2.0, 1.0, (3e-4f64).ln()]);
        assert_eq!(v["lora.r"], toml::Value::Integer(16));
        assert_eq!(v["lora.alpha"], toml::Value::Integer(32), "2 x r");
        assert!((v["train.optimizer.lr"].as_float().unwrap() - 3e-4).abs() < 1e-12);
        assert_eq!(v["lora.target-modules"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn bad_tables_say_what_is_wrong() {
        let cases = [
            ("[search]\ntrials = 3\n[search.space]\n", "names no parameter"),
            ("[search]\n[search.space]\n\"lora.r\" = { choice = [4] }\n", "budget"),
            (
                "[search]\ntrials = 3\n[search.space]\n\"lora.dropout\" = { low = 0.3, high = 0.1 }\n",
                "below high",
            ),
            (
                "[search]\ntrials = 3\n[search.space]\n\"train.optimizer.lr\" = { low = 0.0, high = 1.0, log = true }\n",
                "log scale",
            ),
            (
                "[search]\ntrials = 3\n[search.space]\n\"lora.alpha\" = { choice = [1], times = \"lora.r\" }\n",
                "does not name",
            ),
            (
                "[search]\ntrials = 3\npruner = \"hyperband\"\n[search.space]\n\"lora.r\" = { choice = [4] }\n",
                "unknown pruner",
            ),
            (
                "[search]\ntrials = 3\n[search.space]\nr = { choice = [4] }\n",
                "inside a section",
            ),
            (
                "[search]\ntrials = 3\nwall-time = \"soon\"\n[search.space]\n\"lora.r\" = { choice = [4] }\n",
                "wall-time",
            ),
        ];
        for (text, want) in cases {
            let err = spec(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}\n-> {err}");
        }
    }

    #[test]
    fn integers_round_and_durations_parse() {
        let s =
            spec("[search]\nwall-time = \"45m\"\n[search.space]\n\"train.epochs\" = { low = 1, high = 4 }\n").unwrap();
        assert_eq!(s.wall_time, Some(Duration::from_secs(2700)));
        let (lo, hi) = s.params[0].domain.bounds();
        assert_eq!((lo, hi), (0.5, 4.5));
        assert_eq!(s.values(&[4.49])["train.epochs"], toml::Value::Integer(4));
        assert_eq!(s.values(&[0.51])["train.epochs"], toml::Value::Integer(1));
    }
}
