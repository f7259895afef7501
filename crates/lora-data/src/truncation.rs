//! Truncation strategies: which tokens of a text longer than `max-length` are kept.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// The first tokens (Hugging Face's default).
    #[default]
    Head,
    /// The last tokens.
    Tail,
    /// A quarter of the budget from the head, the rest from the tail (Sun et al.,
    /// "How to Fine-Tune BERT for Text Classification?": 128 + 382 of 510).
    HeadTail,
}

/// Cuts `body` (a text's tokens without special tokens) to at most `max` tokens
/// with `strategy`; returns whether anything was cut.
pub fn truncate(body: &mut Vec<u32>, max: usize, strategy: Truncation) -> bool {
    if body.len() <= max {
        return false;
    }
    match strategy {
        Truncation::Head => body.truncate(max),
        Truncation::Tail => {
            body.drain(..body.len() - max);
        }
        Truncation::HeadTail => {
            let head = max / 4;
            let tail = max - head;
            body.drain(head..body.len() - tail);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_keep_the_head_the_tail_or_both() {
        let body: Vec<u32> = (0..10).collect();
        let cut = |s| {
            let mut b = body.clone();
            assert!(truncate(&mut b, 8, s));
            b
        };
        assert_eq!(cut(Truncation::Head), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(cut(Truncation::Tail), [2, 3, 4, 5, 6, 7, 8, 9]);
        // 8 / 4 = 2 from the head, 6 from the tail.
        assert_eq!(cut(Truncation::HeadTail), [0, 1, 4, 5, 6, 7, 8, 9]);
        let mut short = vec![1, 2];
        assert!(!truncate(&mut short, 8, Truncation::Tail));
        assert_eq!(short, [1, 2]);
    }
}
