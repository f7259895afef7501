//! Base weights by name: Hugging Face safetensors files, or host tensors built in memory.
//!
//! Weights reach the model as [`HostTensor`]s (f32, row-major, PEFT/Hugging Face
//! layout: linears are `[out, in]`), so tests and tools can hand the same
//! numbers to every backend without a tensor type.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData, bf16, f16};
use lora_core::{Error, HostTensor, Result};
use safetensors::tensor::{Dtype, Metadata};

/// A host tensor as a burn tensor, after checking its shape against the configuration.
pub fn tensor<const D: usize>(t: HostTensor, name: &str, dims: [usize; D], device: &Device) -> Result<Tensor<D>> {
    if t.shape != dims {
        return Err(Error::Data(format!(
            "weight `{name}` has shape {:?}, but the model configuration needs {dims:?}",
            t.shape
        )));
    }
    Ok(Tensor::from_data(TensorData::new(t.data, dims), device))
}

/// A burn tensor's values on the host, row-major.
pub fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().try_into_vec::<f32>().map_err(|e| Error::Backend {
        backend: crate::BACKEND,
        message: format!("{e:?}"),
    })
}

/// Where the base weights come from: a name -> tensor lookup.
pub trait WeightSource {
    fn get(&self, name: &str) -> Result<HostTensor>;
    fn contains(&self, name: &str) -> bool;
}

impl WeightSource for HashMap<String, HostTensor> {
    fn get(&self, name: &str) -> Result<HostTensor> {
        HashMap::get(self, name)
            .cloned()
            .ok_or_else(|| Error::Data(format!("missing weight `{name}`")))
    }
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }
}

/// A safetensors file read once into memory; tensors are decoded to f32 when asked for.
pub struct SafetensorsWeights {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Byte offset of the data section (after the 8-byte length and the JSON header).
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsWeights {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read model weights", path, e))?;
        let (header, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::Data(format!("{}: cannot read safetensors: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            data_start: 8 + header,
            bytes,
            metadata,
        })
    }

    fn bad(&self, name: &str, what: impl std::fmt::Display) -> Error {
        Error::Data(format!("{}: tensor `{name}`: {what}", self.path.display()))
    }
}

impl WeightSource for SafetensorsWeights {
    fn get(&self, name: &str) -> Result<HostTensor> {
        let info = self.metadata.info(name).ok_or_else(|| self.bad(name, "not found"))?;
        let (start, end) = info.data_offsets;
        let raw = self
            .bytes
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| self.bad(name, "data offsets out of range"))?;
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
            other => return Err(self.bad(name, format!("dtype {other:?} is not a float type"))),
        };
        if data.len() != info.shape.iter().product::<usize>() {
            return Err(self.bad(name, "data size does not match its shape"));
        }
        Ok(HostTensor::new(info.shape.clone(), data))
    }

    fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }
}
