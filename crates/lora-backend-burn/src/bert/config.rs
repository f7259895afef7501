//! The BERT configuration is backend-independent: see `lora_core::bert`.

pub use lora_core::bert::BertConfig;
