//! The tensor operations the models are written against. A backend implements
//! them once, with its fused kernels where it has them; the coarse operations
//! (attention, norms, cross-entropy, frozen linears) keep those kernels, and
//! the rest have default compositions.
//!
//! Tensors carry their shape at run time (`&[usize]`), so that one trait
//! covers backends whose tensors are typed by rank.

use lora_core::adapter::DType;
use lora_core::init::CounterMask;
use lora_core::task::Targets;
use lora_core::{Error, Result};

pub use crate::attention_kernel::Heads;
use crate::gguf::QuantView;
use crate::weights::WeightView;

/// Which keys each query may attend to.
#[derive(Debug, Clone, Copy)]
pub enum Mask<'a> {
    /// Every key.
    None,
    /// `[batch * keys]`, 1 for a real token and 0 for padding (right-padded batches).
    Padding(&'a [u32]),
    /// Key `j` for query `i` when `j <= i` (and, with padding, when the key is real).
    Causal,
}

/// A frozen linear layer's weight `[out, in]` and bias, as a fused operation takes them.
pub struct FrozenLinear<'a, W> {
    pub weight: &'a W,
    pub bias: Option<&'a W>,
}

// By hand: derived, they would require `W: Copy`; these hold references only.
impl<W> Clone for FrozenLinear<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W> Copy for FrozenLinear<'_, W> {}

/// One of the attention's input projections as a fused operation takes it:
/// a frozen linear and, when it carries one, its LoRA update.
pub struct Projection<'a, O: TensorOps> {
    pub linear: FrozenLinear<'a, O::W>,
    pub lora: Option<LoraTerm<O::T>>,
}

/// A LoRA update as an operation takes it: `A [r, in]`, `B [out, r]`, PEFT's
/// scale, and the dropout mask over the input (training, `p > 0`).
pub struct LoraTerm<T> {
    pub a: T,
    pub b: T,
    pub scale: f64,
    pub mask: Option<Vec<f32>>,
}

/// The attention sublayer's geometry, mask and dropouts, as [`TensorOps::attention_sublayer`] takes them.
#[derive(Clone, Copy)]
pub struct AttentionGeometry<'a> {
    pub heads: Heads,
    pub mask: Mask<'a>,
    pub scale: f64,
    /// On the probabilities (training).
    pub attention_dropout: Option<CounterMask>,
    /// On the output projection's result, before the residual sum (training).
    pub hidden_dropout: Option<CounterMask>,
}

/// A layer norm's frozen affine and epsilon.
pub struct FrozenNorm<'a, W> {
    pub gamma: &'a W,
    pub beta: &'a W,
    pub eps: f64,
}

impl<W> Clone for FrozenNorm<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W> Copy for FrozenNorm<'_, W> {}

pub trait TensorOps: Clone + Send + Sync + 'static {
    /// An activation, or a parameter used inside a pass.
    type T: Clone + Send + Sync;
    /// A frozen weight (never a variable, so never given a gradient).
    type W: Clone + Send + Sync;
    /// A trainable parameter: keeps its value between passes.
    type Leaf: Clone + Send + Sync;
    /// The gradients of one backward pass.
    type Grads;
    /// A frozen matrix stored in quantized blocks: kept in its blocks by a
    /// backend with a quantized matmul, decoded at load by one without.
    type Q: Clone + Send + Sync;

    /// The backend's name (`candle`, `burn`), for messages and reports.
    fn backend(&self) -> &'static str;

    // ----- host data in and out
    fn tensor(&self, values: Vec<f32>, shape: &[usize]) -> Result<Self::T>;
    fn to_host(&self, x: &Self::T) -> Result<Vec<f32>>;
    fn dims(&self, x: &Self::T) -> Vec<usize>;

    // ----- frozen weights
    /// A frozen weight from its stored view (decoded or kept in its type, as the backend computes).
    fn weight(&self, view: WeightView<'_>) -> Result<Self::W>;
    fn weight_from_host(&self, values: Vec<f32>, shape: &[usize]) -> Result<Self::W>;
    fn weight_to_host(&self, w: &Self::W) -> Result<Vec<f32>>;
    fn weight_dims(&self, w: &Self::W) -> Vec<usize>;
    /// A frozen weight used as a tensor of the pass (a constant: no gradient flows into it).
    fn constant(&self, w: &Self::W) -> Result<Self::T>;
    /// `w + delta` as a new frozen weight (merging an adapter); `w` is untouched.
    fn weight_add(&self, w: &Self::W, delta: &Self::T) -> Result<Self::W>;

    // ----- quantized frozen matrices
    fn quantized(&self, view: QuantView<'_>) -> Result<Self::Q>;
    /// `[out, in]`.
    fn quantized_dims(&self, q: &Self::Q) -> Vec<usize>;
    /// `x Q^T` for `x [.., in]`: the backward pass yields the input's gradient
    /// only, decoding the matrix for that product and dropping it after.
    fn quantized_linear(&self, x: &Self::T, q: &Self::Q) -> Result<Self::T>;
    /// The matrix decoded into a frozen weight (to merge an adapter into it).
    fn dequantize(&self, q: &Self::Q) -> Result<Self::W>;

    // ----- trainable parameters and autodiff
    fn leaf(&self, values: Vec<f32>, shape: &[usize]) -> Result<Self::Leaf>;
    fn leaf_to_host(&self, leaf: &Self::Leaf) -> Result<Vec<f32>>;
    /// Replaces a parameter's values (same number of values, its own shape).
    fn set_leaf(&self, leaf: &Self::Leaf, values: &[f32]) -> Result<()>;
    /// Starts a training pass over `leaves`: from here on their uses are tracked.
    fn track(&self, _leaves: &[Self::Leaf]) {}
    /// These operations for a pass without gradients (evaluation, `predict`): a
    /// backend whose parameters are always tracked returns a copy that uses them
    /// as constants, so that the pass builds no graph and keeps no intermediates.
    fn inference(&self) -> Self {
        self.clone()
    }
    /// The parameter as a tensor of the current pass.
    fn use_leaf(&self, leaf: &Self::Leaf) -> Self::T;
    fn backward(&self, loss: &Self::T) -> Result<Self::Grads>;
    /// The gradient of a parameter after [`Self::backward`]; `None` when it took no part.
    fn grad(&self, grads: &Self::Grads, leaf: &Self::Leaf) -> Result<Option<Vec<f32>>>;

    // ----- precision (optional)
    /// The types this backend can keep frozen base weights in.
    fn dtypes(&self) -> &'static [DType] {
        &[DType::F32]
    }
    /// These operations with frozen weights kept in `dtype` (trainable parameters,
    /// activations and gradients stay f32).
    fn with_dtype(&self, dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => Ok(self.clone()),
            other => Err(Error::Unsupported {
                backend: self.backend(),
                feature: match other {
                    DType::Bf16 => "bf16 base weights",
                    _ => "f16 base weights",
                },
            }),
        }
    }

    // ----- gradient checkpointing (optional; `checkpointing` says whether the four below work)
    /// Whether the backend implements the operations of gradient checkpointing.
    fn checkpointing(&self) -> bool {
        false
    }
    /// `x` cut from the graph that made it: what a checkpoint keeps between segments.
    fn detach(&self, _x: &Self::T) -> Result<Self::T> {
        Err(no_checkpointing(self))
    }
    /// A copy of `x` whose gradient [`Self::input_grad`] reads after a backward pass:
    /// the input of a recomputed segment.
    fn input_leaf(&self, _x: &Self::T) -> Result<Self::T> {
        Err(no_checkpointing(self))
    }
    /// Backward from a tensor `y` of any shape, seeded with `dy` (the loss's gradient
    /// with respect to `y`); `None` when `y` depends on nothing tracked.
    fn backward_from(&self, _y: &Self::T, _dy: &Self::T) -> Result<Option<Self::Grads>> {
        Err(no_checkpointing(self))
    }
    /// The gradient of an [`Self::input_leaf`] after a backward pass.
    fn input_grad(&self, _grads: &Self::Grads, _x: &Self::T) -> Result<Option<Self::T>> {
        Err(no_checkpointing(self))
    }

    // ----- shapes
    fn reshape(&self, x: &Self::T, shape: &[usize]) -> Result<Self::T>;
    /// Swaps two dimensions (a copy or a strided view, as the backend's operations accept).
    fn transpose(&self, x: &Self::T, a: usize, b: usize) -> Result<Self::T>;
    fn narrow(&self, x: &Self::T, dim: usize, start: usize, len: usize) -> Result<Self::T>;
    fn cat(&self, xs: &[&Self::T], dim: usize) -> Result<Self::T>;
    /// `x` repeated to `shape` along its dimensions of size 1.
    fn broadcast_as(&self, x: &Self::T, shape: &[usize]) -> Result<Self::T>;

    // ----- arithmetic
    fn add(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    /// `a + b` with `b` broadcast over `a`'s leading dimensions.
    fn broadcast_add(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    fn mul(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    fn scale(&self, x: &Self::T, s: f64) -> Result<Self::T>;
    /// Batched matrix product over the last two dimensions.
    fn matmul(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    fn tanh(&self, x: &Self::T) -> Result<Self::T>;
    /// Exact (erf) GELU.
    fn gelu(&self, x: &Self::T) -> Result<Self::T>;
    /// `x * sigmoid(x)`.
    fn silu(&self, x: &Self::T) -> Result<Self::T>;
    fn softmax_last_dim(&self, x: &Self::T) -> Result<Self::T>;
    /// Inverted dropout of `x` with a counter-based mask over its values in
    /// row-major order (the gradient goes through the same mask). The default
    /// draws the mask on the host in one parallel pass and multiplies.
    fn dropout(&self, x: &Self::T, mask: CounterMask) -> Result<Self::T> {
        let dims = self.dims(x);
        self.mul(x, &self.tensor(mask_values(mask, dims.iter().product()), &dims)?)
    }

    // ----- layers
    /// `x W^T + b` for a frozen `W [out, in]`: the backward pass yields the input's gradient only.
    fn frozen_linear(&self, x: &Self::T, w: &Self::W, b: Option<&Self::W>) -> Result<Self::T>;
    /// `x W^T + b + scale * (x * mask) A^T B^T`: a frozen linear with its LoRA
    /// update (PEFT's), for `x [rows, in]`, trained `a [r, in]` and `b [out, r]`
    /// and an inverted-dropout `mask` over `x`'s values. The gradients are
    /// `x`'s, `a`'s and `b`'s. A backend may fuse it into one operation.
    #[allow(clippy::too_many_arguments)]
    fn lora_linear(
        &self,
        x: &Self::T,
        w: &Self::W,
        bias: Option<&Self::W>,
        a: &Self::T,
        b: &Self::T,
        scale: f64,
        mask: Option<Vec<f32>>,
    ) -> Result<Self::T> {
        let base = self.frozen_linear(x, w, bias)?;
        lora_update(self, &base, x, (a, b), scale, mask)
    }
    /// `x W^T + b` for a trained `W [out, in]` and `b`.
    fn linear(&self, x: &Self::T, w: &Self::T, b: &Self::T) -> Result<Self::T>;
    /// Rows `ids` of a frozen table `[vocab, dim]`: `[ids.len(), dim]`.
    fn embedding(&self, table: &Self::W, ids: &[u32]) -> Result<Self::T>;
    /// Layer norm over the last dimension with a frozen affine.
    fn layer_norm(&self, x: &Self::T, gamma: &Self::W, beta: &Self::W, eps: f64) -> Result<Self::T>;
    /// `layer_norm(x + residual)`: a backend may fuse the sum into the norm.
    fn add_layer_norm(
        &self,
        x: &Self::T,
        residual: &Self::T,
        gamma: &Self::W,
        beta: &Self::W,
        eps: f64,
    ) -> Result<Self::T> {
        self.layer_norm(&self.add(x, residual)?, gamma, beta, eps)
    }
    /// `layer_norm(dropout(x W^T + b) + residual)` with `W`, `b` and the norm
    /// frozen: BERT's attention output and its norm. A backend may fuse it
    /// into one operation (`sublayer::LinearAddNorm` on the host).
    fn linear_add_norm(
        &self,
        x: &Self::T,
        residual: &Self::T,
        linear: FrozenLinear<'_, Self::W>,
        norm: FrozenNorm<'_, Self::W>,
        dropout: Option<CounterMask>,
    ) -> Result<Self::T> {
        let y = self.frozen_linear(x, linear.weight, linear.bias)?;
        let y = match dropout {
            Some(mask) => self.dropout(&y, mask)?,
            None => y,
        };
        self.add_layer_norm(&y, residual, norm.gamma, norm.beta, norm.eps)
    }
    /// BERT's attention sublayer: `layer_norm(dropout(attention(q, k, v) Wo^T +
    /// bo) + x)` with `q`, `k`, `v` the projections of `x` (each frozen, or
    /// with its LoRA update) and the output projection and norm frozen. A
    /// backend may fuse it into one operation; the default composes
    /// [`Self::lora_linear`] / [`Self::frozen_linear`], [`Self::attention_rows`]
    /// and [`Self::linear_add_norm`] ([`compose_attention_sublayer`]).
    fn attention_sublayer(
        &self,
        x: &Self::T,
        projections: [Projection<'_, Self>; 3],
        geometry: AttentionGeometry<'_>,
        output: FrozenLinear<'_, Self::W>,
        norm: FrozenNorm<'_, Self::W>,
    ) -> Result<Self::T> {
        compose_attention_sublayer(self, x, projections, geometry, output, norm)
    }
    /// `layer_norm(dropout(GELU(x W1^T + b1) W2^T + b2) + x)` with both linears
    /// and the norm frozen: BERT's feed-forward sublayer. A backend may fuse it
    /// into one operation (`sublayer::FeedForward` on the host).
    fn feed_forward(
        &self,
        x: &Self::T,
        up: FrozenLinear<'_, Self::W>,
        down: FrozenLinear<'_, Self::W>,
        norm: FrozenNorm<'_, Self::W>,
        dropout: Option<CounterMask>,
    ) -> Result<Self::T> {
        let hidden = self.gelu(&self.frozen_linear(x, up.weight, up.bias)?)?;
        self.linear_add_norm(&hidden, x, down, norm, dropout)
    }
    /// Layer norm over the last dimension whose `gamma` and `beta` are trained.
    fn layer_norm_trained(&self, x: &Self::T, gamma: &Self::T, beta: &Self::T, eps: f64) -> Result<Self::T>;
    /// RMS norm over the last dimension with a frozen gain.
    fn rms_norm(&self, x: &Self::T, gain: &Self::W, eps: f64) -> Result<Self::T>;
    /// Rotate-half rotary embedding of `x [batch, heads, seq, head_dim]` at
    /// `positions`: one per seq index, shared by the batch, or one per token
    /// (`batch * seq`, for packed sequences whose positions restart).
    fn rope(&self, x: &Self::T, positions: &[u32], theta: f64) -> Result<Self::T> {
        let dims = self.dims(x);
        let (seq, d) = (dims[2], dims[3]);
        let rows = if positions.len() == seq { 1 } else { dims[0] };
        if positions.len() != rows * seq || d % 2 != 0 {
            return Err(Error::Other(format!(
                "rope: {} positions for {seq} tokens of head size {d} (even)",
                positions.len()
            )));
        }
        let half = d / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(seq * d), Vec::with_capacity(seq * d));
        for &p in positions {
            for i in 0..d {
                let freq = 1.0 / theta.powf((2 * (i % half)) as f64 / d as f64);
                let angle = p as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = if rows == 1 { vec![seq, d] } else { vec![rows, 1, seq, d] };
        let cos = self.tensor(cos, &table)?;
        let sin = self.tensor(sin, &table)?;
        let (x1, x2) = (self.narrow(x, 3, 0, half)?, self.narrow(x, 3, half, half)?);
        let rotated = self.cat(&[&self.scale(&x2, -1.0)?, &x1], 3)?;
        let a = self.mul(x, &self.broadcast_as(&cos, &dims)?)?;
        let b = self.mul(&rotated, &self.broadcast_as(&sin, &dims)?)?;
        self.add(&a, &b)
    }

    /// `softmax(q k^T * scale + mask) v` for `q [batch, heads, seq, d]` and
    /// `k`, `v [batch, kv_heads, keys, d]`; with fewer key/value heads than
    /// query heads (grouped-query attention) each is shared by a group.
    fn attention(&self, q: &Self::T, k: &Self::T, v: &Self::T, mask: Mask<'_>, scale: f64) -> Result<Self::T> {
        default_attention(self, q, k, v, mask, scale)
    }

    /// [`Self::attention`] on the projections as the linears give them: `q [batch *
    /// seq, heads * head_dim]` and `k`, `v [batch * keys, kv_heads * head_dim]`; the
    /// context comes back as `[batch * seq, heads * head_dim]`, ready for the output
    /// linear. With `dropout` (training), the probabilities are multiplied by the
    /// counter-based mask indexed as `[batch, heads, queries, keys]`. The default
    /// splits the heads and merges them again; a backend with a fused kernel reads
    /// them in place.
    #[allow(clippy::too_many_arguments)]
    fn attention_rows(
        &self,
        q: &Self::T,
        k: &Self::T,
        v: &Self::T,
        s: Heads,
        mask: Mask<'_>,
        scale: f64,
        dropout: Option<CounterMask>,
    ) -> Result<Self::T> {
        default_attention_rows(self, q, k, v, s, mask, scale, dropout)
    }

    /// Mean cross-entropy of `logits [rows, classes]` against class indices or
    /// distributions; for tokens, the weighted mean over positions.
    fn cross_entropy(&self, logits: &Self::T, targets: Targets<'_>) -> Result<Self::T>;
}

/// `base + scale * (x * mask) A^T B^T` composed of the trait's operations.
pub fn lora_update<O: TensorOps>(
    ops: &O,
    base: &O::T,
    x: &O::T,
    (a, b): (&O::T, &O::T),
    scale: f64,
    mask: Option<Vec<f32>>,
) -> Result<O::T> {
    let input = match mask {
        Some(m) => ops.mul(x, &ops.tensor(m, &ops.dims(x))?)?,
        None => x.clone(),
    };
    let update = ops.matmul(&ops.matmul(&input, &ops.transpose(a, 0, 1)?)?, &ops.transpose(b, 0, 1)?)?;
    ops.add(base, &ops.scale(&update, scale)?)
}

fn no_checkpointing<O: TensorOps>(ops: &O) -> Error {
    Error::Unsupported {
        backend: ops.backend(),
        feature: "gradient checkpointing",
    }
}

/// The factors of a counter-based mask for `len` values, drawn in one parallel pass.
pub fn mask_values(mask: CounterMask, len: usize) -> Vec<f32> {
    use rayon::prelude::*;
    // Even chunk lengths keep each pair of values in one chunk (one draw per pair).
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0f32; len];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, c)| mask.fill((i * CHUNK) as u64, c));
    out
}

/// [`TensorOps::attention_rows`] by splitting the heads into `[batch, heads, seq,
/// head_dim]` copies for [`TensorOps::attention`] and merging the context back
/// (composed from the other operations when there is dropout).
#[allow(clippy::too_many_arguments)]
pub fn default_attention_rows<O: TensorOps>(
    ops: &O,
    q: &O::T,
    k: &O::T,
    v: &O::T,
    s: Heads,
    mask: Mask<'_>,
    scale: f64,
    dropout: Option<CounterMask>,
) -> Result<O::T> {
    let d = s.head_dim;
    let split = |x: &O::T, rows: usize, heads: usize| ops.transpose(&ops.reshape(x, &[s.batch, rows, heads, d])?, 1, 2);
    let q = split(q, s.queries, s.heads)?;
    let k = split(k, s.keys, s.kv_heads)?;
    let v = split(v, s.keys, s.kv_heads)?;
    let context = match dropout {
        None => ops.attention(&q, &k, &v, mask, scale)?,
        Some(_) => composed_attention(ops, &q, &k, &v, mask, scale, dropout)?,
    };
    ops.reshape(&ops.transpose(&context, 1, 2)?, &[s.batch * s.queries, s.heads * d])
}

/// [`TensorOps::attention_sublayer`] composed from the other operations (a
/// backend that fuses it falls back to this for the cases it does not).
pub fn compose_attention_sublayer<O: TensorOps>(
    ops: &O,
    x: &O::T,
    projections: [Projection<'_, O>; 3],
    g: AttentionGeometry<'_>,
    output: FrozenLinear<'_, O::W>,
    norm: FrozenNorm<'_, O::W>,
) -> Result<O::T> {
    let project = |p: Projection<'_, O>| match p.lora {
        Some(l) => ops.lora_linear(x, p.linear.weight, p.linear.bias, &l.a, &l.b, l.scale, l.mask),
        None => ops.frozen_linear(x, p.linear.weight, p.linear.bias),
    };
    let [q, k, v] = projections;
    let (q, k, v) = (project(q)?, project(k)?, project(v)?);
    let context = ops.attention_rows(&q, &k, &v, g.heads, g.mask, g.scale, g.attention_dropout)?;
    ops.linear_add_norm(&context, x, output, norm, g.hidden_dropout)
}

/// [`TensorOps::attention`] composed from the other operations (a backend
/// that overrides it can fall back to this for the cases it does not fuse).
pub fn default_attention<O: TensorOps>(
    ops: &O,
    q: &O::T,
    k: &O::T,
    v: &O::T,
    mask: Mask<'_>,
    scale: f64,
) -> Result<O::T> {
    composed_attention(ops, q, k, v, mask, scale, None)
}

/// [`default_attention`] with the probabilities `[batch, heads, seq, keys]` dropped out.
fn composed_attention<O: TensorOps>(
    ops: &O,
    q: &O::T,
    k: &O::T,
    v: &O::T,
    mask: Mask<'_>,
    scale: f64,
    dropout: Option<CounterMask>,
) -> Result<O::T> {
    let (qd, kd) = (ops.dims(q), ops.dims(k));
    let (b, heads, seq, keys) = (qd[0], qd[1], qd[2], kd[2]);
    let (k, v) = if kd[1] == heads {
        (k.clone(), v.clone())
    } else {
        let group = heads / kd[1];
        let repeat = |x: &O::T| -> Result<O::T> {
            let x = ops.reshape(x, &[b, kd[1], 1, keys, kd[3]])?;
            let x = ops.broadcast_as(&x, &[b, kd[1], group, keys, kd[3]])?;
            ops.reshape(&x, &[b, heads, keys, kd[3]])
        };
        (repeat(k)?, repeat(v)?)
    };
    let scores = ops.scale(&ops.matmul(q, &ops.transpose(&k, 2, 3)?)?, scale)?;
    let scores = match mask {
        Mask::None => scores,
        Mask::Padding(m) => {
            let bias: Vec<f32> = m.iter().map(|&m| if m != 0 { 0.0 } else { -1e9 }).collect();
            ops.broadcast_add(&scores, &ops.tensor(bias, &[b, 1, 1, keys])?)?
        }
        Mask::Causal => {
            let bias: Vec<f32> = (0..seq)
                .flat_map(|i| (0..keys).map(move |j| if j + seq <= i + keys { 0.0 } else { -1e9 }))
                .collect();
            ops.broadcast_add(&scores, &ops.tensor(bias, &[seq, keys])?)?
        }
    };
    let probs = ops.softmax_last_dim(&scores)?;
    let probs = match dropout {
        Some(m) => ops.dropout(&probs, m)?,
        None => probs,
    };
    ops.matmul(&probs, &v)
}
