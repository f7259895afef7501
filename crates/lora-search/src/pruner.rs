//! Whether a running trial should stop at an evaluation, judged against the
//! other trials of the study (as Optuna's median and successive-halving pruners do).

use crate::journal::{Study, TrialState};
use crate::space::PrunerKind;

/// `Some(reason)` when trial `id`, at its `eval`-th evaluation (1-based) with
/// `value`, should stop.
pub fn should_prune(study: &Study, id: usize, eval: usize, value: f64) -> Option<String> {
    let dir = study.spec.direction;
    let loss = dir.as_loss(value);
    match study.spec.pruner {
        PrunerKind::None => None,
        PrunerKind::Median {
            startup_trials,
            warmup_evals,
        } => {
            let finished: Vec<f64> = study
                .trials
                .iter()
                .filter(|t| t.id != id && t.state == TrialState::Complete)
                .filter_map(|t| t.reports.get(&eval).map(|v| dir.as_loss(*v)))
                .collect();
            if eval <= warmup_evals || finished.len() < startup_trials.max(1) {
                return None;
            }
            let median = median(finished);
            (loss > median).then(|| {
                format!(
                    "pruned at evaluation {eval}: {} = {value:.6} is behind the median {:.6} of {} finished trial(s)",
                    study.spec.objective,
                    dir.as_loss(median),
                    study
                        .trials
                        .iter()
                        .filter(|t| t.id != id && t.state == TrialState::Complete)
                        .count()
                )
            })
        }
        PrunerKind::Asha { min_evals, eta } => {
            // Rungs at min_evals * eta^k evaluations.
            let mut rung = min_evals;
            while rung < eval {
                rung *= eta;
            }
            if rung != eval {
                return None;
            }
            let mut competing: Vec<f64> = study
                .trials
                .iter()
                .filter(|t| t.id != id)
                .filter_map(|t| t.reports.get(&eval).map(|v| dir.as_loss(*v)))
                .collect();
            competing.push(loss);
            competing.sort_by(f64::total_cmp);
            // The top 1/eta go on; with fewer than eta at the rung, the best so far.
            let keep = (competing.len() / eta).max(1);
            (loss > competing[keep - 1]).then(|| {
                format!(
                    "pruned at rung {eval}: {} = {value:.6} is not among the best {keep} of {} trial(s) there",
                    study.spec.objective,
                    competing.len()
                )
            })
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::journal::Trial;
    use crate::space::SearchSpec;

    fn study(pruner: &str, reports: &[(TrialState, &[f64])]) -> Study {
        let text = format!(
            "[search]\ntrials = 9\nobjective = \"accuracy\"\npruner = \"{pruner}\"\npruner-startup-trials = 2\nwarmup-evals = 0\neta = 2\n[search.space]\n\"lora.r\" = {{ choice = [4] }}\n"
        );
        let spec = SearchSpec::from_document(&text.parse().unwrap()).unwrap();
        let trials = reports
            .iter()
            .enumerate()
            .map(|(id, (state, r))| Trial {
                id,
                point: vec![0.0],
                values: BTreeMap::new(),
                reports: r.iter().enumerate().map(|(i, v)| (i + 1, *v)).collect(),
                report_steps: BTreeMap::new(),
                state: *state,
                value: r.last().copied(),
                steps: 0,
                seconds: 0.0,
                message: None,
                pid: None,
            })
            .collect();
        Study {
            pipeline: "p.toml".into(),
            spec,
            trials,
        }
    }

    #[test]
    fn median_prunes_below_the_median_of_finished_trials_once_enough_finished() {
        use TrialState::*;
        // Accuracy: higher is better. Finished trials at evaluation 1: 0.6, 0.8 (median 0.7).
        let s = study(
            "median",
            &[(Complete, &[0.6, 0.7]), (Complete, &[0.8, 0.9]), (Running, &[])],
        );
        assert!(should_prune(&s, 2, 1, 0.65).unwrap().contains("median 0.700000"));
        assert_eq!(should_prune(&s, 2, 1, 0.75), None);
        // A running trial does not count: with one finished trial, nothing is pruned.
        let s = study("median", &[(Complete, &[0.6]), (Running, &[0.9]), (Running, &[])]);
        assert_eq!(should_prune(&s, 2, 1, 0.1), None);
    }

    #[test]
    fn asha_keeps_the_top_half_at_each_rung() {
        use TrialState::*;
        // eta 2, rungs at evaluations 1, 2, 4. Three others reached rung 1 with 0.5, 0.7, 0.9.
        let s = study(
            "asha",
            &[
                (Pruned, &[0.5]),
                (Complete, &[0.7, 0.8]),
                (Complete, &[0.9, 0.95]),
                (Running, &[]),
            ],
        );
        // Four at the rung: the best two go on (0.9 and 0.8 here).
        assert!(should_prune(&s, 3, 1, 0.6).is_some());
        assert_eq!(should_prune(&s, 3, 1, 0.8), None);
        assert_eq!(should_prune(&s, 3, 3, 0.1), None, "3 is no rung");
        // The first trial at a rung always goes on.
        let s = study("asha", &[(Running, &[])]);
        assert_eq!(should_prune(&s, 0, 1, 0.0), None);
    }
}
