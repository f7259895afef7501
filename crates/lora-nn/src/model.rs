//! One generic model, [`Model`], implements the backend-adapter trait for
//! every architecture and backend: the parameter store, training and
//! evaluation steps, reading and writing parameters, merge and unmerge. An
//! [`Architecture`] supplies only its forward pass, its checks and its names.

use std::path::Path;

use lora_core::adapter::{AdapterModel, ModelSummary, ParamInfo, PeftInfo, StepOutput};
use lora_core::{Batch, Error, HostTensor, Result};

use crate::dropout::MaskSource;
use crate::linear::LoraLinear;
use crate::ops::TensorOps;
use crate::params::ParamStore;

/// The rows a block computes: every token's, or only each sequence's first.
/// A classifier that reads the last block's first token alone (BERT's pooler,
/// the ViT's class token) has no use for that block's other rows: its queries,
/// output projection, norms and feed-forward run on `batch` rows instead of
/// `batch x seq`, while its keys and values still see every token. A
/// transformer block's rows depend on one another only through the keys and
/// values, so the first tokens' values are the full block's. At 32 x 128 on
/// MiniLM-L6 that is a seventh of a training step's products.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Rows {
    All,
    First,
}

impl Rows {
    /// The rows block `i` of `blocks` computes when the last one computes `last`.
    pub(crate) fn of_block(i: usize, blocks: usize, last: Rows) -> Rows {
        if i + 1 == blocks { last } else { Rows::All }
    }

    /// Each sequence's first token of `x [batch * tokens, hidden]`: `[batch, hidden]`.
    pub(crate) fn first_tokens<O: TensorOps>(ops: &O, x: &O::T, [batch, tokens, hidden]: [usize; 3]) -> Result<O::T> {
        ops.reshape(
            &ops.narrow(&ops.reshape(x, &[batch, tokens, hidden])?, 1, 0, 1)?,
            &[batch, hidden],
        )
    }
}

pub trait Architecture<O: TensorOps>: Send + Sync + 'static {
    /// Checks a batch before any work: its kind, shapes, ids and labels.
    fn check_batch(&self, batch: &Batch, num_labels: usize) -> Result<()>;

    /// Logits `[batch, num_labels]`; with `masks`, in training mode (dropout).
    fn logits(&self, ops: &O, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T>;

    /// The last hidden states `[batch, tokens, hidden]` in evaluation mode.
    fn hidden_states(&self, ops: &O, batch: &Batch) -> Result<HostTensor>;

    /// Every frozen linear that may carry an adapter, for merge and unmerge.
    fn for_each_lora(&mut self, f: &mut dyn FnMut(&mut LoraLinear<O>) -> Result<()>) -> Result<()>;

    /// Facts for reports, given the trainable count.
    fn summary(&self, ops: &O, trainable: usize, num_labels: usize) -> ModelSummary;

    fn peft_info(&self) -> PeftInfo;

    /// Writes the whole model as a base for later runs (a model that trains its base).
    fn save_base(&self, _ops: &O, _store: &ParamStore<O>, _num_labels: usize, _dir: &Path) -> Result<bool> {
        Ok(false)
    }

    /// The dimensions the memory planner needs, given the trainable count
    /// (`data_bytes` is left 0: the data stage knows it).
    fn memory_shape(&self, _ops: &O, _trainable: usize) -> Option<lora_core::memory::ModelShape> {
        None
    }

    // ----- the forward pass as a chain, for gradient checkpointing:
    // `logits = head(block(n - 1, ... block(0, embed(batch))))`. An architecture
    // that keeps the defaults (no blocks) cannot be checkpointed.

    /// The blocks that a checkpointed pass recomputes one at a time.
    fn blocks(&self) -> usize {
        0
    }

    /// The input of the first block.
    fn embed(&self, _ops: &O, _batch: &Batch, _masks: Option<&mut MaskSource>) -> Result<O::T> {
        Err(no_chain())
    }

    /// Block `i` applied to `x`.
    fn block(&self, _ops: &O, _i: usize, _x: &O::T, _batch: &Batch, _masks: Option<&mut MaskSource>) -> Result<O::T> {
        Err(no_chain())
    }

    /// The logits from the last block's output.
    fn head(&self, _ops: &O, _x: &O::T, _batch: &Batch, _masks: Option<&mut MaskSource>) -> Result<O::T> {
        Err(no_chain())
    }
}

fn no_chain() -> Error {
    Error::Other("this architecture has no blocks to checkpoint".into())
}

pub struct Model<O: TensorOps, A: Architecture<O>> {
    pub ops: O,
    pub arch: A,
    pub store: ParamStore<O>,
    pub num_labels: usize,
    /// Recompute each block in the backward pass ([`crate::checkpoint`]).
    pub checkpointing: bool,
}

impl<O: TensorOps, A: Architecture<O>> Model<O, A> {
    pub fn new(ops: O, arch: A, store: ParamStore<O>, num_labels: usize) -> Self {
        Self {
            ops,
            arch,
            store,
            num_labels,
            checkpointing: false,
        }
    }
}

impl<O: TensorOps, A: Architecture<O>> AdapterModel for Model<O, A> {
    fn backend(&self) -> &'static str {
        self.ops.backend()
    }

    fn summary(&self) -> ModelSummary {
        self.arch.summary(&self.ops, self.store.numel(), self.num_labels)
    }

    fn peft_info(&self) -> PeftInfo {
        self.arch.peft_info()
    }

    fn params(&self) -> &[ParamInfo] {
        self.store.infos()
    }

    fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        self.store.read(&self.ops)
    }

    fn write_params(&mut self, values: &[Vec<f32>]) -> Result<()> {
        self.store.write(&self.ops, values)
    }

    fn train_step(&mut self, batch: &Batch, dropout_seed: u64) -> Result<StepOutput> {
        self.arch.check_batch(batch, self.num_labels)?;
        if self.checkpointing {
            return crate::checkpoint::train_step(
                &self.ops,
                &crate::checkpoint::ArchChain(&self.arch),
                &self.store,
                batch,
                dropout_seed,
            );
        }
        let ops = &self.ops;
        ops.track(self.store.leaves());
        let mut masks = MaskSource::new(dropout_seed);
        let logits = self.arch.logits(ops, batch, Some(&mut masks))?;
        let loss = ops.cross_entropy(&logits, batch.targets())?;
        let value = ops.to_host(&loss)?;
        let grads = ops.backward(&loss)?;
        Ok(StepOutput {
            loss: value
                .first()
                .copied()
                .ok_or_else(|| Error::Other("the loss is empty".into()))?,
            weight: batch.targets().weight(),
            grads: self.store.grads(ops, &grads)?,
        })
    }

    fn predict(&self, batch: &Batch) -> Result<HostTensor> {
        self.arch.check_batch(batch, self.num_labels)?;
        let ops = self.ops.inference();
        let logits = self.arch.logits(&ops, batch, None)?;
        Ok(HostTensor::new(
            vec![batch.len(), self.num_labels],
            self.ops.to_host(&logits)?,
        ))
    }

    fn hidden_states(&self, batch: &Batch) -> Result<HostTensor> {
        self.arch.check_batch(batch, self.num_labels)?;
        self.arch.hidden_states(&self.ops.inference(), batch)
    }

    fn memory_shape(&self) -> Option<lora_core::memory::ModelShape> {
        self.arch.memory_shape(&self.ops, self.store.numel())
    }

    fn merge(&mut self) -> Result<()> {
        let ops = &self.ops;
        self.arch.for_each_lora(&mut |l| l.merge(ops))
    }

    fn unmerge(&mut self) -> Result<()> {
        self.arch.for_each_lora(&mut |l| {
            l.unmerge();
            Ok(())
        })
    }

    fn save_base(&self, dir: &Path) -> Result<bool> {
        self.arch.save_base(&self.ops, &self.store, self.num_labels, dir)
    }
}

/// Checks class labels against the head (predict batches carry none).
pub fn check_labels(labels: &[u32], num_labels: usize) -> Result<()> {
    match labels.iter().find(|&&l| l as usize >= num_labels) {
        Some(bad) => Err(Error::Data(format!(
            "label {bad} is out of range for a head of {num_labels} classes"
        ))),
        None => Ok(()),
    }
}
