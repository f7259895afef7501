//! Classification losses, with the candle backend's arithmetic.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

/// Mean cross-entropy of `logits [b, labels]` against class indices (as candle-nn's `cross_entropy`).
pub fn cross_entropy(logits: Tensor<2>, labels: &[u32]) -> Tensor<1> {
    let [b, _] = logits.dims();
    let idx: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [b, 1]), &logits.device());
    log_softmax(logits, 1).gather(1, idx).sum().mul_scalar(-1.0 / b as f64)
}

/// Mean cross-entropy of `logits [b, labels]` against target distributions
/// `soft` (`[b * labels]`, row-major): what mixup and cutmix train on.
pub fn soft_cross_entropy(logits: Tensor<2>, soft: &[f32]) -> Tensor<1> {
    let [b, n] = logits.dims();
    let targets = Tensor::<2>::from_data(TensorData::new(soft.to_vec(), [b, n]), &logits.device());
    (targets * log_softmax(logits, 1)).sum().mul_scalar(-1.0 / b as f64)
}
