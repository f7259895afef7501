//! Every strategy against one process, on thread ranks (the MPI runs are in
//! `tests/` of the workspace): exact ones give the one-process parameters,
//! inexact ones keep the property they promise and still learn.

use lora_core::strategy::{StepSums, Strategy};

use crate::comm::{Comm, ThreadComm};
use crate::compress::{Codec, Compressed, Half};
use crate::ddp::Ddp;
use crate::hierarchical::Hierarchical;
use crate::local::{DilocoConfig, Local};
use crate::powersgd::PowerSgd;
use crate::testutil::*;
use crate::zero::Zero;

type Make = fn(ThreadComm) -> Box<dyn Strategy>;

const STEPS: usize = 12;
const LR: f64 = 0.2;

fn exact() -> Vec<(&'static str, Make)> {
    vec![
        ("ddp", |c| Box::new(Ddp::new(Box::new(c), true))),
        ("ddp-no-sync", |c| Box::new(Ddp::new(Box::new(c), false))),
        ("ddp-overlap", |c| Box::new(crate::overlap::Overlap::new(Box::new(c)))),
        ("zero1", |c| Box::new(Zero::new(Box::new(c), false))),
        ("zero2", |c| Box::new(Zero::new(Box::new(c), true))),
        ("hierarchical", |c| {
            Box::new(Hierarchical::new(Box::new(c), Some(2)).unwrap())
        }),
    ]
}

fn inexact() -> Vec<(&'static str, Make)> {
    vec![
        ("local-sgd", |c| Box::new(Local::local_sgd(Box::new(c), 3))),
        ("diloco", |c| {
            Box::new(Local::diloco(
                Box::new(c),
                &DilocoConfig {
                    sync_every: 3,
                    outer_lr: 0.7,
                    outer_momentum: 0.5,
                },
            ))
        }),
        ("fp16-compress", |c| {
            Box::new(Compressed::new(Box::new(c), Codec::Half(Half::F16)))
        }),
        ("bf16-compress", |c| {
            Box::new(Compressed::new(Box::new(c), Codec::Half(Half::Bf16)))
        }),
        ("topk", |c| Box::new(Compressed::new(Box::new(c), Codec::top_k(0.2, 0)))),
        ("powersgd", |c| Box::new(PowerSgd::new(Box::new(c), 1))),
    ]
}

#[test]
fn exact_strategies_on_one_two_and_four_ranks_give_the_one_process_parameters() {
    // 6 examples per micro-batch: 4 ranks get 2, 2, 1, 1 rows.
    let want = reference(STEPS, 6, 2, LR);
    for (name, make) in exact() {
        for world in [1, 2, 4] {
            let got = on_ranks(ThreadComm::group(world), |c| train(make(c).as_mut(), STEPS, 6, 2, LR));
            for (rank, p) in got.iter().enumerate() {
                let d = max_rel_diff(p, &want);
                assert!(d < 1e-6, "{name} on {world} ranks, rank {rank}: {d:e}");
            }
        }
    }
}

#[test]
fn inexact_strategies_on_one_rank_and_on_four_still_learn() {
    let start = loss(&[0.0; 15], 200);
    let exact = loss(&reference(STEPS, 6, 2, LR), 200);
    for (name, make) in inexact() {
        for world in [1, 4] {
            let got = on_ranks(ThreadComm::group(world), |c| train(make(c).as_mut(), STEPS, 6, 2, LR));
            for p in &got[1..] {
                assert_eq!(p, &got[0], "{name}: the ranks end with different parameters");
            }
            let l = loss(&got[0], 200);
            // Within a factor of the exact run's loss, far below the start.
            assert!(
                l < 0.5 * start && l < 3.0 * exact,
                "{name} on {world}: {l} (start {start}, exact {exact})"
            );
        }
    }
}

#[test]
fn the_16_bit_strategies_are_within_their_rounding_of_the_exact_sum() {
    for (h, tol) in [(Half::F16, 1e-3), (Half::Bf16, 8e-3)] {
        let got = on_ranks(ThreadComm::group(2), |c| {
            let mut s = Compressed::new(Box::new(c), Codec::Half(h));
            let r = s.rank().0 as f32;
            let mut sums = StepSums::new(3);
            sums.grads = vec![0.1 + r, -2.5 * r, 1e-3];
            s.reduce(&mut sums).unwrap();
            sums.grads
        });
        let want = [1.2f32, -2.5, 2e-3];
        for (g, w) in got[0].iter().zip(want) {
            assert!(((g - w) / w).abs() < tol, "{h:?}: {g} vs {w}");
        }
        assert_eq!(got[0], got[1]);
    }
}

#[test]
fn topk_sends_k_values_and_keeps_sent_plus_residual_equal_to_the_gradients() {
    let n = 10;
    let got = on_ranks(ThreadComm::group(2), |c| {
        let rank = c.rank();
        let mut s = Compressed::new(Box::new(c), Codec::top_k(0.2, 0));
        let (mut sent, mut fed) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut bytes = Vec::new();
        for step in 0..5 {
            let mut sums = StepSums::new(n);
            sums.grads = (0..n).map(|i| ((i * 7 + step * 3 + rank) % 11) as f32 - 5.0).collect();
            fed.iter_mut().zip(&sums.grads).for_each(|(f, g)| *f += g);
            s.reduce(&mut sums).unwrap();
            sent.iter_mut().zip(&sums.grads).for_each(|(a, g)| *a += g);
            bytes.push(s.rank_figures(0.0).unwrap()[rank].bytes_sent);
        }
        (sent, fed, s.residual().to_vec(), bytes)
    });
    let (sent, _, _, bytes) = &got[0];
    // Both ranks' k = 2 (index, value) pairs are gathered: 16 bytes each, plus the 4 scalars' all-reduce (32 bytes).
    assert!(bytes.iter().all(|&b| b == 16.0 + 32.0), "{bytes:?}");
    // What the ranks sent, summed, plus every rank's residual is every gradient fed.
    let fed: Vec<f32> = (0..n).map(|i| got[0].1[i] + got[1].1[i]).collect();
    for i in 0..n {
        let kept = got[0].2[i] + got[1].2[i];
        assert!(
            (sent[i] + kept - fed[i]).abs() < 1e-5,
            "{i}: {} + {kept} != {}",
            sent[i],
            fed[i]
        );
    }
    assert_eq!(got[0].0, got[1].0);
}

#[test]
fn topk_warmup_sends_everything_first_and_decays_to_the_ratio() {
    let n = 10;
    let got = on_ranks(ThreadComm::group(2), |c| {
        let rank = c.rank();
        let mut s = Compressed::new(Box::new(c), Codec::top_k(0.2, 4));
        let mut bytes = Vec::new();
        let mut first = (Vec::new(), Vec::new());
        for step in 0..6 {
            let mut sums = StepSums::new(n);
            sums.grads = (0..n).map(|i| ((i * 7 + step * 3 + rank) % 11) as f32 - 5.0).collect();
            let fed = sums.grads.clone();
            s.reduce(&mut sums).unwrap();
            if step == 0 {
                first = (fed, sums.grads.clone());
            }
            bytes.push(s.rank_figures(0.0).unwrap()[rank].bytes_sent);
        }
        (first, s.residual().to_vec(), bytes)
    });
    // k = ceil(n 0.2^(t/4)) for t < 4: 10, 7 (6.69), 5 (4.47), 3 (2.99); then 2. Each
    // of the 2 ranks' (index, value) pairs is 8 bytes, plus 32 for the scalars.
    let want: Vec<f64> = [10.0, 7.0, 5.0, 3.0, 2.0, 2.0].iter().map(|k| 8.0 * k + 32.0).collect();
    assert_eq!(got[0].2, want);
    // The dense first step is the exact sum, and leaves no residual from it.
    let exact: Vec<f32> = (0..n).map(|i| got[0].0.0[i] + got[1].0.0[i]).collect();
    assert_eq!(got[0].0.1, exact);
    assert_eq!(Compressed::warmup_ratio(0.2, 4, 0), 1.0);
    assert_eq!(Compressed::warmup_ratio(0.2, 0, 0), 0.2);
    assert_eq!(Compressed::warmup_ratio(0.2, 4, 9), 0.2);
}

/// One rank's view of a PowerSGD step: what it got back, what it fed, its
/// residual and the values it sends per step.
struct PowerSgdStep {
    got: Vec<f32>,
    fed: Vec<f32>,
    residual: Vec<f32>,
    values_per_step: usize,
}

/// PowerSGD at r = 1 on two ranks, each feeding `(rank + 1) u v^T` (rank 1;
/// the sum is rank 1 too), after `zero_steps` all-zero gradients.
fn powersgd_on_rank_one_sums(zero_steps: usize) -> Vec<PowerSgdStep> {
    use lora_core::ParamLayout;
    use lora_core::adapter::ParamInfo;
    let layout = ParamLayout::new(&[ParamInfo::new("m", vec![4, 3], true)]);
    on_ranks(ThreadComm::group(2), |c| {
        let r = c.rank() as f32 + 1.0;
        let mut s = PowerSgd::new(Box::new(c), 1);
        s.start(&layout, &[0.0; 12]).unwrap();
        for _ in 0..zero_steps {
            let mut zero = StepSums::new(12);
            s.reduce(&mut zero).unwrap();
            assert!(zero.grads.iter().all(|g| *g == 0.0));
        }
        let (u, v) = ([1.0f32, -2.0, 0.5, 3.0], [0.3f32, 1.0, -1.0]);
        let mut sums = StepSums::new(12);
        sums.grads = (0..12).map(|i| r * u[i / 3] * v[i % 3]).collect();
        let m = sums.grads.clone();
        s.reduce(&mut sums).unwrap();
        PowerSgdStep {
            got: sums.grads,
            fed: m,
            residual: s.residual.clone(),
            values_per_step: s.values_per_step(),
        }
    })
}

/// Both ranks got back the sum of what they fed.
fn assert_sent_whole(ranks: &[PowerSgdStep]) {
    for i in 0..12 {
        let sum = ranks[0].fed[i] + ranks[1].fed[i];
        assert!(
            (ranks[0].got[i] - sum).abs() < 1e-4 * sum.abs().max(1.0),
            "{i}: {} vs {sum}",
            ranks[0].got[i]
        );
    }
}

#[test]
fn powersgd_reconstructs_a_rank_r_gradient_and_carries_the_rest() {
    let ranks = powersgd_on_rank_one_sums(0);
    assert_sent_whole(&ranks);
    assert!(ranks.iter().all(|r| r.residual.iter().all(|e| e.abs() < 1e-4)));
    // One factor pair of 4 + 3 values instead of 12.
    assert_eq!(ranks[0].values_per_step, 7);

    // A rank-2 matrix with r = 1: the sent sum plus both residuals is the sum fed.
    use lora_core::ParamLayout;
    use lora_core::adapter::ParamInfo;
    let layout = ParamLayout::new(&[ParamInfo::new("m", vec![4, 3], true)]);
    let got = on_ranks(ThreadComm::group(2), |c| {
        let r = c.rank() as f32;
        let mut s = PowerSgd::new(Box::new(c), 1);
        s.start(&layout, &[0.0; 12]).unwrap();
        let mut sums = StepSums::new(12);
        sums.grads = (0..12)
            .map(|i| ((i * 5 + 3) % 7) as f32 - 3.0 + r * (i % 2) as f32)
            .collect();
        let m = sums.grads.clone();
        s.reduce(&mut sums).unwrap();
        (sums.grads, m, s.residual.clone())
    });
    for i in 0..12 {
        let fed = got[0].1[i] + got[1].1[i];
        let kept = got[0].2[i] + got[1].2[i];
        assert!((got[0].0[i] + kept - fed).abs() < 1e-4, "{i}");
    }
    assert!(
        got[0].2.iter().any(|e| e.abs() > 1e-3),
        "a rank-2 sum cannot pass through rank 1 whole"
    );
}

#[test]
fn powersgd_survives_a_zero_first_gradient() {
    // LoRA's A has a zero gradient on the first step (B starts at zero): the
    // next, rank-1 gradient must still pass whole at r = 1 (a zero warm start
    // would send zeros from then on).
    assert_sent_whole(&powersgd_on_rank_one_sums(1));
}

#[test]
fn local_sgd_replicas_differ_between_meetings_and_agree_at_each() {
    let got = on_ranks(ThreadComm::group(2), |c| {
        let mut s = Local::local_sgd(Box::new(c), 3);
        let layout = layout();
        let state = lora_core::LoopState::new(0);
        let mut params = vec![0.0f32; 15];
        s.start(&layout, &params).unwrap();
        let rank = s.rank().0 as f32;
        let mut seen = Vec::new();
        for _ in 0..6 {
            // Each rank moves by its own constant.
            params.iter_mut().for_each(|p| *p += 1.0 + rank);
            let met = s.after_step(&state, &mut params).unwrap();
            seen.push((met, params[0]));
        }
        seen
    });
    // Meetings after steps 3 and 6: the mean of 3 and 6 is 4.5; 4.5 + 3 * 1.5 = 9.
    let met: Vec<bool> = got[0].iter().map(|s| s.0).collect();
    assert_eq!(met, [false, false, true, false, false, true]);
    assert_eq!(got[0][2].1, 4.5);
    assert_eq!(got[1][2].1, 4.5);
    assert_eq!(got[0][1].1, 2.0);
    assert_eq!(got[1][1].1, 4.0);
    assert_eq!(got[0][5].1, 9.0);
}

#[test]
fn diloco_takes_the_outer_nesterov_step_by_hand() {
    let got = on_ranks(ThreadComm::group(2), |c| {
        let cfg = DilocoConfig {
            sync_every: 1,
            outer_lr: 0.5,
            outer_momentum: 0.5,
        };
        let mut s = Local::diloco(Box::new(c), &cfg);
        let layout = lora_core::ParamLayout::new(&[lora_core::adapter::ParamInfo::new("p", vec![1], false)]);
        s.start(&layout, &[1.0]).unwrap();
        let rank = s.rank().0 as f32;
        let state = lora_core::LoopState::new(0);
        let mut out = Vec::new();
        let mut p = vec![1.0f32];
        for _ in 0..2 {
            p[0] -= 0.2 * (1.0 + rank);
            s.after_step(&state, &mut p).unwrap();
            out.push(p[0]);
        }
        out
    });
    // Step 1: delta = mean(0.2, 0.4) = 0.3; b = 0.3; anchor = 1 - 0.5 (0.3 + 0.15) = 0.775.
    // Step 2: delta = 0.3; b = 0.45; anchor = 0.775 - 0.5 (0.3 + 0.225) = 0.5125.
    for out in &got {
        assert!(
            (out[0] - 0.775).abs() < 1e-6 && (out[1] - 0.5125).abs() < 1e-6,
            "{out:?}"
        );
    }
}

#[test]
fn hierarchical_on_two_simulated_nodes_splits_two_by_two_and_sends_less_across() {
    let got = on_ranks(ThreadComm::on_nodes(vec![0, 0, 1, 1]), |c| {
        let mut s = Hierarchical::new(Box::new(c), None).unwrap();
        let shape = s.shape();
        let r = s.rank().0 as f32;
        let mut sums = StepSums::new(4);
        sums.grads = vec![r; 4];
        s.reduce(&mut sums).unwrap();
        (shape, sums.grads)
    });
    for (rank, (shape, g)) in got.iter().enumerate() {
        assert_eq!(*shape, (if rank % 2 == 0 { Some(2) } else { None }, 2));
        assert_eq!(g, &vec![6.0; 4]);
    }
}

#[test]
fn the_registry_has_the_strategies_and_says_which_are_inexact() {
    let names: Vec<_> = crate::entries().iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [
            "bf16-compress",
            "ddp",
            "ddp-no-sync",
            "ddp-overlap",
            "diloco",
            "fp16-compress",
            "hierarchical",
            "local-sgd",
            "powersgd",
            "topk",
            "zero1",
            "zero2"
        ]
    );
    for e in crate::entries() {
        assert_eq!(e.summary.starts_with("exact:"), e.exact, "{}", e.name);
        assert_eq!(e.summary.starts_with("inexact:"), !e.exact, "{}", e.name);
    }
}

#[test]
fn ddp_sends_per_micro_batch_and_no_sync_once_per_step() {
    for (per_micro, want) in [(true, 2.0 * 60.0), (false, 60.0)] {
        let got = on_ranks(ThreadComm::group(2), |c| {
            let mut s = Ddp::new(Box::new(c), per_micro);
            let rank = s.rank().0;
            train(&mut s, 1, 4, 2, 0.1);
            s.rank_figures(0.0).unwrap()[rank].bytes_sent
        });
        // 15 f32 gradients (60 bytes) per all-reduce on 2 ranks, plus 32 bytes of scalars.
        assert_eq!(got, vec![want + 32.0; 2]);
    }
}

/// The `[strategy]` table of a pipeline made of `text`.
fn strategy_table(text: &str) -> lora_core::config::Component {
    let file = lora_core::diag::SourceFile::new(std::path::Path::new("p.toml"), text.to_string());
    let (partial, _) = lora_core::config::PartialConfig::parse(file);
    partial.strategy.flatten().expect("a [strategy] table")
}

#[test]
fn every_strategy_takes_a_collective_timeout_and_refuses_a_bad_one() {
    let t = strategy_table("[strategy]\ntype = \"topk\"\nratio = 0.1\ncollective-timeout-s = 2.5\n");
    assert_eq!(
        crate::collective_timeout(&t).unwrap(),
        std::time::Duration::from_millis(2500)
    );
    // The shared key is not passed on as one of topk's own options.
    crate::check(&t).unwrap();
    let t = strategy_table("[strategy]\ntype = \"ddp\"\n");
    assert_eq!(
        crate::collective_timeout(&t).unwrap().as_secs_f64(),
        crate::DEFAULT_COLLECTIVE_TIMEOUT_S
    );
    for bad in ["0", "-1.0", "nan", "1e9"] {
        let t = strategy_table(&format!("[strategy]\ntype = \"ddp\"\ncollective-timeout-s = {bad}\n"));
        let e = crate::check(&t).unwrap_err();
        assert!(e.to_string().contains("collective-timeout-s"), "{bad}: {e}");
    }
    // A strategy's own options are still checked.
    assert!(crate::check(&strategy_table("[strategy]\ntype = \"ddp\"\nratio = 0.1\n")).is_err());
}

#[test]
fn a_collective_that_a_rank_never_joins_times_out_on_the_others() {
    let timeout = std::time::Duration::from_millis(200);
    let got = on_ranks(ThreadComm::group(2), |mut c| {
        c.set_timeout(timeout);
        if c.rank() == 1 {
            // Stuck in its own work: never reaches the all-reduce.
            return None;
        }
        let start = std::time::Instant::now();
        let e = c.all_reduce_f32(&mut [1.0, 2.0]).unwrap_err();
        Some((e, start.elapsed()))
    });
    let (e, waited) = got.into_iter().next().flatten().unwrap();
    assert!(waited >= timeout && waited < timeout * 10, "{waited:?}");
    assert!(
        matches!(
            e,
            crate::Error::Timeout {
                collective: "all-reduce",
                bytes: 8,
                rank: 0,
                size: 2,
                ..
            }
        ),
        "{e}"
    );
    let core: lora_core::Error = e.into();
    let message = core.at(|| "step 7".into()).to_string();
    assert!(
        message.starts_with("the all-reduce of 8 bytes did not complete within 0.2 s on process 0 of 2 (step 7): another process is stuck or gone"),
        "{message}"
    );
}
