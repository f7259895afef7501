//! GGUF weights as views of the memory-mapped file: quantized matrices stay
//! in their blocks (a backend with a quantized matmul computes with them; one
//! without decodes them at load), and single rows decode on demand (the
//! token embedding is read row by row, never expanded whole).
//!
//! The container's header is `lora_core::gguf`'s; this module adds the data.

use std::path::Path;

use lora_core::gguf::{GgmlType, Header, TensorInfo};
use lora_core::{Error, Result};

/// A stored matrix `[out, in]` in ggml's block format: rows are whole blocks.
#[derive(Debug, Clone, Copy)]
pub struct QuantView<'a> {
    pub name: &'a str,
    pub ggml: GgmlType,
    /// `[out, in]`.
    pub shape: [usize; 2],
    pub bytes: &'a [u8],
}

impl QuantView<'_> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        let (block, size) = self.ggml.block();
        self.shape[1] / block * size
    }

    /// Every value as f32, row-major `[out, in]`.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.shape[0] * self.shape[1]];
        decode(self.ggml, self.bytes, &mut out);
        out
    }

    /// Rows `ids` as f32 `[ids.len(), in]`; an id out of range is an error.
    pub fn rows_to_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let (width, rb) = (self.shape[1], self.row_bytes());
        let mut out = vec![0.0; ids.len() * width];
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(width)) {
            let id = id as usize;
            if id >= self.shape[0] {
                return Err(Error::Data(format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.shape[0]
                )));
            }
            decode(self.ggml, &self.bytes[id * rb..(id + 1) * rb], dst);
        }
        Ok(out)
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Decodes whole blocks of `bytes` into `out` (ggml's reference dequantization).
pub fn decode(ggml: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (block, size) = ggml.block();
    for (b, dst) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        match ggml {
            GgmlType::F32 => dst[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => dst[0] = f16(b),
            GgmlType::Q8_0 => {
                let d = f16(b);
                for (y, &q) in dst.iter_mut().zip(&b[2..34]) {
                    *y = q as i8 as f32 * d;
                }
            }
            GgmlType::Q4_0 => {
                let d = f16(b);
                for (j, &q) in b[2..18].iter().enumerate() {
                    dst[j] = ((q & 0x0f) as f32 - 8.0) * d;
                    dst[j + 16] = ((q >> 4) as f32 - 8.0) * d;
                }
            }
            GgmlType::Q4_1 => {
                let (d, m) = (f16(b), f16(&b[2..]));
                for (j, &q) in b[4..20].iter().enumerate() {
                    dst[j] = (q & 0x0f) as f32 * d + m;
                    dst[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
            GgmlType::Q5_0 => {
                let d = f16(b);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for (j, &q) in b[6..22].iter().enumerate() {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    dst[j] = (((q & 0x0f) as u32 | h0) as f32 - 16.0) * d;
                    dst[j + 16] = (((q >> 4) as u32 | h1) as f32 - 16.0) * d;
                }
            }
            GgmlType::Q4_K => decode_q4_k(b, dst),
            GgmlType::Q6_K => decode_q6_k(b, dst),
        }
    }
}

/// Sub-block `j`'s 6-bit scale and minimum, packed in 12 bytes (ggml's `get_scale_min_k4`).
pub fn q4_k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// One Q4_K super-block: `d`, `dmin` (f16), 12 bytes of scales, 128 bytes of
/// nibbles; each 64 values share 32 bytes, low nibbles first.
fn decode_q4_k(b: &[u8], dst: &mut [f32]) {
    let (d, dmin) = (f16(b), f16(&b[2..]));
    let scales = &b[4..16];
    for (chunk, (q, out)) in b[16..144].chunks_exact(32).zip(dst.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = q4_k_scale_min(2 * chunk, scales);
        let (sc2, m2) = q4_k_scale_min(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for (l, &v) in q.iter().enumerate() {
            out[l] = d1 * (v & 0x0f) as f32 - m1;
            out[l + 32] = d2 * (v >> 4) as f32 - m2;
        }
    }
}

/// One Q6_K super-block: `ql[128]` (low nibbles), `qh[64]` (2 high bits
/// each), 16 signed 8-bit scales, `d` (f16) last; level `q - 32`, group of 16
/// `g` scaled by `d * scales[g]` (ggml's `dequantize_row_q6_K`).
fn decode_q6_k(b: &[u8], dst: &mut [f32]) {
    let d = f16(&b[208..]);
    for (half, out) in dst.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * half..64 * (half + 1)];
        let qh = &b[128 + 32 * half..128 + 32 * (half + 1)];
        let sc = |k: usize| d * f32::from(b[192 + 8 * half + k] as i8);
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = sc(is) * q1 as f32;
            out[l + 32] = sc(is + 2) * q2 as f32;
            out[l + 64] = sc(is + 4) * q3 as f32;
            out[l + 96] = sc(is + 6) * q4 as f32;
        }
    }
}

/// `w . x` for one stored row `w` (whole blocks) and `x` of its length, in f32
/// without decoding the row: each block's scale (and offset) applies once to
/// the dot product of its integers with `x`. The same numbers as decoding then
/// multiplying, up to the order of the additions.
pub fn dot_row(ggml: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let (block, size) = ggml.block();
    let mut acc = 0.0f32;
    for (b, x) in row.chunks_exact(size).zip(x.chunks_exact(block)) {
        acc += match ggml {
            GgmlType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x[0],
            GgmlType::F16 => f16(b) * x[0],
            GgmlType::Q8_0 => f16(b) * b[2..34].iter().zip(x).map(|(&q, x)| q as i8 as f32 * x).sum::<f32>(),
            GgmlType::Q4_0 => {
                let (lo, hi) = x.split_at(16);
                let s: f32 = b[2..18]
                    .iter()
                    .zip(lo.iter().zip(hi))
                    .map(|(&q, (a, c))| ((q & 0x0f) as f32 - 8.0) * a + ((q >> 4) as f32 - 8.0) * c)
                    .sum();
                f16(b) * s
            }
            GgmlType::Q4_1 => {
                let (lo, hi) = x.split_at(16);
                let s: f32 = b[4..20]
                    .iter()
                    .zip(lo.iter().zip(hi))
                    .map(|(&q, (a, c))| (q & 0x0f) as f32 * a + (q >> 4) as f32 * c)
                    .sum();
                f16(b) * s + f16(&b[2..]) * x.iter().sum::<f32>()
            }
            // Rarer types: decode the block, then multiply.
            GgmlType::Q5_0 | GgmlType::Q4_K | GgmlType::Q6_K => {
                let mut w = [0f32; 256];
                decode(ggml, b, &mut w[..block]);
                w[..block].iter().zip(x).map(|(w, x)| w * x).sum()
            }
        };
    }
    acc
}

/// llama.cpp stores the rows of `q` and `k` of each head interleaved for its
/// pairwise RoPE: stored row `2i + j` of a head is Hugging Face's row
/// `j * head_dim/2 + i`. This puts the rows back in Hugging Face's order, for
/// rotate-half RoPE and for adapters whose rows mean what PEFT's mean.
pub fn unpermute_rows(bytes: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let rb = bytes.len() / rows;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * half + i;
                out[dst * rb..(dst + 1) * rb].copy_from_slice(&bytes[src * rb..(src + 1) * rb]);
            }
        }
    }
    out
}

/// A GGUF file, memory-mapped, with its header checked (types and extents).
pub struct GgufFile {
    pub header: Header,
    map: memmap2::Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let header = Header::read(path)?;
        header.check_tensors()?;
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open GGUF file", path, e))?;
        // SAFETY: opened read-only and never written while mapped; the asset
        // cache is write-once (written, then renamed into place).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io("cannot map GGUF file", path, e))?;
        if map.len() as u64 != header.file_len {
            return Err(Error::Data(format!(
                "{}: the file changed while it was read",
                path.display()
            )));
        }
        Ok(Self { header, map })
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.header
            .tensor(name)
            .ok_or_else(|| Error::Data(format!("{}: no tensor `{name}`", self.header.path.display())))
    }

    fn bytes(&self, t: &TensorInfo) -> &[u8] {
        // `check_tensors` at open proved every extent lies within the map.
        let start = (self.header.data_offset + t.offset) as usize;
        &self.map[start..start + t.nbytes().unwrap_or(0) as usize]
    }

    /// A matrix `[out, in]` in its stored blocks.
    pub fn matrix(&self, name: &str) -> Result<QuantView<'_>> {
        let t = self.info(name)?;
        let shape = t.shape();
        let (Some(ggml), &[out, inp]) = (t.ggml_type(), &shape[..]) else {
            return Err(Error::Data(format!(
                "{}: tensor `{name}` of type {} and shape {shape:?} is not a readable matrix",
                self.header.path.display(),
                t.type_name()
            )));
        };
        Ok(QuantView {
            name: &t.name,
            ggml,
            shape: [out, inp],
            bytes: self.bytes(t),
        })
    }

    /// A vector (a norm's gain) as f32.
    pub fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.info(name)?;
        let ggml = t
            .ggml_type()
            .ok_or_else(|| Error::Data(format!("tensor `{name}`: unreadable type")))?;
        let mut out = vec![0.0; t.numel() as usize];
        decode(ggml, self.bytes(t), &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_1_and_q8_0_blocks_decode_by_hand() {
        // Q4_1: d = 0.5, m = -1; nibbles j (low) and 15 - j (high).
        let mut b = Vec::new();
        b.extend(f16_bytes(0.5));
        b.extend(f16_bytes(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0; 32];
        decode(GgmlType::Q4_1, &b, &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[3], 0.5);
        assert_eq!(out[16], 6.5);
        // Q8_0: d = 0.25, values -16..16.
        let mut b = f16_bytes(0.25).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0.0; 32];
        decode(GgmlType::Q8_0, &b, &mut out);
        assert_eq!((out[0], out[16], out[31]), (-4.0, 0.0, 3.75));
    }

    #[test]
    fn dot_row_equals_decode_then_dot() {
        let mut s = 7u32;
        let mut next = || {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (s >> 16) as u8
        };
        let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
        for ggml in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::F16,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let (block, size) = ggml.block();
            let mut row = Vec::new();
            for _ in 0..256 / block {
                let mut b: Vec<u8> = (0..size).map(|_| next()).collect();
                if ggml == GgmlType::Q6_K {
                    // Q6_K's d is its last two bytes.
                    b[208..].copy_from_slice(&f16_bytes(0.001));
                } else if size > 4 {
                    b[..2].copy_from_slice(&f16_bytes(0.03));
                    b[2..4].copy_from_slice(&f16_bytes(-0.2));
                } else {
                    b[..2].copy_from_slice(&f16_bytes(next() as f32 / 100.0));
                }
                row.extend(b);
            }
            let mut w = vec![0.0; 256];
            decode(ggml, &row, &mut w);
            let expected: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
            let got = dot_row(ggml, &row, &x);
            assert!(
                (got - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                "{ggml:?}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // Two heads of head size 4, one-byte rows named by their Hugging Face index.
        let hf: Vec<u8> = (0..8).collect();
        // llama.cpp: reshape(heads, 2, half, ..).swapaxes(1, 2): stored row 2i + j = hf row j*half + i.
        let stored: Vec<u8> = (0..2)
            .flat_map(|h| (0..2).flat_map(move |i| (0..2).map(move |j| h * 4 + j * 2 + i)))
            .collect();
        assert_eq!(stored, [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(unpermute_rows(&stored, 8, 2), hf);
    }
}
