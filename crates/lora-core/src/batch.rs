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
