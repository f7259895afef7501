//! Host-side batches: the currency between the data stage and a backend.
//!
//! Plain vectors plus shapes, so that data loaders, augmentations and
//! strategies never see a tensor type and compile once for every backend.

/// A dense f32 array in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Row `i` of a 2-D tensor.
    pub fn row(&self, i: usize) -> &[f32] {
        let width = self.shape[1];
        &self.data[i * width..(i + 1) * width]
    }
}

/// Tokenised text, padded on the right to the longest sequence of the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TextBatch {
    pub batch_size: usize,
    pub seq_len: usize,
    /// `[batch_size * seq_len]` token ids, padding ids where the mask is 0.
    pub input_ids: Vec<u32>,
    /// `[batch_size * seq_len]`, 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// One class index per sequence; empty at prediction time.
    pub labels: Vec<u32>,
}

impl TextBatch {
    /// Real (unpadded) tokens in the batch.
    pub fn real_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }
}

/// Images as `[batch, channels, height, width]` f32 pixels (normalised or not,
/// as the data stage decided), with a class per image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    pub batch_size: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `[batch_size * channels * height * width]`, row-major.
    pub pixels: Vec<f32>,
    /// One class index per image; empty at prediction time.
    pub labels: Vec<u32>,
    /// `[batch_size * num_classes]` target distributions when a batch-level
    /// augmentation (mixup, cutmix) blended images; `None` means one-hot `labels`.
    pub soft_labels: Option<Vec<f32>>,
}

impl ImageBatch {
    /// Values in one image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// Token sequences for a causal language model, padded on the right: the
/// input ids and, per position, the token to predict and its weight (0 for
/// prompt, padding and tokens the loss skips).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub batch_size: usize,
    pub seq_len: usize,
    /// `[batch_size * seq_len]`.
    pub input_ids: Vec<u32>,
    /// `[batch_size * seq_len]`, 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// `[batch_size * seq_len]`: the next token at each position.
    pub targets: Vec<u32>,
    /// `[batch_size * seq_len]`: each target's weight in the loss.
    pub weights: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Batch {
    Text(TextBatch),
    Image(ImageBatch),
    Tokens(TokenBatch),
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::Text(b) => b.batch_size,
            Batch::Image(b) => b.batch_size,
            Batch::Tokens(b) => b.batch_size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn labels(&self) -> &[u32] {
        match self {
            Batch::Text(b) => &b.labels,
            Batch::Image(b) => &b.labels,
            Batch::Tokens(_) => &[],
        }
    }

    /// What the batch's loss is computed against: class labels, or the soft
    /// labels a batch-level augmentation left.
    pub fn targets(&self) -> crate::task::Targets<'_> {
        use crate::task::Targets;
        match self {
            Batch::Text(b) => Targets::Classes(&b.labels),
            Batch::Image(b) => match &b.soft_labels {
                Some(probs) => Targets::Soft {
                    probs,
                    classes: probs.len() / b.batch_size.max(1),
                },
                None => Targets::Classes(&b.labels),
            },
            Batch::Tokens(b) => Targets::Tokens {
                ids: &b.targets,
                weights: &b.weights,
            },
        }
    }

    /// Units of work for throughput figures: real tokens for text, images for images.
    pub fn work_units(&self) -> usize {
        match self {
            Batch::Text(b) => b.real_tokens(),
            Batch::Image(b) => b.batch_size,
            Batch::Tokens(b) => b.attention_mask.iter().filter(|&&m| m != 0).count(),
        }
    }
}

/// The rows `range` of a flat `[batch * width]` array.
fn rows_of<T: Clone>(v: &[T], range: &std::ops::Range<usize>, width: usize) -> Vec<T> {
    v[range.start * width..range.end * width].to_vec()
}

impl Batch {
    /// The examples `range` of the batch (clamped to it), with the batch's
    /// padding kept: a data-parallel rank's part of a global batch. An empty
    /// range gives an empty batch of the same kind.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Batch {
        let end = range.end.min(self.len());
        let range = range.start.min(end)..end;
        let n = range.len();
        match self {
            Batch::Text(b) => Batch::Text(TextBatch {
                batch_size: n,
                seq_len: b.seq_len,
                input_ids: rows_of(&b.input_ids, &range, b.seq_len),
                attention_mask: rows_of(&b.attention_mask, &range, b.seq_len),
                labels: if b.labels.is_empty() {
                    Vec::new()
                } else {
                    rows_of(&b.labels, &range, 1)
                },
            }),
            Batch::Image(b) => Batch::Image(ImageBatch {
                batch_size: n,
                channels: b.channels,
                height: b.height,
                width: b.width,
                pixels: rows_of(&b.pixels, &range, b.image_len()),
                labels: if b.labels.is_empty() {
                    Vec::new()
                } else {
                    rows_of(&b.labels, &range, 1)
                },
                soft_labels: b
                    .soft_labels
                    .as_ref()
                    .map(|p| rows_of(p, &range, p.len() / b.batch_size.max(1))),
            }),
            Batch::Tokens(b) => Batch::Tokens(TokenBatch {
                batch_size: n,
                seq_len: b.seq_len,
                input_ids: rows_of(&b.input_ids, &range, b.seq_len),
                attention_mask: rows_of(&b.attention_mask, &range, b.seq_len),
                targets: rows_of(&b.targets, &range, b.seq_len),
                weights: rows_of(&b.weights, &range, b.seq_len),
            }),
        }
    }
}

#[cfg(test)]
mod rows_tests {
    use super::*;

    #[test]
    fn rows_keep_each_examples_values_and_the_padding() {
        let b = Batch::Text(TextBatch {
            batch_size: 3,
            seq_len: 2,
            input_ids: vec![1, 2, 3, 4, 5, 0],
            attention_mask: vec![1, 1, 1, 1, 1, 0],
            labels: vec![7, 8, 9],
        });
        let Batch::Text(r) = b.rows(1..3) else { panic!() };
        assert_eq!((r.batch_size, r.seq_len), (2, 2));
        assert_eq!(r.input_ids, vec![3, 4, 5, 0]);
        assert_eq!(r.attention_mask, vec![1, 1, 1, 0]);
        assert_eq!(r.labels, vec![8, 9]);
        assert!(b.rows(3..5).is_empty());
        let img = Batch::Image(ImageBatch {
            batch_size: 2,
            channels: 1,
            height: 1,
            width: 2,
            pixels: vec![0.1, 0.2, 0.3, 0.4],
            labels: vec![0, 1],
            soft_labels: Some(vec![1.0, 0.0, 0.25, 0.75]),
        });
        let Batch::Image(r) = img.rows(1..2) else { panic!() };
        assert_eq!(r.pixels, vec![0.3, 0.4]);
        assert_eq!(r.soft_labels, Some(vec![0.25, 0.75]));
    }
}
