//! What the custom operations' unit tests share.

use candle_core::{Device, Tensor, Var};

/// A variable of `shape` with seeded standard-normal values.
pub fn var(shape: &[usize], seed: u64) -> Var {
    let n: usize = shape.iter().product();
    let v = lora_core::init::normal(1.0, n, &mut lora_core::init::rng(seed));
    Var::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Every value of `a` within `tol` of `b`'s.
pub fn close(a: &Tensor, b: &Tensor, tol: f32) {
    close_by(a, b, |_| tol);
}

/// Every value of `a` within `tol * (1 + |b|)` of `b`'s: relative above 1.
pub fn close_rel(a: &Tensor, b: &Tensor, tol: f32) {
    close_by(a, b, |y| tol * (1.0 + y.abs()));
}

fn close_by(a: &Tensor, b: &Tensor, bound: impl Fn(f32) -> f32) {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= bound(*y), "{x} vs {y}");
    }
}
