//! Reused host buffers for the large intermediates that live inside one
//! operation (the feed-forward's activation, the attention's context and its
//! q/k/v gradients, a head's score gradients).
//!
//! `vec![0.0; n]` costs a pass over memory that the kernel writing the buffer
//! then repeats: the allocator zeroes a recycled block, the kernel a fresh
//! page. At 32 x 128 on MiniLM these buffers come to about 450 MiB a training
//! step. A buffer taken here instead keeps the values its last user left —
//! initialised memory, but stale — so it is only for outputs that a kernel
//! writes in full before anything reads them. Each thread keeps its own few
//! buffers (the operations run on the caller's thread, a head's task on a
//! rayon worker), so taking one is a borrow of a thread-local list.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers a thread keeps for reuse; the smallest goes when one more comes back.
/// Enough for a six-layer model's kept attention probabilities and the
/// intermediates around them, so a training step finds them all again.
const KEPT: usize = 8;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` values of stale contents, given back to this thread's list on drop.
pub struct Scratch {
    values: Vec<f32>,
}

/// A buffer of `len` values whose contents are whatever they were: the caller
/// writes every value before reading any. Only values beyond the reused
/// buffer's length are written here (zeros).
pub fn take(len: usize) -> Scratch {
    let reused = FREE
        .try_with(|free| {
            let mut free = free.borrow_mut();
            // The smallest buffer that holds `len`, else the largest (grown below).
            let fits = (0..free.len())
                .filter(|&i| free[i].capacity() >= len)
                .min_by_key(|&i| free[i].capacity());
            let pick = fits.or_else(|| (0..free.len()).max_by_key(|&i| free[i].capacity()));
            pick.map(|i| free.swap_remove(i))
        })
        .ok()
        .flatten();
    let mut values = reused.unwrap_or_default();
    values.truncate(len);
    values.resize(len, 0.0);
    Scratch { values }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.values);
        // During thread teardown the list may be gone: the buffer is then just freed.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            free.push(values);
            if free.len() > KEPT
                && let Some(smallest) = (0..free.len()).min_by_key(|&i| free[i].capacity())
            {
                free.swap_remove(smallest);
            }
        });
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.values
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_without_being_cleared() {
        let mut a = take(1000);
        a.fill(7.0);
        let at = a.as_ptr();
        drop(a);
        let b = take(600);
        assert_eq!((b.as_ptr(), b.len()), (at, 600), "the same memory, cut to length");
        assert!(b.iter().all(|&v| v == 7.0), "stale values are kept, not zeroed");
        let grown = {
            drop(b);
            take(1500)
        };
        assert_eq!(grown.len(), 1500);
        assert!(grown[..600].iter().all(|&v| v == 7.0) && grown[1000..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_thread_keeps_only_a_few_buffers() {
        let held: Vec<Scratch> = (1..=KEPT + 3).map(|i| take(i * 10)).collect();
        drop(held);
        FREE.with_borrow(|free| {
            assert_eq!(free.len(), KEPT);
            assert!(free.iter().all(|v| v.capacity() >= 40), "the smallest were let go");
        });
    }
}
