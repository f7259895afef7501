//! The GGUF container (llama.cpp's model file): its header, metadata and
//! tensor table, read from the start of the file without touching a weight.
//!
//! Written here rather than taken from a crate: the maintained Rust readers
//! either belong to a tensor library (candle's `gguf_file`, which `lora-core`
//! and `lora-nn` must not depend on) or panic on a truncated file and read the
//! tensor type as an enum without checking it (`ggus` 0.5). This reader bounds
//! every length by the file's size, so a broken file is an error, never a
//! panic or a huge allocation.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// An integer of any width as `u64` (negative values are `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml's element types that the models read; any other is named by [`type_name`].
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    /// The 4-bit k-quant: super-blocks of 256 in eight sub-blocks of 32, each
    /// with a 6-bit scale and a 6-bit minimum.
    Q4_K,
    /// The 6-bit k-quant: super-blocks of 256 in sixteen groups of 16, each
    /// with an 8-bit signed scale (llama.cpp's Q4_K_M keeps its most sensitive
    /// matrices in it).
    Q6_K,
}

impl GgmlType {
    /// Every type the models read, in ggml's id order.
    pub const ALL: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];

    /// The type with ggml's id, when the models read it.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            14 => GgmlType::Q6_K,
            _ => return None,
        })
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_K => (256, 144),
            GgmlType::Q6_K => (256, 210),
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block().0 > 1
    }

    pub fn name(self) -> &'static str {
        type_name(self as u32).unwrap_or("?")
    }
}

/// The types the models read, for messages.
pub const SUPPORTED_TYPES: &str = "F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K";

/// ggml's name of a type id (llama.cpp's `ggml_type`), known or not.
pub fn type_name(id: u32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16",
        "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES.get(id as usize).copied()
}

impl From<GgmlType> for u32 {
    fn from(t: GgmlType) -> u32 {
        match t {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q6_K => 14,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's order: `dims[0]` varies fastest (a matrix `[out, in]` is `[in, out]` here).
    pub dims: Vec<u64>,
    /// ggml's type id (see [`GgmlType::from_id`]).
    pub type_id: u32,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The shape in row-major order (`[out, in]` for a matrix).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn numel(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// The type, when the models read it.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        GgmlType::from_id(self.type_id)
    }

    pub fn type_name(&self) -> String {
        type_name(self.type_id).map_or_else(|| format!("type {}", self.type_id), str::to_string)
    }

    /// Bytes of the data, for a type the models read whose rows are whole blocks.
    pub fn nbytes(&self) -> Option<u64> {
        let (block, size) = self.ggml_type()?.block();
        let n = self.numel();
        (n.is_multiple_of(block as u64) && self.dims.first().is_some_and(|d| d % block as u64 == 0))
            .then(|| n / block as u64 * size as u64)
    }
}

/// A GGUF file's header: metadata, tensor table and where the data starts.
#[derive(Debug, Clone)]
pub struct Header {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the data section in the file.
    pub data_offset: u64,
    pub file_len: u64,
}

/// A reader that knows how many bytes remain, so that no length read from the
/// file makes it allocate more than the file holds.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Cursor<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        self.bytes().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        self.bytes().map(u64::from_le_bytes)
    }

    /// A count of items of at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, what: &str, min_size: u64) -> std::io::Result<usize> {
        let n = self.u64()?;
        if n.saturating_mul(min_size) > self.len.saturating_sub(self.pos) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{what} count {n} does not fit the {} bytes left", self.len - self.pos),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> std::io::Result<String> {
        let n = self.count("string length", 1)?;
        let mut buf = vec![0u8; n];
        self.inner.read_exact(&mut buf)?;
        self.pos += n as u64;
        String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::io::Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.bytes::<1>()?[0]),
            1 => Value::I8(self.bytes::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth < 4 => {
                let item = self.u32()?;
                let n = self.count("array length", 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown metadata value type {other}"),
                ));
            }
        })
    }
}

impl Header {
    /// Reads the header of the file at `path` (only the header's bytes).
    pub fn read(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open GGUF file", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("cannot stat GGUF file", path, e))?
            .len();
        Self::parse(BufReader::with_capacity(1 << 20, file), len, path)
    }

    /// Parses a header from `reader`, the start of a file of `len` bytes.
    pub fn parse(reader: impl Read, len: u64, path: &Path) -> Result<Self> {
        let bad = |what: String| Error::Data(format!("{}: not a readable GGUF file: {what}", path.display()));
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad("the file ends inside its header (truncated?)".into()),
            _ => bad(e.to_string()),
        };
        let mut c = Cursor {
            inner: reader,
            pos: 0,
            len,
        };
        if &c.bytes::<4>().map_err(io)? != MAGIC {
            return Err(bad("it does not start with `GGUF`".into()));
        }
        let version = c.u32().map_err(io)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("version {version}; versions 2 and 3 are read")));
        }
        // A tensor entry takes at least 24 bytes, a metadata pair at least 13.
        let n_tensors = c.count("tensor", 24).map_err(io)?;
        let n_kv = c.count("metadata", 13).map_err(io)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string().map_err(io)?;
            let ty = c.u32().map_err(io)?;
            let value = c.value(ty, 0).map_err(io)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string().map_err(io)?;
            let n_dims = c.u32().map_err(io)?;
            if n_dims > 4 {
                return Err(bad(format!("tensor `{name}` has {n_dims} dimensions (at most 4)")));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64())
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(io)?;
            let type_id = c.u32().map_err(io)?;
            let offset = c.u64().map_err(io)?;
            tensors.push(TensorInfo {
                name,
                dims,
                type_id,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .filter(|&a| a > 0)
            .unwrap_or(DEFAULT_ALIGNMENT);
        let data_offset = c.pos.div_ceil(alignment) * alignment;
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_offset,
            file_len: len,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The architecture (`general.architecture`).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Checks every tensor's type and extent: an unread type, a row that is not
    /// whole blocks, or data past the end of the file (a truncated download) is an error.
    pub fn check_tensors(&self) -> Result<()> {
        let mut problems = Vec::new();
        let mut unsupported: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for t in &self.tensors {
            let Some(n) = t.nbytes() else {
                if t.ggml_type().is_none() {
                    unsupported.entry(t.type_name()).or_default().push(&t.name);
                } else {
                    problems.push(format!("tensor `{}` of shape {:?} is not whole blocks", t.name, t.dims));
                }
                continue;
            };
            let end = self.data_offset.saturating_add(t.offset).saturating_add(n);
            if end > self.file_len {
                problems.push(format!(
                    "tensor `{}` ends at byte {end}, past the end of the {}-byte file (truncated?)",
                    t.name, self.file_len
                ));
                break;
            }
        }
        for (ty, names) in unsupported {
            problems.insert(
                0,
                format!(
                    "{} tensors of quantization type {ty} (e.g. `{}`); the types read are {SUPPORTED_TYPES}",
                    names.len(),
                    names[0]
                ),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Data(format!("{}: {}", self.path.display(), problems.join("; "))))
        }
    }
}

/// Writes a GGUF file in memory (tests and fixtures): metadata and tensors given as raw bytes.
pub fn write(metadata: &[(&str, Value)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
    let tensors: Vec<TensorBytes<'_>> = tensors
        .iter()
        .map(|(name, dims, ty, bytes)| TensorBytes {
            name,
            dims: dims.clone(),
            type_id: *ty,
            bytes,
        })
        .collect();
    let mut out = Vec::new();
    write_to(&mut out, metadata, &tensors).expect("writing to memory does not fail");
    out
}

/// A tensor to write: its name, ggml-order dimensions (`dims[0]` varies
/// fastest), ggml type id and stored bytes.
#[derive(Debug, Clone)]
pub struct TensorBytes<'a> {
    pub name: &'a str,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub bytes: &'a [u8],
}

/// Writes a GGUF (version 3) file: header, metadata in the given order, the
/// tensor table, then each tensor's bytes at the default 32-byte alignment.
pub fn write_to(
    out: &mut impl std::io::Write,
    metadata: &[(&str, Value)],
    tensors: &[TensorBytes<'_>],
) -> std::io::Result<()> {
    fn value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::Str(s) => {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
            Value::Array(items) => {
                out.extend(items.first().map_or(4, type_id).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| value(out, i));
            }
        }
    }
    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    let mut head = MAGIC.to_vec();
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        value(&mut head, &Value::Str(k.to_string()));
        head.extend(type_id(v).to_le_bytes());
        value(&mut head, v);
    }
    let align = |n: u64| n.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    let mut offset = 0u64;
    for t in tensors {
        value(&mut head, &Value::Str(t.name.to_string()));
        head.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| head.extend(d.to_le_bytes()));
        head.extend(t.type_id.to_le_bytes());
        head.extend(offset.to_le_bytes());
        offset = align(offset + t.bytes.len() as u64);
    }
    head.resize(align(head.len() as u64) as usize, 0);
    out.write_all(&head)?;
    let zeros = [0u8; DEFAULT_ALIGNMENT as usize];
    for t in tensors {
        out.write_all(t.bytes)?;
        let pad = align(t.bytes.len() as u64) - t.bytes.len() as u64;
        out.write_all(&zeros[..pad as usize])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let f32s: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
        write(
            &[
                ("general.architecture", Value::Str("llama".into())),
                ("llama.block_count", Value::U32(2)),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::Str("a".into()), Value::Str("b".into())]),
                ),
            ],
            &[("w", vec![4, 2], 0, f32s), ("q", vec![32, 1], 3, vec![0; 20])],
        )
    }

    #[test]
    fn reads_metadata_and_tensor_table_of_a_written_file() {
        let bytes = sample();
        let h = Header::parse(&bytes[..], bytes.len() as u64, Path::new("x.gguf")).unwrap();
        assert_eq!(h.architecture(), Some("llama"));
        assert_eq!(h.get("llama.block_count").and_then(Value::as_u64), Some(2));
        assert_eq!(
            h.get("tokenizer.ggml.tokens").and_then(Value::as_array).unwrap().len(),
            2
        );
        let w = h.tensor("w").unwrap();
        assert_eq!((w.shape(), w.nbytes()), (vec![2, 4], Some(32)));
        assert_eq!(h.tensor("q").unwrap().nbytes(), Some(20));
        assert_eq!(h.data_offset % 32, 0);
        h.check_tensors().unwrap();
    }

    #[test]
    fn a_truncated_file_is_an_error_at_any_cut() {
        let bytes = sample();
        for cut in [0, 3, 10, 30, 60, 100, bytes.len() - 40, bytes.len() - 13] {
            let path = Path::new("cut.gguf");
            let r = Header::parse(&bytes[..cut], cut as u64, path).and_then(|h| h.check_tensors());
            let err = r.expect_err(&format!("cut at {cut}")).to_string();
            assert!(err.contains("truncated") || err.contains("GGUF"), "{cut}: {err}");
        }
    }

    #[test]
    fn an_unsupported_quantization_type_is_named() {
        let bytes = write(&[], &[("k", vec![256, 1], 13, vec![0; 176])]);
        let h = Header::parse(&bytes[..], bytes.len() as u64, Path::new("k.gguf")).unwrap();
        let err = h.check_tensors().unwrap_err().to_string();
        assert!(err.contains("Q5_K") && err.contains(SUPPORTED_TYPES), "{err}");
    }

    #[test]
    fn a_huge_length_does_not_allocate() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.extend([0u8; 16]);
        let err = Header::parse(&bytes[..], bytes.len() as u64, Path::new("h.gguf")).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
