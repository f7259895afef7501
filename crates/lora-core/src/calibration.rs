//! Statistics of the inputs of a decoder's matrices over calibration text,
//! for activation-aware quantization (`lora export --calibrate`): for each
//! input site, the Gram matrix `X^T X` of the rows that entered it. Matrices
//! that read the same input (a layer's q, k and v; gate and up) share one.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// `sum x x^T` over the rows `x` that entered one site, with their count.
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    pub dim: usize,
    /// Row-major `dim x dim`, accumulated in f64 (thousands of rows).
    pub sum: Vec<f64>,
    pub rows: u64,
}

impl Gram {
    /// The mean of `x_j^2` per input column (llama.cpp's importance matrix).
    pub fn mean_squares(&self) -> Vec<f64> {
        let n = self.rows.max(1) as f64;
        (0..self.dim).map(|j| self.sum[j * self.dim + j] / n).collect()
    }
}

/// The Gram matrix of every site, found by the names of the matrices that read it.
#[derive(Debug, Clone, Default)]
pub struct InputStatistics {
    index: BTreeMap<String, usize>,
    grams: Vec<Gram>,
    /// Sequences seen.
    pub sequences: usize,
}

impl InputStatistics {
    /// Adds `x^T x` (`dim x dim`, computed from `rows` input rows) to the site
    /// read by the matrices `tensors`.
    pub fn add(&mut self, tensors: &[String], dim: usize, xtx: &[f32], rows: usize) -> Result<()> {
        if xtx.len() != dim * dim {
            return Err(Error::Other(format!(
                "a Gram matrix of {} values for inputs of {dim}",
                xtx.len()
            )));
        }
        let i = match tensors.first().and_then(|t| self.index.get(t)) {
            Some(&i) => i,
            None => {
                self.grams.push(Gram {
                    dim,
                    sum: vec![0.0; dim * dim],
                    rows: 0,
                });
                let i = self.grams.len() - 1;
                for t in tensors {
                    self.index.insert(t.clone(), i);
                }
                i
            }
        };
        let g = &mut self.grams[i];
        if g.dim != dim {
            return Err(Error::Other(format!("inputs of {dim} where {} were seen", g.dim)));
        }
        for (s, &v) in g.sum.iter_mut().zip(xtx) {
            *s += f64::from(v);
        }
        g.rows += rows as u64;
        Ok(())
    }

    /// The Gram matrix of the inputs of `tensor` (a GGUF tensor name).
    pub fn gram(&self, tensor: &str) -> Option<&Gram> {
        self.index.get(tensor).map(|&i| &self.grams[i])
    }

    pub fn is_empty(&self) -> bool {
        self.grams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_sites_accumulate_once() {
        let mut s = InputStatistics::default();
        let qk = ["a".to_string(), "b".to_string()];
        s.add(&qk, 2, &[1.0, 2.0, 2.0, 4.0], 1).unwrap();
        s.add(&qk, 2, &[9.0, 0.0, 0.0, 1.0], 2).unwrap();
        let g = s.gram("b").unwrap();
        assert_eq!(g.sum, vec![10.0, 2.0, 2.0, 5.0]);
        assert_eq!(g.rows, 3);
        assert_eq!(g.mean_squares(), vec![10.0 / 3.0, 5.0 / 3.0]);
        assert!(s.add(&qk, 3, &[0.0; 9], 1).is_err());
        assert!(s.gram("c").is_none());
    }
}
