//! The candle backend of lora-scripts: [`CandleOps`] implements the tensor
//! operations of `lora-nn` on candle, with custom kernels ([`ops`]) whose
//! backward passes skip what LoRA never needs (frozen weights' gradients).
//! The models themselves are `lora-nn`'s, registered here for this backend.

pub mod error;
pub mod linear_ops;
pub mod ops;
pub mod quant;
pub mod sublayer_ops;
pub mod tensor_ops;
#[cfg(test)]
mod test_support;

pub use tensor_ops::CandleOps;

pub const BACKEND: &str = "candle";

lora_nn::register_models!(BACKEND, CandleOps::default());
