//! Frozen quantized matrices, held in candle's quantized tensor (`QTensor`,
//! the stored ggml blocks). The products are exact f32 arithmetic on the
//! blocks' values: a few rows (decoding a token) by a block kernel that decodes
//! nothing (each block's scale applies to its integer dot product); many rows (training, a prompt) by decoding the
//! matrix for that one gemm and dropping it. The backward pass yields the
//! input's gradient only, decoding the same way. The base is never held decoded.
//!
//! candle's own quantized matmul (ggml's kernels) was measured and not used:
//! it quantizes the activations to 8 bits, off by 0.5-0.8% per product, which
//! over 30 layers turns SmolLM2's greedy answer to the golden prompt from
//! "The capital of France is Paris." into "L'Étoile, la Marseillaise, ...".

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use lora_core::gguf::GgmlType;
use lora_nn::gguf::{QuantView, dot_row};
use rayon::prelude::*;

/// A quantized `[out, in]` matrix, shared by the clones of a layer.
#[derive(Clone)]
pub struct QuantMatrix {
    q: Arc<QTensor>,
    ggml: GgmlType,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantMatrix({:?}, {:?})", self.q.dtype(), self.q.shape())
    }
}

impl QuantMatrix {
    /// Copies the stored blocks into candle's storage (still quantized).
    pub fn new(view: QuantView<'_>) -> Result<Self> {
        let dtype = match view.ggml {
            GgmlType::F32 => GgmlDType::F32,
            GgmlType::F16 => GgmlDType::F16,
            GgmlType::Q4_0 => GgmlDType::Q4_0,
            GgmlType::Q4_1 => GgmlDType::Q4_1,
            GgmlType::Q5_0 => GgmlDType::Q5_0,
            GgmlType::Q8_0 => GgmlDType::Q8_0,
            GgmlType::Q4_K => GgmlDType::Q4K,
            GgmlType::Q6_K => GgmlDType::Q6K,
        };
        let q = qtensor_from_ggml(dtype, view.bytes, view.shape.to_vec(), &Device::Cpu)?;
        Ok(Self {
            q: Arc::new(q),
            ggml: view.ggml,
        })
    }

    pub fn dims(&self) -> Vec<usize> {
        self.q.shape().dims().to_vec()
    }

    pub fn dequantize(&self) -> Result<Tensor> {
        self.q.dequantize(&Device::Cpu)
    }

    /// `x W^T` for `x [.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(QuantLinear(self.clone()))
    }

    /// `x W^T` for `x [rows, in]` row-major, straight from the blocks.
    fn few_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let (n, k) = self.q.shape().dims2()?;
        let data = self.q.data()?;
        let rb = data.len() / n;
        // Output rows in chunks, each decoding its weight rows into one buffer.
        const CHUNK: usize = 64;
        let mut yt = vec![0f32; n * rows];
        yt.par_chunks_mut(CHUNK * rows).enumerate().for_each(|(c, dst)| {
            for (i, out) in dst.chunks_exact_mut(rows).enumerate() {
                let o = c * CHUNK + i;
                let w = &data[o * rb..(o + 1) * rb];
                for (r, y) in out.iter_mut().enumerate() {
                    *y = dot_row(self.ggml, w, &x[r * k..(r + 1) * k]);
                }
            }
        });
        let mut y = vec![0f32; rows * n];
        for o in 0..n {
            for r in 0..rows {
                y[r * n + o] = yt[o * rows + r];
            }
        }
        Ok(y)
    }
}

/// From this many rows on, decoding the whole matrix for one gemm is cheaper
/// than decoding each weight row once per call of the block kernel.
pub const GEMM_FROM_ROWS: usize = 8;

struct QuantLinear(QuantMatrix);

impl CustomOp1 for QuantLinear {
    fn name(&self) -> &'static str {
        "quantized-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let (rows, k) = (dims[..dims.len() - 1].iter().product::<usize>(), dims[dims.len() - 1]);
        let x = storage.as_slice::<f32>()?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("quantized linear: input not contiguous".into()))?;
        let x = &x[start..end];
        let (n, _) = self.0.q.shape().dims2()?;
        let y = if rows < GEMM_FROM_ROWS {
            self.0.few_rows(x, rows)?
        } else {
            let x = Tensor::from_slice(x, (rows, k), &Device::Cpu)?;
            x.matmul(&self.0.dequantize()?.t()?)?.flatten_all()?.to_vec1()?
        };
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("at least one dim") = n;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dims = grad_res.dims().to_vec();
        let rows = dims[..dims.len() - 1].iter().product::<usize>();
        let w = self.0.dequantize()?;
        let g = grad_res.reshape((rows, dims[dims.len() - 1]))?.matmul(&w)?;
        let mut shape = dims;
        *shape.last_mut().expect("at least one dim") = w.dim(1)?;
        Ok(Some(g.reshape(shape)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random blocks of `ggml` with varied but moderate f16 scales (and offsets).
    fn blocks(ggml: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut s = 12345u32;
        let mut next = || {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (s >> 16) as u8
        };
        let (block, size) = ggml.block();
        for _ in 0..rows * cols / block {
            let mut b: Vec<u8> = (0..size).map(|_| next()).collect();
            let (d, m) = (0.002 + b[0] as f32 / 50000.0, -0.01 + b[2] as f32 / 20000.0);
            b[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            if matches!(ggml, GgmlType::Q4_1 | GgmlType::Q4_K) {
                b[2..4].copy_from_slice(&half::f16::from_f32(m).to_le_bytes());
            }
            if ggml == GgmlType::Q6_K {
                // Q6_K's d is its last two bytes; the signed 8-bit group scales multiply it.
                b[208..].copy_from_slice(&half::f16::from_f32(d / 64.0).to_le_bytes());
            }
            bytes.extend(b);
        }
        bytes
    }

    #[test]
    fn quantized_forward_matches_the_decoded_product() {
        // Candle's decoding (the many-row path) and the block kernel (the few-row
        // path) must both equal the project's own decoding.
        for ggml in [GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            check_type(ggml);
        }
    }

    fn check_type(ggml: GgmlType) {
        let (out, inp) = (48, 768);
        let bytes = blocks(ggml, out, inp);
        let view = QuantView {
            name: "w",
            ggml,
            shape: [out, inp],
            bytes: &bytes,
        };
        let q = QuantMatrix::new(view).unwrap();
        let w = Tensor::from_vec(view.to_f32(), (out, inp), &Device::Cpu).unwrap();
        for rows in [1, 7, 9, 33] {
            let x = Tensor::randn(0f32, 1.0, (rows, inp), &Device::Cpu).unwrap();
            let fast = q.forward(&x).unwrap();
            let exact = x.matmul(&w.t().unwrap()).unwrap();
            let err = (fast - &exact)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = exact.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            eprintln!("{ggml:?} rows {rows}: max error {err} of {scale}");
            assert!(err <= 2e-5 * scale, "{ggml:?} rows {rows}: {err} vs {scale}");
        }
    }
}
