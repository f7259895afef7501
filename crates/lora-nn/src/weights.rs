//! Base weights as typed views of memory-mapped bytes: a backend decodes each
//! tensor when a model asks for it (or keeps it in its stored type), so no
//! file is ever decoded whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lora_core::{Error, Result};
use safetensors::SafeTensors;

/// The element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    F16,
    Bf16,
}

impl WeightDType {
    fn size(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::F16 | WeightDType::Bf16 => 2,
        }
    }
}

/// One stored tensor: its type, shape and little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct WeightView<'a> {
    pub name: &'a str,
    pub dtype: WeightDType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl WeightView<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (for a backend or an operation that computes in f32).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes;
        match self.dtype {
            WeightDType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            WeightDType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            WeightDType::Bf16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

/// Where the base weights come from: views by name.
pub trait WeightSource {
    fn view(&self, name: &str) -> Result<WeightView<'_>>;
    fn contains(&self, name: &str) -> bool;
}

/// Where a tensor lies in the map: its type (or the name of one models cannot read), shape and bytes.
type Entry = (Result<WeightDType, String>, Vec<usize>, std::ops::Range<usize>);

/// A safetensors file, memory-mapped; its header is checked when opened.
pub struct SafetensorsFile {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Name -> (dtype, shape, byte range in the map); a type models cannot
    /// read (the integer `position_ids` of some checkpoints) is an error only when asked for.
    index: HashMap<String, Entry>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open weights", path, e))?;
        // SAFETY: the file is opened read-only and never written while mapped;
        // the asset cache and run folders are write-once (written, then renamed into place).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io("cannot map weights", path, e))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| Error::Data(format!("{}: cannot read safetensors: {e}", path.display())))?;
        let base = map.as_ptr() as usize;
        let mut index = HashMap::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => Ok(WeightDType::F32),
                safetensors::Dtype::F16 => Ok(WeightDType::F16),
                safetensors::Dtype::BF16 => Ok(WeightDType::Bf16),
                other => Err(format!("{other:?}")),
            };
            let start = view.data().as_ptr() as usize - base;
            index.insert(name, (dtype, view.shape().to_vec(), start..start + view.data().len()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            index,
        })
    }
}

impl WeightSource for SafetensorsFile {
    fn view(&self, name: &str) -> Result<WeightView<'_>> {
        let (name, (dtype, shape, range)) = self
            .index
            .get_key_value(name)
            .ok_or_else(|| Error::Data(format!("{}: no tensor `{name}`", self.path.display())))?;
        let dtype = *dtype.as_ref().map_err(|t| {
            Error::Data(format!(
                "{}: tensor `{name}` has type {t}; f32, f16 and bf16 are read",
                self.path.display()
            ))
        })?;
        let bytes = &self.map[range.clone()];
        if bytes.len() != shape.iter().product::<usize>() * dtype.size() {
            return Err(Error::Data(format!(
                "{}: tensor `{name}` has {} bytes for shape {shape:?}",
                self.path.display(),
                bytes.len()
            )));
        }
        Ok(WeightView {
            name,
            dtype,
            shape,
            bytes,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// f32 tensors built in memory (tests, tools), stored as little-endian bytes.
#[derive(Debug, Default, Clone)]
pub struct HostWeights(HashMap<String, (Vec<usize>, Vec<u8>)>);

impl HostWeights {
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, values: &[f32]) {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape and values disagree"
        );
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.0.insert(name.into(), (shape, bytes));
    }
}

impl WeightSource for HostWeights {
    fn view(&self, name: &str) -> Result<WeightView<'_>> {
        let (name, (shape, bytes)) = self
            .0
            .get_key_value(name)
            .ok_or_else(|| Error::Data(format!("missing weight `{name}`")))?;
        Ok(WeightView {
            name,
            dtype: WeightDType::F32,
            shape,
            bytes,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}
