//! Matrix products on host slices through the `gemm` crate (the kernel under
//! candle's and burn's matmuls), for the backends' fused linear operations:
//! strided views instead of copies, and outputs written by gemm into buffers it
//! fills in full, never zeroed first.

/// A row-major or transposed matrix as gemm reads it: the values it lies in,
/// and the strides between columns and between rows. It borrows its values,
/// so [`product`] can check that a matrix of the size it is given lies inside them.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    col_stride: usize,
    row_stride: usize,
}

impl<'a> Mat<'a> {
    /// `data` as a row-major matrix of `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            col_stride: 1,
            row_stride: cols,
        }
    }

    /// The transpose of `data`, a row-major matrix of `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            col_stride: cols,
            row_stride: 1,
        }
    }

    /// Whether a `rows x cols` matrix under these strides lies inside the values.
    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// rayon's pool (gemm runs its threads there), or none on one thread.
fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst = (accumulate ? dst : 0) + beta * lhs rhs` for `lhs [m, k]`, `rhs [k, n]`
/// and a row-major `dst [m, n]`.
///
/// Panics when `lhs` or `rhs` is smaller than its shape (a caller's bug).
///
/// # Safety
/// `dst` must point to `m * n` writable values (initialised when `accumulate`)
/// that neither `lhs` nor `rhs` overlaps.
pub unsafe fn gemm_into(
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    accumulate: bool,
) {
    assert!(
        lhs.covers(m, k) && rhs.covers(k, n),
        "gemm of [{m}, {k}] x [{k}, {n}] on {} and {} values",
        lhs.data.len(),
        rhs.data.len()
    );
    // SAFETY: both operands lie inside their slices (checked above); `dst` is the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// `beta * lhs rhs` as a fresh row-major `[m, n]` buffer, never zeroed: gemm
/// writes every value before the length covers it. Panics when an operand is
/// smaller than its shape.
pub fn product(m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat, beta: f32) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(m * n);
    if k == 0 {
        out.resize(m * n, 0.0);
        return out;
    }
    // SAFETY: `out` has room for `m * n` values, which gemm (not reading the
    // destination) writes in full; a fresh buffer overlaps no operand.
    unsafe {
        gemm_into(out.as_mut_ptr(), (m, n, k), lhs, rhs, beta, false);
        out.set_len(m * n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        lora_core::init::normal(1.0, n, &mut lora_core::init::rng(seed))
    }

    /// Both layouts of both operands, and accumulation, against plain loops.
    #[test]
    fn product_matches_loops_in_every_layout() {
        let (m, k, n) = (5, 7, 3);
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        // The same matrices stored transposed: a_t [k, m], b_t [n, k].
        let a_t: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let b_t: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want: Vec<f32> = (0..m * n)
            .map(|i| 0.5 * (0..k).map(|t| a[i / n * k + t] * b[t * n + i % n]).sum::<f32>())
            .collect();
        for (lhs, rhs) in [
            (Mat::rows(&a, k), Mat::rows(&b, n)),
            (Mat::transposed(&a_t, m), Mat::transposed(&b_t, k)),
        ] {
            let got = product(m, n, k, lhs, rhs, 0.5);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
            }
            let mut acc = vec![1.0f32; m * n];
            // SAFETY: acc is [m, n] and initialised, apart from a and b.
            unsafe { gemm_into(acc.as_mut_ptr(), (m, n, k), lhs, rhs, 0.5, true) };
            for (g, w) in acc.iter().zip(&want) {
                assert!((g - (w + 1.0)).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {}", w + 1.0);
            }
        }
    }

    #[test]
    #[should_panic(expected = "gemm of [4, 3] x [3, 2]")]
    fn an_operand_smaller_than_its_shape_is_refused() {
        let (a, b) = (vec![0.0; 11], vec![0.0; 6]);
        product(4, 2, 3, Mat::rows(&a, 3), Mat::rows(&b, 2), 1.0);
    }
}
