//! Gradient checkpointing, written once over [`TensorOps`]: a training step
//! that keeps only each block's input and recomputes the block in the
//! backward pass.
//!
//! The forward pass runs untracked (no leaf is tracked, and each block's
//! output is cut from its graph), keeping the input of every block and the
//! dropout stream at its start. The backward pass then goes through the chain
//! in reverse, one segment at a time: the head and the loss first, then each
//! block recomputed from its kept input (a fresh input leaf, the same dropout
//! masks) and differentiated from the gradient of its output, then the
//! embedding. The parameters' gradients of the segments add up on the host;
//! a parameter belongs to one segment in both models, so the sum only
//! collects them. Peak memory is the kept inputs plus one block's graph,
//! instead of every block's graph; the price is a second forward pass.

use lora_core::adapter::StepOutput;
use lora_core::{Batch, Error, Result};

use crate::dropout::MaskSource;
use crate::model::Architecture;
use crate::ops::TensorOps;
use crate::params::ParamStore;

/// A forward pass as a chain, `loss = loss(block(n - 1, ... block(0, embed(batch))))`:
/// what a checkpointed step recomputes one segment at a time.
pub trait Chain<O: TensorOps> {
    /// The blocks recomputed one at a time.
    fn blocks(&self) -> usize;
    /// The input of the first block.
    fn embed(&self, ops: &O, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T>;
    /// Block `i` applied to `x`.
    fn block(&self, ops: &O, i: usize, x: &O::T, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T>;
    /// The scalar loss from the last block's output.
    fn loss(&self, ops: &O, x: &O::T, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T>;
}

/// A classifier's chain: its head's logits against the batch's targets.
pub struct ArchChain<'a, A>(pub &'a A);

impl<O: TensorOps, A: Architecture<O>> Chain<O> for ArchChain<'_, A> {
    fn blocks(&self) -> usize {
        self.0.blocks()
    }

    fn embed(&self, ops: &O, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T> {
        self.0.embed(ops, batch, masks)
    }

    fn block(&self, ops: &O, i: usize, x: &O::T, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T> {
        self.0.block(ops, i, x, batch, masks)
    }

    fn loss(&self, ops: &O, x: &O::T, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T> {
        ops.cross_entropy(&self.0.head(ops, x, batch, masks)?, batch.targets())
    }
}

/// Adds the gradients of one backward pass to `total`.
fn collect<O: TensorOps>(ops: &O, store: &ParamStore<O>, grads: &O::Grads, total: &mut [f32]) -> Result<()> {
    for (t, g) in total.iter_mut().zip(store.grads(ops, grads)?) {
        *t += g;
    }
    Ok(())
}

pub fn train_step<O: TensorOps, C: Chain<O>>(
    ops: &O,
    arch: &C,
    store: &ParamStore<O>,
    batch: &Batch,
    dropout_seed: u64,
) -> Result<StepOutput> {
    let blocks = arch.blocks();
    if blocks == 0 || !ops.checkpointing() {
        return Err(Error::Unsupported {
            backend: ops.backend(),
            feature: "gradient checkpointing of this model",
        });
    }
    // Forward, untracked: the kept inputs and the dropout stream at each block.
    let mut masks = MaskSource::new(dropout_seed);
    let embed_masks = masks.clone();
    let mut x = ops.detach(&arch.embed(ops, batch, Some(&mut masks))?)?;
    let mut kept = Vec::with_capacity(blocks);
    for i in 0..blocks {
        let at = masks.clone();
        let y = ops.detach(&arch.block(ops, i, &x, batch, Some(&mut masks))?)?;
        kept.push((std::mem::replace(&mut x, y), at));
    }
    let mut total = vec![0.0; store.numel()];
    // The head and the loss.
    ops.track(store.leaves());
    let input = ops.input_leaf(&x)?;
    drop(x);
    let loss = arch.loss(ops, &input, batch, Some(&mut masks))?;
    let value = ops
        .to_host(&loss)?
        .first()
        .copied()
        .ok_or_else(|| Error::Other("the loss is empty".into()))?;
    let grads = ops.backward(&loss)?;
    collect(ops, store, &grads, &mut total)?;
    let mut dy = ops.input_grad(&grads, &input)?;
    drop((grads, loss, input));
    // Each block recomputed, last first.
    while let Some((x, mut at)) = kept.pop() {
        let Some(grad) = dy.take() else { break };
        ops.track(store.leaves());
        let input = ops.input_leaf(&x)?;
        drop(x);
        let y = arch.block(ops, kept.len(), &input, batch, Some(&mut at))?;
        if let Some(grads) = ops.backward_from(&y, &grad)? {
            collect(ops, store, &grads, &mut total)?;
            dy = ops.input_grad(&grads, &input)?;
        }
    }
    // The embedding, when it has parameters (a trained or adapted patch embedding).
    if let Some(grad) = dy {
        ops.track(store.leaves());
        let mut at = embed_masks;
        let y = arch.embed(ops, batch, Some(&mut at))?;
        if let Some(grads) = ops.backward_from(&y, &grad)? {
            collect(ops, store, &grads, &mut total)?;
        }
    }
    Ok(StepOutput {
        loss: value,
        weight: batch.targets().weight(),
        grads: total,
    })
}
