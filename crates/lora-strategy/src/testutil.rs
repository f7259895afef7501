//! Runs strategies on thread ranks against a tiny least-squares problem.

use lora_core::ParamLayout;
use lora_core::adapter::ParamInfo;
use lora_core::strategy::{StepSums, Strategy};

use crate::comm::ThreadComm;

/// Runs `f` on each rank of a thread group, answers in rank order.
pub fn on_ranks<T: Send>(comms: Vec<ThreadComm>, f: impl Fn(ThreadComm) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
        handles.into_iter().map(|h| h.join().expect("rank panicked")).collect()
    })
}

/// Two tensors: a 3x4 matrix and a 3-vector, as a linear model `y = W x + b`.
pub fn layout() -> ParamLayout {
    ParamLayout::new(&[
        ParamInfo::new("w", vec![3, 4], true),
        ParamInfo::new("b", vec![3], false),
    ])
}

/// The examples: `x` in R^4, `y` in R^3 from a fixed teacher, deterministic.
pub fn examples(n: usize) -> Vec<([f32; 4], [f32; 3])> {
    (0..n)
        .map(|i| {
            let t = i as f32;
            let x = [
                (t * 0.37).sin(),
                (t * 0.91).cos(),
                (t * 0.13).sin() * 2.0,
                1.0 - (t * 0.5).cos(),
            ];
            let y = [
                0.5 * x[0] - x[1] + 0.2,
                x[2] * 0.3 + x[3],
                -0.7 * x[0] + 0.1 * x[3] - 0.4,
            ];
            (x, y)
        })
        .collect()
}

/// Mean-squared-error gradient of one example at `params`, and its loss.
pub fn grad(params: &[f32], (x, y): &([f32; 4], [f32; 3])) -> (Vec<f32>, f32) {
    let mut g = vec![0.0; 15];
    let mut loss = 0.0;
    for i in 0..3 {
        let pred: f32 = (0..4).map(|j| params[i * 4 + j] * x[j]).sum::<f32>() + params[12 + i];
        let e = pred - y[i];
        loss += 0.5 * e * e;
        for j in 0..4 {
            g[i * 4 + j] = e * x[j];
        }
        g[12 + i] = e;
    }
    (g, loss)
}

/// Plain SGD, the optimizer of the tests (its state is empty, so sharding is
/// visible only through the parameters).
pub struct Sgd;

impl lora_core::optim::Optimizer for Sgd {
    fn step(&mut self, params: &mut [f32], grads: &[f32], _layout: &ParamLayout, lr: f64) {
        for (p, g) in params.iter_mut().zip(grads) {
            *p -= lr as f32 * g;
        }
    }
    fn base_lr(&self) -> f64 {
        0.1
    }
    fn state(&self) -> lora_core::optim::OptimizerState {
        Default::default()
    }
    fn load_state(&mut self, _state: &lora_core::optim::OptimizerState) -> lora_core::Result<()> {
        Ok(())
    }
}

/// Trains `steps` steps of `accumulation` micro-batches of `batch` examples
/// (global) the way the loop does, with this rank's rows of each batch; returns the parameters.
pub fn train(strategy: &mut dyn Strategy, steps: usize, batch: usize, accumulation: usize, lr: f64) -> Vec<f32> {
    let (rank, world) = strategy.rank();
    let layout = layout();
    let data = examples(steps * batch * accumulation);
    let mut params = vec![0.0f32; 15];
    strategy.start(&layout, &params).unwrap();
    let mut optimizer = Sgd;
    let state = lora_core::LoopState::new(0);
    for s in 0..steps {
        let mut sums = StepSums::new(15);
        for a in 0..accumulation {
            let first = (s * accumulation + a) * batch;
            let rows = lora_core::shard::Shard::range(rank, world, batch);
            let mut g = vec![0.0f32; 15];
            let mut loss = 0.0;
            for e in &data[first + rows.start..first + rows.end] {
                let (ge, le) = grad(&params, e);
                g.iter_mut().zip(ge).for_each(|(a, b)| *a += b);
                loss += le;
            }
            let n = rows.len();
            if n > 0 {
                g.iter_mut().for_each(|v| *v /= n as f32);
                sums.add(&g, loss / n as f32, n as f64, n, n);
            }
            strategy.after_micro_batch(&mut sums).unwrap();
        }
        strategy.reduce(&mut sums).unwrap();
        sums.normalise();
        strategy
            .apply(&mut optimizer, &mut params, &sums.grads, &layout, lr)
            .unwrap();
        strategy.after_step(&state, &mut params).unwrap();
    }
    strategy.finish(&mut params).unwrap();
    params
}

/// The same training in one process, without a strategy.
pub fn reference(steps: usize, batch: usize, accumulation: usize, lr: f64) -> Vec<f32> {
    let mut s = crate::ddp::Ddp::new(Box::new(ThreadComm::group(1).remove(0)), false);
    train(&mut s, steps, batch, accumulation, lr)
}

/// Mean squared error of `params` over the first `n` examples.
pub fn loss(params: &[f32], n: usize) -> f32 {
    examples(n).iter().map(|e| grad(params, e).1).sum::<f32>() / n as f32
}

pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
