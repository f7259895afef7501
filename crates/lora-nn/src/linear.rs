//! Linear layers: a frozen base that may carry a LoRA adapter, with PEFT's
//! semantics `y = x W^T + b + scale * dropout(x) A^T B^T`, or a trained one.

use lora_core::init::{SeededRng, kaiming_uniform};
use lora_core::{LoraSpec, ParamInfo, Result};

use crate::dropout::MaskSource;
use crate::ops::{FrozenLinear, LoraTerm, Projection, TensorOps, lora_update};
use crate::params::ParamStore;

/// The trainable half of a LoRA layer.
#[derive(Clone)]
pub struct LoraWeights<O: TensorOps> {
    /// `[r, in]`, Kaiming-uniform at start.
    pub a: O::Leaf,
    /// `[out, r]`, zero at start, so the adapted layer starts equal to the base.
    pub b: O::Leaf,
    pub scale: f64,
    pub dropout: f32,
}

impl<O: TensorOps> LoraWeights<O> {
    /// Draws `A` from `rng` and registers `A` and `B` under `{key}.lora_A.weight`
    /// and `{key}.lora_B.weight`, saved with `file_shapes` (PEFT's shapes).
    pub fn register(
        ops: &O,
        store: &mut ParamStore<O>,
        key: &str,
        lora: &LoraSpec,
        (inp, out): (usize, usize),
        file_shapes: [Vec<usize>; 2],
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let r = lora.r;
        let [sa, sb] = file_shapes;
        let a_info = ParamInfo::new(format!("{key}.lora_A.weight"), sa, true).with_compute_shape(vec![r, inp]);
        let b_info = ParamInfo::new(format!("{key}.lora_B.weight"), sb, true).with_compute_shape(vec![out, r]);
        let a = store.add(ops, a_info, kaiming_uniform(inp, r * inp, rng))?;
        let b = store.add(ops, b_info, vec![0.0; out * r])?;
        Ok(Self {
            a,
            b,
            scale: lora.scale(),
            dropout: lora.dropout,
        })
    }
}

impl<O: TensorOps> LoraWeights<O> {
    /// `base + scale * dropout(x) A^T B^T`, for `x [rows, in]`.
    pub fn add_update(&self, ops: &O, base: &O::T, x: &O::T, masks: Option<&mut MaskSource>) -> Result<O::T> {
        let t = self.term(ops, x, masks);
        lora_update(ops, base, x, (&t.a, &t.b), t.scale, t.mask)
    }

    /// This update over `x` as an operation takes it: the factors in use for
    /// this pass, and the dropout mask over `x`, drawn when training with `p > 0`.
    fn term(&self, ops: &O, x: &O::T, masks: Option<&mut MaskSource>) -> LoraTerm<O::T> {
        LoraTerm {
            a: ops.use_leaf(&self.a),
            b: ops.use_leaf(&self.b),
            scale: self.scale,
            mask: masks.and_then(|src| src.values(ops.dims(x).iter().product(), self.dropout)),
        }
    }

    /// `x W^T + b` plus this update, as one operation where the backend fuses them.
    fn forward(
        &self,
        ops: &O,
        x: &O::T,
        (weight, bias): (&O::W, Option<&O::W>),
        masks: Option<&mut MaskSource>,
    ) -> Result<O::T> {
        let t = self.term(ops, x, masks);
        ops.lora_linear(x, weight, bias, &t.a, &t.b, t.scale, t.mask)
    }

    /// `scale * B A`, shaped like the base weight `[out, in]`.
    pub fn delta(&self, ops: &O) -> Result<O::T> {
        ops.scale(&ops.matmul(&ops.use_leaf(&self.b), &ops.use_leaf(&self.a))?, self.scale)
    }
}

#[derive(Clone)]
pub struct LoraLinear<O: TensorOps> {
    /// `[out, in]`, from the base model, never written.
    weight: O::W,
    bias: Option<O::W>,
    lora: Option<LoraWeights<O>>,
    /// `W + scale * B A` while merged; the base weight itself is kept untouched.
    merged: Option<O::W>,
}

impl<O: TensorOps> LoraLinear<O> {
    pub fn new(weight: O::W, bias: Option<O::W>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            merged: None,
        }
    }

    pub fn with_lora(mut self, lora: LoraWeights<O>) -> Self {
        self.lora = Some(lora);
        self
    }

    pub fn lora(&self) -> Option<&LoraWeights<O>> {
        self.lora.as_ref()
    }

    pub fn weight(&self) -> &O::W {
        &self.weight
    }

    /// `[out, in]` of the base weight.
    pub fn dims(&self, ops: &O) -> (usize, usize) {
        let d = ops.weight_dims(&self.weight);
        (d[0], d[1])
    }

    /// Base weights and bias, in numbers.
    pub fn base_numel(&self, ops: &O) -> usize {
        let n = |w: &O::W| ops.weight_dims(w).iter().product::<usize>();
        n(&self.weight) + self.bias.as_ref().map_or(0, n)
    }

    /// `x` is `[rows, in]`; with `masks`, the adapter's input gets an inverted-dropout mask.
    pub fn forward(&self, ops: &O, x: &O::T, masks: Option<&mut MaskSource>) -> Result<O::T> {
        if let Some(merged) = &self.merged {
            return ops.frozen_linear(x, merged, self.bias.as_ref());
        }
        match &self.lora {
            Some(lora) => lora.forward(ops, x, (&self.weight, self.bias.as_ref()), masks),
            None => ops.frozen_linear(x, &self.weight, self.bias.as_ref()),
        }
    }

    /// The weight and bias of this layer as a plain frozen linear: `None` while
    /// an unmerged LoRA update takes part in its forward pass.
    pub fn frozen(&self) -> Option<FrozenLinear<'_, O::W>> {
        let weight = match (&self.merged, &self.lora) {
            (Some(merged), _) => merged,
            (None, None) => &self.weight,
            (None, Some(_)) => return None,
        };
        Some(FrozenLinear {
            weight,
            bias: self.bias.as_ref(),
        })
    }

    /// This layer as a fused operation's input projection of `x`, its LoRA
    /// dropout mask drawn from `masks` as [`Self::forward`] would draw it.
    pub fn projection(&self, ops: &O, x: &O::T, masks: Option<&mut MaskSource>) -> Projection<'_, O> {
        if let Some(linear) = self.frozen() {
            return Projection { linear, lora: None };
        }
        let lora = self.lora.as_ref().map(|l| l.term(ops, x, masks));
        Projection {
            linear: FrozenLinear {
                weight: &self.weight,
                bias: self.bias.as_ref(),
            },
            lora,
        }
    }

    /// `scale * B A`, shaped like the base weight.
    pub fn delta(&self, ops: &O) -> Result<Option<O::T>> {
        self.lora.as_ref().map(|l| l.delta(ops)).transpose()
    }

    pub fn merge(&mut self, ops: &O) -> Result<()> {
        if self.merged.is_none()
            && let Some(delta) = self.delta(ops)?
        {
            self.merged = Some(ops.weight_add(&self.weight, &delta)?);
        }
        Ok(())
    }

    pub fn unmerge(&mut self) {
        self.merged = None;
    }
}

/// A linear layer whose weight `[out, in]` and bias are trained (pretraining).
#[derive(Clone)]
pub struct TrainedLinear<O: TensorOps> {
    pub w: O::Leaf,
    pub b: O::Leaf,
}

/// A layer of a model that may be frozen (with LoRA) or trained in full.
#[derive(Clone)]
pub enum Linear<O: TensorOps> {
    Frozen(LoraLinear<O>),
    Trained(TrainedLinear<O>),
}

impl<O: TensorOps> Linear<O> {
    pub fn forward(&self, ops: &O, x: &O::T, masks: Option<&mut MaskSource>) -> Result<O::T> {
        match self {
            Linear::Frozen(l) => l.forward(ops, x, masks),
            Linear::Trained(t) => ops.linear(x, &ops.use_leaf(&t.w), &ops.use_leaf(&t.b)),
        }
    }

    pub fn frozen_mut(&mut self) -> Option<&mut LoraLinear<O>> {
        match self {
            Linear::Frozen(l) => Some(l),
            Linear::Trained(_) => None,
        }
    }
}

/// A layer norm with a frozen affine, or with a trained `gamma` and `beta`.
#[derive(Clone)]
pub enum Norm<O: TensorOps> {
    Frozen { gamma: O::W, beta: O::W, eps: f64 },
    Trained { gamma: O::Leaf, beta: O::Leaf, eps: f64 },
}

impl<O: TensorOps> Norm<O> {
    pub fn forward(&self, ops: &O, x: &O::T) -> Result<O::T> {
        match self {
            Norm::Frozen { gamma, beta, eps } => ops.layer_norm(x, gamma, beta, *eps),
            Norm::Trained { gamma, beta, eps } => {
                ops.layer_norm_trained(x, &ops.use_leaf(gamma), &ops.use_leaf(beta), *eps)
            }
        }
    }
}
