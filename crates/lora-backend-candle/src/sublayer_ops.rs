//! BERT's frozen sublayer ends as one node of candle's graph each
//! (`lora_nn::sublayer`): the feed-forward sublayer and the attention's output
//! projection, each with its dropout, residual sum and layer norm. Composed,
//! every node's gradient is a fresh zero tensor that candle then adds into;
//! fused, only the input's (and the residual's) are.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use lora_core::init::CounterMask;
use lora_nn::attention_kernel::{Heads, attention_backward, attention_forward};
use lora_nn::ops::{AttentionGeometry, FrozenLinear, FrozenNorm, Projection, compose_attention_sublayer};
use lora_nn::scratch::{self, Scratch};
use lora_nn::sublayer::{FeedForward, FeedForwardSaved, HostNorm, LinearAddNorm};

use crate::linear_ops::{Frozen, LoraUpdate};
use crate::ops::{Grads3, contiguous_f32, grads3_optional_first, inputs, kernel_bias, score_bias, with_f32, with_f32s};

/// A frozen norm's affine, copied out once per node.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new(gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: gamma.to_dtype(candle_core::DType::F32)?.to_vec1()?,
            beta: beta.to_dtype(candle_core::DType::F32)?.to_vec1()?,
            eps: eps as f32,
        })
    }

    fn host(&self) -> HostNorm<'_> {
        HostNorm {
            gamma: &self.gamma,
            beta: &self.beta,
            eps: self.eps,
        }
    }
}

fn shape_error(e: lora_nn::sublayer::ShapeError) -> candle_core::Error {
    candle_core::Error::Msg(e.0)
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("a fused sublayer's saved values were poisoned by a panic".into())
}

/// [`FeedForward`] as one node; what its backward pass reads is kept only
/// when a graph will hold the node.
struct FeedForwardOp {
    up: Frozen,
    down: Frozen,
    norm: Norm,
    dropout: Option<CounterMask>,
    keep: bool,
    saved: Mutex<Option<FeedForwardSaved>>,
}

impl FeedForwardOp {
    fn run<R>(&self, f: impl FnOnce(FeedForward) -> Result<R>) -> Result<R> {
        self.up.host(|up| {
            self.down.host(|down| {
                f(FeedForward {
                    up,
                    down,
                    norm: self.norm.host(),
                    dropout: self.dropout,
                })
            })
        })
    }
}

impl CustomOp1 for FeedForwardOp {
    fn name(&self) -> &'static str {
        "feed-forward-add-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let (y, saved) = self.run(|ff| ff.forward(x, self.keep).map_err(shape_error))?;
        *self.saved.lock().map_err(poisoned)? = saved;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let saved = self.saved.lock().map_err(poisoned)?;
        let Some(saved) = saved.as_ref() else {
            candle_core::bail!("feed-forward backward without its forward pass");
        };
        let g = grad_res.contiguous()?;
        let dx = with_f32(&g, |g| self.run(|ff| ff.backward(saved, g).map_err(shape_error)))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `layer_norm(dropout(GELU(x W1^T + b1) W2^T + b2) + x)` over frozen linears and norm.
pub fn feed_forward(
    x: &Tensor,
    up: (&Tensor, Option<&Tensor>),
    down: (&Tensor, Option<&Tensor>),
    norm: (&Tensor, &Tensor, f64),
    dropout: Option<CounterMask>,
) -> Result<Tensor> {
    let op = FeedForwardOp {
        up: Frozen::new(up.0, up.1)?,
        down: Frozen::new(down.0, down.1)?,
        norm: Norm::new(norm.0, norm.1, norm.2)?,
        dropout,
        keep: x.track_op(),
        saved: Mutex::new(None),
    };
    x.contiguous()?.apply_op1(op)
}

/// [`LinearAddNorm`] as one node over `(x, residual)`.
struct LinearAddNormOp {
    end: AddNormEnd,
    keep: bool,
    sum: Mutex<Option<Vec<f32>>>,
}

/// A frozen linear, the dropout of its result, the residual sum and the norm
/// ([`LinearAddNorm`]): the end of [`LinearAddNormOp`] and of the attention sublayer.
struct AddNormEnd {
    linear: Frozen,
    norm: Norm,
    dropout: Option<CounterMask>,
}

impl AddNormEnd {
    fn new(
        linear: (&Tensor, Option<&Tensor>),
        norm: (&Tensor, &Tensor, f64),
        dropout: Option<CounterMask>,
    ) -> Result<Self> {
        Ok(Self {
            linear: Frozen::new(linear.0, linear.1)?,
            norm: Norm::new(norm.0, norm.1, norm.2)?,
            dropout,
        })
    }

    fn run<R>(&self, f: impl FnOnce(LinearAddNorm) -> Result<R>) -> Result<R> {
        self.linear.host(|linear| {
            f(LinearAddNorm {
                linear,
                norm: self.norm.host(),
                dropout: self.dropout,
            })
        })
    }
}

impl CustomOp2 for LinearAddNormOp {
    fn name(&self) -> &'static str {
        "linear-add-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [x, residual] = inputs([(s1, l1), (s2, l2)])?;
        let (y, sum) = self
            .end
            .run(|op| op.forward(x, residual, self.keep).map_err(shape_error))?;
        *self.sum.lock().map_err(poisoned)? = sum;
        Ok((CpuStorage::F32(y), l2.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let sum = self.sum.lock().map_err(poisoned)?;
        let Some(sum) = sum.as_ref() else {
            candle_core::bail!("linear + norm backward without its forward pass");
        };
        let g = grad_res.contiguous()?;
        let (dx, d_residual) = with_f32s([&g], |[g]| self.end.run(|op| op.backward(sum, g).map_err(shape_error)))?;
        // An input no variable lies under needs no gradient (candle would zero
        // and add a buffer for it all the same).
        let dev = x.device();
        let grad = |g: Vec<f32>, of: &Tensor| of.track_op().then(|| Tensor::from_vec(g, of.shape(), dev)).transpose();
        Ok((grad(dx, x)?, grad(d_residual, residual)?))
    }
}

/// `layer_norm(dropout(x W^T + b) + residual)` over a frozen linear and norm.
pub fn linear_add_norm(
    x: &Tensor,
    residual: &Tensor,
    linear: (&Tensor, Option<&Tensor>),
    norm: (&Tensor, &Tensor, f64),
    dropout: Option<CounterMask>,
) -> Result<Tensor> {
    let op = LinearAddNormOp {
        end: AddNormEnd::new(linear, norm, dropout)?,
        keep: x.track_op() || residual.track_op(),
        sum: Mutex::new(None),
    };
    x.contiguous()?.apply_op2(&residual.contiguous()?, op)
}

/// One input projection of [`AttentionSublayerOp`]: its frozen linear and,
/// with LoRA, where its `A` and `B` lie in the op's packed inputs.
struct ProjectionOp {
    base: Frozen,
    lora: Option<LoraPart>,
}

struct LoraPart {
    /// Offsets of `A [r, in]` and `B [out, r]` in the packed `A`s and `B`s.
    a_at: usize,
    b_at: usize,
    r: usize,
    scale: f32,
    mask: Option<Vec<f32>>,
}

/// What the backward pass reads.
struct AttentionSaved {
    qkv: [Vec<f32>; 3],
    probs: Scratch,
    sum: Vec<f32>,
}

/// BERT's attention sublayer as one node over `(x, packed A's, packed B's)`:
/// the q/k/v projections (with their LoRA updates), the attention, the output
/// projection, dropout, residual sum and norm. Composed, q, k, v, the context
/// and each of x's four uses got a zero-filled gradient that candle then added
/// into; here they are the pass's own buffers, and x's gradient is one.
struct AttentionSublayerOp {
    projections: [ProjectionOp; 3],
    heads: Heads,
    scale: f32,
    bias: Option<Vec<f32>>,
    causal: bool,
    attention_dropout: Option<CounterMask>,
    /// The output projection, hidden dropout, residual sum and norm.
    end: AddNormEnd,
    keep: bool,
    saved: Mutex<Option<AttentionSaved>>,
}

impl AttentionSublayerOp {
    /// The LoRA update of projection `p` over the packed parameters.
    fn update<'a>(
        &'a self,
        p: &'a ProjectionOp,
        a: &'a [f32],
        b: &'a [f32],
        rows: usize,
    ) -> Result<Option<LoraUpdate<'a>>> {
        let Some(l) = &p.lora else { return Ok(None) };
        let (out, inp) = p.base.dims()?;
        let (a, b) = (a.get(l.a_at..l.a_at + l.r * inp), b.get(l.b_at..l.b_at + out * l.r));
        let (Some(a), Some(b)) = (a, b) else {
            candle_core::bail!(
                "packed LoRA parameters too short for a projection of [{out}, {inp}] at rank {}",
                l.r
            );
        };
        Ok(Some(LoraUpdate {
            a,
            b,
            rows,
            inp,
            out,
            r: l.r,
            scale: l.scale,
            mask: l.mask.as_deref(),
        }))
    }
}

impl CustomOp3 for AttentionSublayerOp {
    fn name(&self) -> &'static str {
        "attention-sublayer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, a, b] = inputs([(s1, l1), (s2, l2), (s3, l3)])?;
        let h = self.heads;
        let width = h.heads * h.head_dim;
        let rows = h.batch * h.queries;
        if !h.valid() || h.kv_heads != h.heads || h.keys != h.queries || x.len() != rows * width {
            candle_core::bail!("attention sublayer {h:?} on {:?}", l1.shape());
        }
        let mut qkv: [Vec<f32>; 3] = Default::default();
        for (p, y) in self.projections.iter().zip(&mut qkv) {
            let mut out = p.base.forward(x, rows, width)?;
            if let Some(update) = self.update(p, a, b, rows)? {
                update.add_to(x, &mut out);
            }
            if out.len() != rows * width {
                candle_core::bail!("attention projection of {} values for {rows} x {width}", out.len());
            }
            *y = out;
        }
        let bias = kernel_bias(&self.bias, self.causal, h);
        // Every head writes its columns of every row; read only by the output projection.
        let mut context = scratch::take(h.q_len());
        let [q, k, v] = &qkv;
        // Written in full (every head's scores); reused from one step to the next.
        let mut probs = self.keep.then(|| scratch::take(h.probs_len()));
        let dropout = self.attention_dropout;
        attention_forward(
            q,
            k,
            v,
            h,
            self.scale,
            bias,
            dropout,
            probs.as_deref_mut(),
            &mut context,
        );
        let (y, sum) = self
            .end
            .run(|end| end.forward(&context, x, self.keep).map_err(shape_error))?;
        if let Some(sum) = sum {
            let probs = probs.unwrap_or_else(|| scratch::take(0));
            *self.saved.lock().map_err(poisoned)? = Some(AttentionSaved { qkv, probs, sum });
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, a: &Tensor, b: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Grads3> {
        let saved = self.saved.lock().map_err(poisoned)?;
        let Some(saved) = saved.as_ref() else {
            candle_core::bail!("attention sublayer backward without its forward pass");
        };
        let h = self.heads;
        let rows = h.batch * h.queries;
        let (x_t, a_t, b_t, g_t) = (
            x.contiguous()?,
            a.contiguous()?,
            b.contiguous()?,
            grad_res.contiguous()?,
        );
        let needs_input_grad = x.track_op();
        let (dx, da, db) = with_f32s([&x_t, &a_t, &b_t, &g_t], |[xs, av, bv, g]| {
            // Through the norm and the output projection: the context's and the residual's gradients.
            let (d_context, d_residual) = self.end.run(|end| end.backward(&saved.sum, g).map_err(shape_error))?;
            let [q, k, v] = &saved.qkv;
            // Written in full by the attention's backward pass (its first head group overwrites).
            let (mut dq, mut dk, mut dv) = (
                scratch::take(h.q_len()),
                scratch::take(h.kv_len()),
                scratch::take(h.kv_len()),
            );
            attention_backward(
                q,
                k,
                v,
                &saved.probs,
                &d_context,
                h,
                self.scale,
                self.attention_dropout,
                &mut dq,
                &mut dk,
                &mut dv,
            );
            // x's gradient starts as the residual's; each projection adds its own.
            let mut dx = needs_input_grad.then_some(d_residual);
            let (mut da, mut db) = (vec![0f32; av.len()], vec![0f32; bv.len()]);
            for (p, dy) in self.projections.iter().zip([&dq, &dk, &dv]) {
                if let Some(dx) = dx.as_deref_mut() {
                    p.base.add_input_grad(dy, rows, dx)?;
                }
                if let (Some(update), Some(l)) = (self.update(p, av, bv, rows)?, &p.lora) {
                    let (pa, pb) = update.backward(xs, dy, dx.as_deref_mut());
                    da[l.a_at..l.a_at + pa.len()].copy_from_slice(&pa);
                    db[l.b_at..l.b_at + pb.len()].copy_from_slice(&pb);
                }
            }
            Ok((dx, da, db))
        })?;
        grads3_optional_first(dx, [da, db], [x, a, b])
    }
}

/// BERT's attention sublayer as one node (see [`AttentionSublayerOp`]); the
/// composition when no projection carries LoRA (nothing to pack) or the
/// attention is not self-attention over one head layout.
pub fn attention_sublayer(
    ops: &crate::CandleOps,
    x: &Tensor,
    projections: [Projection<'_, crate::CandleOps>; 3],
    g: AttentionGeometry<'_>,
    output: FrozenLinear<'_, Tensor>,
    norm: FrozenNorm<'_, Tensor>,
) -> lora_core::Result<Tensor> {
    use crate::error::IntoCore;
    let h = g.heads;
    if projections.iter().all(|p| p.lora.is_none()) || h.kv_heads != h.heads || h.keys != h.queries {
        return compose_attention_sublayer(ops, x, projections, g, output, norm);
    }
    let build = || -> Result<Tensor> {
        let (mut a_parts, mut b_parts) = (Vec::new(), Vec::new());
        let (mut a_at, mut b_at) = (0, 0);
        let mut ops_p = Vec::with_capacity(3);
        for p in projections {
            let base = Frozen::new(p.linear.weight, p.linear.bias)?;
            let lora = match p.lora {
                Some(l) => {
                    let part = LoraPart {
                        a_at,
                        b_at,
                        r: l.a.dims2()?.0,
                        scale: l.scale as f32,
                        mask: l.mask,
                    };
                    a_at += l.a.elem_count();
                    b_at += l.b.elem_count();
                    a_parts.push(l.a.flatten_all()?);
                    b_parts.push(l.b.flatten_all()?);
                    Some(part)
                }
                None => None,
            };
            ops_p.push(ProjectionOp { base, lora });
        }
        let projections: [ProjectionOp; 3] = ops_p
            .try_into()
            .map_err(|_| candle_core::Error::Msg("three projections".into()))?;
        let (bias, causal) = score_bias(g.mask, h)?;
        let op = AttentionSublayerOp {
            projections,
            heads: h,
            scale: g.scale as f32,
            bias,
            causal,
            attention_dropout: g.attention_dropout,
            end: AddNormEnd::new(
                (output.weight, output.bias),
                (norm.gamma, norm.beta, norm.eps),
                g.hidden_dropout,
            )?,
            keep: x.track_op() || a_parts.iter().chain(&b_parts).any(Tensor::track_op),
            saved: Mutex::new(None),
        };
        let (a, b) = (Tensor::cat(&a_parts, 0)?, Tensor::cat(&b_parts, 0)?);
        x.contiguous()?.apply_op3(&a, &b, op)
    };
    build().core()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear_ops::frozen_linear;
    use crate::ops::{add_layer_norm, dropout, gelu};
    use crate::test_support::{close, var};

    fn frozen(shape: &[usize], seed: u64) -> Tensor {
        var(shape, seed).as_tensor().detach()
    }

    fn dropped(y: Tensor, mask: Option<CounterMask>) -> Tensor {
        match mask {
            Some(m) => dropout(&y, m).unwrap(),
            None => y,
        }
    }

    /// Bit for bit the composed nodes (`TensorOps`'s defaults), values and
    /// gradients, over more values than one parallel block, with and without
    /// the base's dropout and a bias.
    #[test]
    fn fused_sublayers_are_the_composed_ops_bit_for_bit() {
        let (rows, hidden, inner) = (1100, 32, 64);
        let x = var(&[rows, hidden], 1);
        let residual = var(&[rows, hidden], 2);
        let (w1, b1) = (frozen(&[inner, hidden], 3), frozen(&[inner], 4));
        let (w2, b2) = (frozen(&[hidden, inner], 5), frozen(&[hidden], 6));
        let (gamma, beta) = (frozen(&[hidden], 7), frozen(&[hidden], 8));
        let w3 = frozen(&[hidden, hidden], 10);
        let weights = frozen(&[rows, hidden], 9);
        for (mask, up_bias) in [(None, Some(&b1)), (CounterMask::new(11, 0.25), None)] {
            let (xt, rt) = (x.as_tensor(), residual.as_tensor());
            let norm = (&gamma, &beta, 1e-12);
            let fused = feed_forward(xt, (&w1, up_bias), (&w2, Some(&b2)), norm, mask).unwrap();
            let inner_act = gelu(&frozen_linear(xt, &w1, up_bias).unwrap()).unwrap();
            let y = dropped(frozen_linear(&inner_act, &w2, Some(&b2)).unwrap(), mask);
            let composed = add_layer_norm(&y, xt, &gamma, &beta, 1e-12).unwrap();
            close(&fused, &composed, 0.0);
            // Without a graph (evaluation), GELU runs in place: the same values.
            let detached = feed_forward(&xt.detach(), (&w1, up_bias), (&w2, Some(&b2)), norm, mask).unwrap();
            close(&detached, &composed, 0.0);
            let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            close(gf.get(&x).unwrap(), gc.get(&x).unwrap(), 0.0);

            let bias = up_bias.map(|_| &b2);
            let fused = linear_add_norm(xt, rt, (&w3, bias), norm, mask).unwrap();
            let y = dropped(frozen_linear(xt, &w3, bias).unwrap(), mask);
            let composed = add_layer_norm(&y, rt, &gamma, &beta, 1e-12).unwrap();
            close(&fused, &composed, 0.0);
            let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &residual] {
                close(gf.get(v).unwrap(), gc.get(v).unwrap(), 0.0);
            }
        }
    }

    /// The fused attention sublayer against the composition of the backend's
    /// own operations: values and the gradients of x and of every LoRA factor,
    /// with LoRA on q (with its dropout mask, rank 2) and v (rank 3), k frozen,
    /// a padded key, with and without the attention and hidden dropouts.
    #[test]
    fn fused_attention_sublayer_matches_the_composition() {
        use lora_nn::attention_kernel::Heads;
        use lora_nn::ops::{
            AttentionGeometry, FrozenLinear, FrozenNorm, LoraTerm, Mask, Projection, compose_attention_sublayer,
        };
        let ops = crate::CandleOps::default();
        let heads = Heads {
            batch: 2,
            queries: 6,
            keys: 6,
            heads: 3,
            kv_heads: 3,
            head_dim: 4,
        };
        let (rows, width) = (12, 12);
        let x = var(&[rows, width], 1);
        let (aq, bq, av, bv) = (
            var(&[2, width], 2),
            var(&[width, 2], 3),
            var(&[3, width], 4),
            var(&[width, 3], 5),
        );
        let w: Vec<Tensor> = (0..4).map(|i| frozen(&[width, width], 10 + i)).collect();
        let bias: Vec<Tensor> = (0..4).map(|i| frozen(&[width], 20 + i)).collect();
        let (gamma, beta) = (frozen(&[width], 30), frozen(&[width], 31));
        let weights = frozen(&[rows, width], 32);
        let padding = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0];
        let lora_mask: Vec<f32> = (0..rows * width).map(|i| if i % 5 == 0 { 0.0 } else { 1.25 }).collect();
        for (attention_dropout, hidden_dropout) in [(None, None), (CounterMask::new(3, 0.2), CounterMask::new(4, 0.1))]
        {
            let run = |fused: bool| {
                let linear = |i: usize| FrozenLinear {
                    weight: &w[i],
                    bias: Some(&bias[i]),
                };
                let projections = [
                    Projection::<crate::CandleOps> {
                        linear: linear(0),
                        lora: Some(LoraTerm {
                            a: aq.as_tensor().clone(),
                            b: bq.as_tensor().clone(),
                            scale: 2.0,
                            mask: Some(lora_mask.clone()),
                        }),
                    },
                    Projection {
                        linear: linear(1),
                        lora: None,
                    },
                    Projection {
                        linear: linear(2),
                        lora: Some(LoraTerm {
                            a: av.as_tensor().clone(),
                            b: bv.as_tensor().clone(),
                            scale: 0.5,
                            mask: None,
                        }),
                    },
                ];
                let geometry = AttentionGeometry {
                    heads,
                    mask: Mask::Padding(&padding),
                    scale: 0.5,
                    attention_dropout,
                    hidden_dropout,
                };
                let norm = FrozenNorm {
                    gamma: &gamma,
                    beta: &beta,
                    eps: 1e-12,
                };
                let y = if fused {
                    attention_sublayer(&ops, x.as_tensor(), projections, geometry, linear(3), norm)
                } else {
                    compose_attention_sublayer(&ops, x.as_tensor(), projections, geometry, linear(3), norm)
                };
                let y = y.unwrap();
                let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let g: Vec<Tensor> = [&x, &aq, &bq, &av, &bv]
                    .iter()
                    .map(|v| grads.get(v).unwrap().clone())
                    .collect();
                (y, g)
            };
            let ((yf, gf), (yc, gc)) = (run(true), run(false));
            close(&yf, &yc, 1e-5);
            for (a, b) in gf.iter().zip(&gc) {
                close(a, b, 1e-4);
            }
        }
    }

    #[test]
    fn mismatched_sizes_are_an_error_not_a_panic() {
        let x = var(&[4, 8], 1);
        let (w1, w2) = (frozen(&[16, 8], 2), frozen(&[8, 12], 3));
        let (gamma, beta) = (frozen(&[8], 4), frozen(&[8], 5));
        let err = feed_forward(x.as_tensor(), (&w1, None), (&w2, None), (&gamma, &beta, 1e-5), None).unwrap_err();
        assert!(
            err.to_string().contains("feed-forward of [16, 8] then [8, 12]"),
            "{err}"
        );
    }
}
