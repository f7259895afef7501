//! Matrix products on host slices through the `gemm` crate (the kernel under
//! candle's and burn's matmuls), for the backends' fused linear operations:
//! strided views instead of copies, and outputs written by gemm into buffers it
//! fills in full, never zeroed first.

/// A row-major or transposed matrix as gemm reads it: its data pointer and
/// the strides between columns and between rows.
#[derive(Clone, Copy)]
pub struct Mat {
    ptr: *const f32,
    col_stride: isize,
    row_stride: isize,
}

impl Mat {
    /// `data` as a row-major matrix of `cols` columns.
    pub fn rows(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            col_stride: 1,
            row_stride: cols as isize,
        }
    }

    /// The transpose of `data`, a row-major matrix of `cols` columns.
    pub fn transposed(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            col_stride: cols as isize,
            row_stride: 1,
        }
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
/// # Safety
/// `lhs` and `rhs` must point to matrices of those sizes under their strides,
/// `dst` to `m * n` writable values (initialised when `accumulate`).
pub unsafe fn gemm_into(
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
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
/// writes every value before the length covers it.
pub fn product(m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat, beta: f32) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(m * n);
    if k == 0 {
        out.resize(m * n, 0.0);
        return out;
    }
    // SAFETY: `out` has room for `m * n` values, which gemm (not reading the
    // destination) writes in full; the callers pass matrices of these sizes.
    unsafe {
        gemm_into(out.as_mut_ptr(), (m, n, k), lhs, rhs, beta, false);
        out.set_len(m * n);
    }
    out
}

/// `y[r] += b` for every row `r` of `y`, in parallel blocks of rows.
pub fn add_rows(y: &mut [f32], b: &[f32]) {
    use rayon::prelude::*;
    let n = b.len().max(1);
    let task = ((1 << 15) / n).max(1) * n;
    y.par_chunks_mut(task).for_each(|block| {
        for row in block.chunks_exact_mut(n) {
            row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
    });
}
