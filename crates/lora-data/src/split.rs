//! Seeded, reproducible train/validation splits and sample caps.
//!
//! Every shuffle draws from `lora_core::init`, so the same seed gives the same
//! split on every machine and backend, and a new seed gives a new one.

use lora_core::init;
use rand::seq::SliceRandom;

/// Shuffles `rows` with `seed`, then splits off the first `round(fraction * n)`
/// rows (at least one, when there are any) as validation. Returns `(train, validation)`.
pub fn split_off_validation<T>(mut rows: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    rows.shuffle(&mut init::rng(seed));
    let n = rows.len();
    let n_validation = ((fraction * n as f64).round() as usize).max(1).min(n);
    let train = rows.split_off(n_validation);
    (train, rows)
}

/// Keeps the first `max` rows. For rows that are already shuffled, that is a random subset.
pub fn truncate<T>(mut rows: Vec<T>, max: Option<usize>) -> Vec<T> {
    if let Some(max) = max {
        rows.truncate(max);
    }
    rows
}

/// Keeps a random subset of `max` rows chosen with `seed`, in their original
/// order, so that a capped file still reads in file order.
pub fn sample<T>(rows: Vec<T>, max: Option<usize>, seed: u64) -> Vec<T> {
    let Some(max) = max.filter(|&m| m < rows.len()) else {
        return rows;
    };
    let mut keep: Vec<usize> = (0..rows.len()).collect();
    keep.shuffle(&mut init::rng(seed));
    keep.truncate(max);
    let mut mask = vec![false; rows.len()];
    for i in keep {
        mask[i] = true;
    }
    rows.into_iter()
        .zip(mask)
        .filter_map(|(row, kept)| kept.then_some(row))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_reproducible_disjoint_complete_and_seed_dependent() {
        let rows: Vec<u32> = (0..100).collect();
        let (train, validation) = split_off_validation(rows.clone(), 0.2, 7);
        assert_eq!((train.len(), validation.len()), (80, 20));
        let mut all: Vec<u32> = train.iter().chain(&validation).copied().collect();
        all.sort();
        assert_eq!(all, rows, "disjoint and complete");
        assert_eq!(
            split_off_validation(rows.clone(), 0.2, 7),
            (train.clone(), validation.clone())
        );
        let (_, other) = split_off_validation(rows, 0.2, 8);
        assert_ne!(other, validation);
    }

    #[test]
    fn validation_gets_at_least_one_row() {
        let (train, validation) = split_off_validation(vec![1, 2, 3], 0.01, 1);
        assert_eq!((train.len(), validation.len()), (2, 1));
        assert_eq!(split_off_validation(Vec::<u8>::new(), 0.5, 1), (vec![], vec![]));
    }

    #[test]
    fn sampling_keeps_a_reproducible_subset_in_file_order() {
        let rows: Vec<u32> = (0..50).collect();
        let s = sample(rows.clone(), Some(10), 3);
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "file order kept: {s:?}");
        assert_eq!(s, sample(rows.clone(), Some(10), 3));
        assert_ne!(s, sample(rows.clone(), Some(10), 4));
        assert_ne!(s, (0..10).collect::<Vec<_>>(), "a random subset, not the head");
        assert_eq!(sample(rows.clone(), Some(60), 3), rows);
        assert_eq!(sample(rows.clone(), None, 3), rows);
        assert_eq!(truncate(rows, Some(5)), [0, 1, 2, 3, 4]);
    }
}
