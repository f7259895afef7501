//! A tokenised split, and batching with dynamic padding.

use std::sync::Arc;

use lora_core::init;
use lora_core::stage::Dataset;
use lora_core::{Batch, Error, Result, TextBatch};
use rand::seq::SliceRandom;

use crate::augment::AugmentPipeline;

/// Pads `sequences` on the right to the longest of them, so that a batch of short
/// texts costs short-sequence compute instead of `max-length` compute.
pub fn collate(sequences: &[&[u32]], labels: Vec<u32>, pad_id: u32) -> TextBatch {
    let seq_len = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut input_ids = Vec::with_capacity(sequences.len() * seq_len);
    let mut attention_mask = Vec::with_capacity(sequences.len() * seq_len);
    for s in sequences {
        input_ids.extend_from_slice(s);
        input_ids.extend(std::iter::repeat_n(pad_id, seq_len - s.len()));
        attention_mask.extend(std::iter::repeat_n(1, s.len()));
        attention_mask.extend(std::iter::repeat_n(0, seq_len - s.len()));
    }
    TextBatch {
        batch_size: sequences.len(),
        seq_len,
        input_ids,
        attention_mask,
        labels,
    }
}

/// Token ids and a class per example, tokenised once when the data is prepared.
#[derive(Debug, Clone, PartialEq)]
pub struct TextDataset {
    ids: Vec<Vec<u32>>,
    labels: Vec<u32>,
    pad_id: u32,
    truncated: usize,
    augment: Option<TextAugmentation>,
}

/// Token-level augmentation of shuffled (training) passes.
#[derive(Debug, Clone)]
struct TextAugmentation {
    ops: Arc<AugmentPipeline>,
    /// Special tokens before and after each body, left untouched.
    specials: (usize, usize),
    mask_id: Option<u32>,
}

impl PartialEq for TextAugmentation {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ops, &other.ops) && self.specials == other.specials && self.mask_id == other.mask_id
    }
}

impl TextDataset {
    /// `examples` are `(token ids, class)`; `truncated` is how many were cut at max-length.
    pub fn new(examples: Vec<(Vec<u32>, u32)>, pad_id: u32, truncated: usize) -> Self {
        let (ids, labels) = examples.into_iter().unzip();
        Self {
            ids,
            labels,
            pad_id,
            truncated,
            augment: None,
        }
    }

    /// Applies `ops` (text augmentations) to each text of shuffled passes, its
    /// stream seeded by the epoch and its position; special tokens stay put.
    pub fn with_augment(mut self, ops: Arc<AugmentPipeline>, specials: (usize, usize), mask_id: Option<u32>) -> Self {
        if ops.has_text_ops() {
            self.augment = Some(TextAugmentation { ops, specials, mask_id });
        }
        self
    }

    /// How many examples were longer than max-length and cut, for a report; nothing is printed here.
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids and class of example `i`, in storage order.
    pub fn example(&self, i: usize) -> Option<(&[u32], u32)> {
        Some((self.ids.get(i)?.as_slice(), *self.labels.get(i)?))
    }

    /// The longest example, in tokens.
    pub fn max_seq_len(&self) -> usize {
        self.ids.iter().map(Vec::len).max().unwrap_or(0)
    }
}

impl Dataset for TextDataset {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn labels(&self) -> Vec<u32> {
        self.labels.clone()
    }

    fn truncated(&self) -> Option<usize> {
        Some(self.truncated)
    }

    fn batches(
        &self,
        batch_size: usize,
        order_seed: Option<u64>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_> {
        self.batches_from(batch_size, order_seed, 0)
    }

    fn fingerprint(&self, feed: &mut dyn FnMut(&[u8])) -> bool {
        let mut bytes = Vec::new();
        for (ids, label) in self.ids.iter().zip(&self.labels) {
            bytes.clear();
            bytes.extend((ids.len() as u64).to_le_bytes());
            bytes.extend(ids.iter().flat_map(|id| id.to_le_bytes()));
            bytes.extend(label.to_le_bytes());
            feed(&bytes);
        }
        true
    }

    fn batches_from(
        &self,
        batch_size: usize,
        order_seed: Option<u64>,
        first: usize,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_> {
        if batch_size == 0 {
            return Box::new(std::iter::once(Err(Error::Other(
                "batch size must be at least 1".into(),
            ))));
        }
        let mut order: Vec<usize> = (0..self.ids.len()).collect();
        if let Some(seed) = order_seed {
            order.shuffle(&mut init::rng(seed));
        }
        let n_batches = order.len().div_ceil(batch_size);
        let augment = order_seed.and_then(|seed| self.augment.as_ref().map(|a| (seed, a)));
        Box::new((first.min(n_batches)..n_batches).map(move |b| {
            let start = b * batch_size;
            let chunk = &order[start..((b + 1) * batch_size).min(order.len())];
            let labels = chunk.iter().map(|&i| self.labels[i]).collect();
            let Some((seed, aug)) = augment else {
                let sequences: Vec<&[u32]> = chunk.iter().map(|&i| self.ids[i].as_slice()).collect();
                return Ok(Batch::Text(collate(&sequences, labels, self.pad_id)));
            };
            let owned: Vec<Vec<u32>> = chunk
                .iter()
                .enumerate()
                .map(|(j, &i)| {
                    let ids = &self.ids[i];
                    let (lead, trail) = aug.specials;
                    let cut = (
                        lead.min(ids.len()),
                        ids.len().saturating_sub(trail).max(lead.min(ids.len())),
                    );
                    let mut body = ids[cut.0..cut.1].to_vec();
                    aug.ops.apply_text(&mut body, aug.mask_id, seed, (start + j) as u64);
                    let mut out = ids[..cut.0].to_vec();
                    out.extend(body);
                    out.extend_from_slice(&ids[cut.1..]);
                    out
                })
                .collect();
            let sequences: Vec<&[u32]> = owned.iter().map(Vec::as_slice).collect();
            Ok(Batch::Text(collate(&sequences, labels, self.pad_id)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> TextDataset {
        let lengths = [3usize, 5, 2, 7, 4, 3, 6];
        let examples = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| ((0..n as u32).map(|t| 100 + t).collect(), i as u32))
            .collect();
        TextDataset::new(examples, 9, 1)
    }

    fn text(b: Result<Batch>) -> TextBatch {
        crate::testutil::text_batch(b.unwrap())
    }

    #[test]
    fn batches_pad_to_their_longest_sequence_with_the_pad_id() {
        let d = dataset();
        let batches: Vec<TextBatch> = d.batches(3, None).map(text).collect();
        assert_eq!(
            batches.iter().map(|b| (b.batch_size, b.seq_len)).collect::<Vec<_>>(),
            [(3, 5), (3, 7), (1, 6)]
        );
        let first = &batches[0];
        assert_eq!(first.labels, [0, 1, 2]);
        assert_eq!(&first.input_ids[..5], [100, 101, 102, 9, 9]);
        assert_eq!(&first.attention_mask[..5], [1, 1, 1, 0, 0]);
        assert_eq!(&first.input_ids[10..], [100, 101, 9, 9, 9]);
        assert_eq!(&first.attention_mask[10..], [1, 1, 0, 0, 0]);
        assert_eq!(first.real_tokens(), 10);
        for b in &batches {
            assert_eq!(b.input_ids.len(), b.batch_size * b.seq_len);
            for (id, m) in b.input_ids.iter().zip(&b.attention_mask) {
                assert_eq!(*m == 0, *id == 9);
            }
        }
        assert_eq!(d.labels(), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(d.truncated(), 1);
        assert_eq!(d.max_seq_len(), 7);
    }

    #[test]
    fn each_epoch_covers_every_example_once_in_a_seeded_order() {
        let d = dataset();
        let order = |seed: Option<u64>| -> Vec<u32> { d.batches(2, seed).flat_map(|b| text(b).labels).collect() };
        assert_eq!(order(None), [0, 1, 2, 3, 4, 5, 6]);
        let (a, b) = (order(Some(1)), order(Some(2)));
        assert_eq!(a, order(Some(1)));
        assert_ne!(a, b);
        for o in [a, b] {
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3, 4, 5, 6], "{o:?}");
        }
        // Ids travel with their labels.
        for b in d.batches(2, Some(5)).map(text) {
            for (row, label) in b.labels.iter().enumerate() {
                let real = b.attention_mask[row * b.seq_len..(row + 1) * b.seq_len]
                    .iter()
                    .sum::<u32>() as usize;
                assert_eq!(real, d.example(*label as usize).unwrap().0.len());
            }
        }
    }

    #[test]
    fn a_pass_started_at_any_batch_is_the_rest_of_the_whole_pass() {
        let d = dataset();
        for seed in [None, Some(3)] {
            let whole: Vec<TextBatch> = d.batches(2, seed).map(text).collect();
            for first in 0..=whole.len() + 1 {
                let rest: Vec<TextBatch> = d.batches_from(2, seed, first).map(text).collect();
                assert_eq!(rest, whole[first.min(whole.len())..], "first {first}");
            }
        }
        let mut a = Vec::new();
        assert!(d.fingerprint(&mut |b| a.extend_from_slice(b)));
        let other = TextDataset::new(vec![(vec![100, 101, 102], 0)], 9, 0);
        let mut b = Vec::new();
        other.fingerprint(&mut |x| b.extend_from_slice(x));
        assert_ne!(a, b);
    }

    #[test]
    fn a_zero_batch_size_is_an_error_not_a_panic() {
        assert!(dataset().batches(0, None).next().unwrap().is_err());
        let empty = TextDataset::new(vec![], 0, 0);
        assert!(empty.is_empty());
        assert_eq!(empty.batches(4, Some(1)).count(), 0);
    }
}
