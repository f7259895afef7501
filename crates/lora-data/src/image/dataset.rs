//! A split of images that yields batches, augmented on loader threads.
//!
//! A producer thread assembles each batch (its images augmented in parallel
//! on rayon's pool) and hands it over a bounded channel, `prefetch` batches
//! ahead, so the trainer rarely waits on the data. Each image's randomness is
//! seeded by the epoch's seed and its position in the epoch, so a run is the
//! same whatever the thread count.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use lora_core::augment::Image;
use lora_core::init;
use lora_core::stage::Dataset;
use lora_core::{Batch, Error, ImageBatch, Result};
use rand::seq::SliceRandom;
use rayon::prelude::*;

use super::store::ImageSet;
use crate::augment::AugmentPipeline;

pub struct ImageDataset {
    set: Arc<ImageSet>,
    /// Applied to shuffled passes (training).
    train_ops: Arc<AugmentPipeline>,
    /// Applied to ordered passes (evaluation, prediction): deterministic ops such as normalize.
    eval_ops: Arc<AugmentPipeline>,
    num_classes: usize,
    prefetch: usize,
}

impl ImageDataset {
    pub fn new(
        set: ImageSet,
        train_ops: Arc<AugmentPipeline>,
        eval_ops: Arc<AugmentPipeline>,
        num_classes: usize,
        prefetch: usize,
    ) -> Self {
        Self {
            set: Arc::new(set),
            train_ops,
            eval_ops,
            num_classes,
            prefetch: prefetch.max(1),
        }
    }

    pub fn set(&self) -> &ImageSet {
        &self.set
    }
}

/// Builds batch `index` of `order` with `ops`; `seed` is the epoch's seed.
pub(crate) fn make_batch(
    set: &ImageSet,
    chunk: &[usize],
    first_position: usize,
    ops: &AugmentPipeline,
    seed: u64,
    index: u64,
    num_classes: usize,
) -> Result<ImageBatch> {
    let (c, h, w) = ops.output_shape((set.channels, set.height, set.width));
    // An augmentation that panics (a plugin's reports its failure this way) is an
    // error of the run, not a loader thread that dies and looks like the end of the data.
    let images: Vec<Image> = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        chunk
            .par_iter()
            .enumerate()
            .map(|(j, &i)| {
                let mut image = set.image(i);
                ops.apply_sample(&mut image, seed, (first_position + j) as u64);
                image
            })
            .collect()
    }))
    .map_err(|panic| Error::Other(lora_core::error::panic_message(panic.as_ref())))?;
    let mut pixels = Vec::with_capacity(chunk.len() * c * h * w);
    for image in &images {
        if (image.channels, image.height, image.width) != (c, h, w) {
            return Err(Error::Other(format!(
                "augmentations produced a {}x{}x{} image, expected {c}x{h}x{w} (ops: {})",
                image.channels,
                image.height,
                image.width,
                ops.names().join(", ")
            )));
        }
        pixels.extend_from_slice(&image.pixels);
    }
    let mut batch = ImageBatch {
        batch_size: chunk.len(),
        channels: c,
        height: h,
        width: w,
        pixels,
        labels: chunk.iter().map(|&i| set.labels[i]).collect(),
        soft_labels: None,
    };
    ops.apply_batch(&mut batch, num_classes, seed, index)?;
    Ok(batch)
}

struct Prefetched {
    rx: Receiver<Result<Batch>>,
}

impl Iterator for Prefetched {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Dataset for ImageDataset {
    fn len(&self) -> usize {
        self.set.len()
    }

    fn labels(&self) -> Vec<u32> {
        self.set.labels.clone()
    }

    fn batches(
        &self,
        batch_size: usize,
        order_seed: Option<u64>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_> {
        self.batches_from(batch_size, order_seed, 0)
    }

    fn fingerprint(&self, feed: &mut dyn FnMut(&[u8])) -> bool {
        let set = &self.set;
        for dim in [set.channels, set.height, set.width, set.len()] {
            feed(&(dim as u64).to_le_bytes());
        }
        // In chunks: one call per value would cost more than the hashing.
        let mut bytes = Vec::with_capacity(4 * 16_384);
        for chunk in set.pixels.chunks(16_384) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|p| p.to_le_bytes()));
            feed(&bytes);
        }
        bytes.clear();
        bytes.extend(set.labels.iter().flat_map(|l| l.to_le_bytes()));
        feed(&bytes);
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
        let mut order: Vec<usize> = (0..self.set.len()).collect();
        if let Some(seed) = order_seed {
            order.shuffle(&mut init::rng(seed));
        }
        let ops = match order_seed {
            Some(_) => self.train_ops.clone(),
            None => self.eval_ops.clone(),
        };
        let seed = order_seed.unwrap_or(0);
        let set = self.set.clone();
        let num_classes = self.num_classes;
        let (tx, rx) = sync_channel(self.prefetch);
        // The producer stops when the consumer drops the iterator (send fails).
        std::thread::spawn(move || {
            // Batch `b` keeps its own position and streams whatever `first` is.
            for (b, chunk) in order.chunks(batch_size).enumerate().skip(first) {
                let batch = make_batch(&set, chunk, b * batch_size, &ops, seed, b as u64, num_classes);
                let failed = batch.is_err();
                if tx.send(batch.map(Batch::Image)).is_err() || failed {
                    break;
                }
            }
        });
        Box::new(Prefetched { rx })
    }
}

#[cfg(test)]
mod tests {
    use lora_core::augment::{Augmentation, ImageAugment};
    use lora_core::init::SeededRng;
    use rand::Rng;

    use super::*;

    /// Adds a random offset in [0, 1) to every pixel: visible randomness for the tests.
    struct Jitter;
    impl ImageAugment for Jitter {
        fn name(&self) -> &'static str {
            "jitter"
        }
        fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
            let d: f32 = rng.random();
            image.pixels.iter_mut().for_each(|p| *p += d);
        }
    }

    fn dataset(ops: AugmentPipeline) -> ImageDataset {
        let mut set = ImageSet::new(1, 2, 2);
        for i in 0..10 {
            set.push(&[i as f32; 4], i % 3);
        }
        ImageDataset::new(set, Arc::new(ops), Arc::new(AugmentPipeline::default()), 3, 2)
    }

    fn images(b: Result<Batch>) -> ImageBatch {
        match b.unwrap() {
            Batch::Image(i) => i,
            _ => panic!("not an image batch"),
        }
    }

    struct Panics;
    impl ImageAugment for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        fn apply(&self, _: &mut Image, _: &mut SeededRng) {
            std::panic::resume_unwind(Box::new("augmentation `panics` failed".to_string()));
        }
    }

    #[test]
    fn a_panicking_augmentation_is_an_error_of_the_pass_not_an_early_end() {
        let mut ops = AugmentPipeline::default();
        ops.push(Augmentation::Sample(Box::new(Panics)));
        let d = dataset(ops);
        let mut batches = d.batches(4, Some(1));
        let first = batches.next().expect("an item, not the end of the data");
        assert_eq!(first.err().unwrap().to_string(), "augmentation `panics` failed");
        assert!(batches.next().is_none(), "the pass ends after the error");
    }

    #[test]
    fn ordered_passes_are_plain_and_shuffled_passes_are_augmented_reproducibly() {
        let mut ops = AugmentPipeline::default();
        ops.push(Augmentation::Sample(Box::new(Jitter)));
        let d = dataset(ops);
        let plain: Vec<ImageBatch> = d.batches(4, None).map(images).collect();
        assert_eq!(plain.iter().map(|b| b.batch_size).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(plain[0].labels, [0, 1, 2, 0]);
        assert_eq!(plain[1].image(1), [5.0; 4]);

        let a: Vec<ImageBatch> = d.batches(4, Some(7)).map(images).collect();
        let again: Vec<ImageBatch> = d.batches(4, Some(7)).map(images).collect();
        assert_eq!(a, again);
        // Every image was jittered by less than 1, so its source is still its floor.
        for b in &a {
            for i in 0..b.batch_size {
                let px = b.image(i);
                assert!(px.iter().all(|p| *p == px[0]));
                assert!(px[0].fract() > 0.0);
                assert_eq!(b.labels[i], px[0].floor() as u32 % 3);
            }
        }
        // Same epoch seed, another batch size: each position keeps its own stream.
        let flat = |bs: Vec<ImageBatch>| -> Vec<f32> { bs.iter().flat_map(|b| b.pixels.clone()).collect() };
        let by_three: Vec<ImageBatch> = d.batches(3, Some(7)).map(images).collect();
        assert_eq!(flat(a.clone()), flat(by_three));
        let other: Vec<ImageBatch> = d.batches(4, Some(8)).map(images).collect();
        assert_ne!(flat(a), flat(other));
    }

    #[test]
    fn a_pass_started_at_any_batch_keeps_each_batchs_augmentation() {
        let mut ops = AugmentPipeline::default();
        ops.push(Augmentation::Sample(Box::new(Jitter)));
        let d = dataset(ops);
        let whole: Vec<ImageBatch> = d.batches(3, Some(9)).map(images).collect();
        assert_eq!(whole.len(), 4);
        for first in 0..=5 {
            let rest: Vec<ImageBatch> = d.batches_from(3, Some(9), first).map(images).collect();
            assert_eq!(rest, whole[first.min(4)..], "first {first}");
        }
    }

    #[test]
    fn the_thread_count_does_not_change_the_result() {
        let mut ops = AugmentPipeline::default();
        ops.push(Augmentation::Sample(Box::new(Jitter)));
        let d = dataset(AugmentPipeline::default());
        let order: Vec<usize> = (0..10).rev().collect();
        let run = |threads: usize| -> ImageBatch {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| make_batch(d.set(), &order, 0, &ops, 11, 0, 3).unwrap())
        };
        assert_eq!(run(1), run(4));
    }

    #[test]
    fn a_zero_batch_size_is_an_error_and_dropping_early_is_fine() {
        let d = dataset(AugmentPipeline::default());
        assert!(d.batches(0, None).next().unwrap().is_err());
        let mut it = d.batches(1, Some(1));
        assert!(it.next().unwrap().is_ok());
        drop(it);
    }
}
