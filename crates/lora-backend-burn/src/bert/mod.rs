//! A BERT-family encoder with LoRA-aware linears, loaded from Hugging Face
//! safetensors, and the `BertForSequenceClassification` layout on top.

pub mod classifier;
pub mod config;
pub mod encoder;

pub use config::BertConfig;
