use burn::tensor::{
    Tensor, TensorData,
    activation::{gelu, softmax},
    module::{layer_norm, linear},
};
use std::time::Instant;
fn t<const D: usize>(shape: [usize; D]) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let v = lora_core::init::normal(1.0, n, &mut lora_core::init::rng(1));
    Tensor::from_data(TensorData::new(v, shape), &lora_backend_burn::device())
}
fn time(name: &str, mut f: impl FnMut()) {
    f();
    let s = Instant::now();
    for _ in 0..5 {
        f();
    }
    println!("{name}: {:.2} ms", s.elapsed().as_secs_f64() * 200.0);
}
fn main() {
    let x = t([2048, 384]);
    let up = t([2048, 1536]);
    let w = t([1536, 384]);
    let w2 = t([384, 384]);
    let g = t([384]);
    let s = t([32, 12, 64, 64]);
    time("linear 2048x384 -> 1536 (W^T view)", || {
        linear(x.clone(), w.clone().transpose(), None).into_data();
    });
    time("linear 2048x384 -> 384", || {
        linear(x.clone(), w2.clone().transpose(), None).into_data();
    });
    time("gelu 2048x1536", || {
        gelu(up.clone()).into_data();
    });
    time("add 2048x1536", || {
        (up.clone() + up.clone()).into_data();
    });
    time("mul_scalar 2048x1536", || {
        up.clone().mul_scalar(2.0).into_data();
    });
    time("layer_norm 2048x384", || {
        layer_norm(x.clone(), g.clone(), Some(g.clone()), 1e-12).into_data();
    });
    time("softmax 32x12x64x64", || {
        softmax(s.clone(), 3).into_data();
    });
    let q = t([32, 64, 12, 32]).swap_dims(1, 2);
    let k = t([32, 64, 12, 32]).swap_dims(1, 2);
    time("qk^T batched", || {
        q.clone().matmul(k.clone().swap_dims(2, 3)).into_data();
    });
    let sc = t([32, 12, 64, 64]);
    time("probs@v batched", || {
        sc.clone().matmul(q.clone()).into_data();
    });
    time("swap+reshape ctx", || {
        q.clone().swap_dims(1, 2).reshape([2048, 384]).into_data();
    });
    // autodiff gelu fwd+bwd
    let ad = up.clone().autodiff().require_grad();
    time("gelu fwd+bwd autodiff", || {
        let y = gelu(ad.clone()).sum();
        let gr = y.backward();
        ad.grad(&gr).unwrap().into_data();
    });
    let adx = x.clone().autodiff().require_grad();
    time("layer_norm fwd+bwd autodiff", || {
        let y = layer_norm(adx.clone(), g.clone(), Some(g.clone()), 1e-12).sum();
        let gr = y.backward();
        adx.grad(&gr).unwrap().into_data();
    });
    let ads = s.clone().autodiff().require_grad();
    time("softmax fwd+bwd autodiff", || {
        let y = softmax(ads.clone(), 3).sum();
        let gr = y.backward();
        ads.grad(&gr).unwrap().into_data();
    });
    time("linear fwd+bwd(x) autodiff 384->1536", || {
        let y = linear(adx.clone(), w.clone().transpose(), None).sum();
        let gr = y.backward();
        adx.grad(&gr).unwrap().into_data();
    });
}
