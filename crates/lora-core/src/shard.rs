//! A data-parallel rank's view of a dataset: its rows of each global batch.
//!
//! Every rank walks the same order (the epoch's seed is the same everywhere)
//! in batches of the configured, global size, and keeps rows
//! `[rank * b / world, (rank + 1) * b / world)` of each. The ranks' parts of a
//! batch are then exactly the batch that one process would train on, so the
//! sum of their weighted gradients is the one-process gradient, and a
//! pipeline keeps its meaning on any number of processes. A rank may get an
//! empty part of the last, short batch; it still takes part in the step.
//!
//! Each rank builds the whole global batch before keeping its rows, so that
//! augmentations (whose streams are per batch) and padding are what one
//! process would have; the cost is the data time of the other ranks' rows.

use crate::batch::Batch;
use crate::error::Result;
use crate::stage::Dataset;

pub struct Shard<'a> {
    inner: &'a dyn Dataset,
    rank: usize,
    world: usize,
}

impl<'a> Shard<'a> {
    pub fn new(inner: &'a dyn Dataset, rank: usize, world: usize) -> Self {
        assert!(rank < world, "rank {rank} of {world}");
        Self { inner, rank, world }
    }

    /// This rank's rows of a global batch of `len` examples, split as evenly
    /// as it goes (the first ranks take one more when `len` does not divide).
    pub fn range(rank: usize, world: usize, len: usize) -> std::ops::Range<usize> {
        let (q, r) = (len / world, len % world);
        let start = rank * q + rank.min(r);
        start..start + q + usize::from(rank < r)
    }
}

impl Dataset for Shard<'_> {
    /// Examples of the whole split: step counts are global.
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn labels(&self) -> Vec<u32> {
        self.inner.labels()
    }

    fn truncated(&self) -> Option<usize> {
        self.inner.truncated()
    }

    fn batches(
        &self,
        batch_size: usize,
        order_seed: Option<u64>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_> {
        self.batches_from(batch_size, order_seed, 0)
    }

    fn batches_from(
        &self,
        batch_size: usize,
        order_seed: Option<u64>,
        first: usize,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_> {
        let (rank, world) = (self.rank, self.world);
        Box::new(
            self.inner
                .batches_from(batch_size, order_seed, first)
                .map(move |b| b.map(|b| b.rows(Self::range(rank, world, b.len())))),
        )
    }

    fn fingerprint(&self, feed: &mut dyn FnMut(&[u8])) -> bool {
        self.inner.fingerprint(feed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_parts_tile_the_batch() {
        for len in 0..11 {
            for world in 1..5 {
                let mut next = 0;
                for rank in 0..world {
                    let r = Shard::range(rank, world, len);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(Shard::range(1, 2, 8), 4..8);
        assert_eq!(Shard::range(2, 3, 7), 5..7);
    }
}
