//! The data stage of lora-scripts: text classification (`csv`, `jsonl`) and
//! image classification (`idx`, `mnist-json`, in [`image`]).
//!
//! Two sources, `csv` and `jsonl`, share one schema ([`DataConfig`]): rows are
//! read (tolerating mojibake), labels mapped to class ids, a seeded validation
//! split taken, every text tokenised once, and batches padded to the longest
//! sequence of each batch. Both register in [`lora_core::registry`]; a binary
//! sees them once it links this crate (`use lora_data as _;`).

pub mod augment;
pub mod chat;
pub mod chat_template;
pub mod config;
pub mod dataset;
pub mod facts;
pub mod image;
pub mod labels;
pub mod read;
pub mod split;
pub mod stage;
pub mod tokenize;
pub mod truncation;

pub use config::{DataConfig, OnUnknownLabel, SourceFormat};
pub use dataset::{TextDataset, collate};
pub use labels::LabelMap;
pub use stage::{TextData, TextSplits};
pub use tokenize::{Encoded, TextEncoder};

use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::inventory;
use lora_core::registry::DataSourceEntry;
use lora_core::stage::DataStage;

fn build_csv(component: &Component) -> Result<Box<dyn DataStage>, Diagnostics> {
    Ok(Box::new(TextData::from_component(component, "csv")?))
}

fn build_jsonl(component: &Component) -> Result<Box<dyn DataStage>, Diagnostics> {
    Ok(Box::new(TextData::from_component(component, "jsonl")?))
}

fn build_chat(component: &Component) -> Result<Box<dyn DataStage>, Diagnostics> {
    Ok(Box::new(chat::ChatData::from_component(component)?))
}

inventory::submit! {
    DataSourceEntry {
        name: "chat",
        summary: "conversations (JSONL messages, or chitchat-dataset's JSON) or plain texts for a causal language model, rendered with the model's chat template",
        build: build_chat,
    }
}

inventory::submit! {
    DataSourceEntry {
        name: "csv",
        summary: "text classification from a CSV file with a header row (text and label columns)",
        build: build_csv,
    }
}

inventory::submit! {
    DataSourceEntry {
        name: "jsonl",
        summary: "text classification from a JSON-lines file (one object per line with text and label)",
        build: build_jsonl,
    }
}

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests {
    use lora_core::registry::{DataSourceEntry, entries, lookup};

    use crate::testutil::data_component;

    #[test]
    fn csv_and_jsonl_are_registered_and_build_from_their_tables() {
        let names: Vec<&str> = entries::<DataSourceEntry>().iter().map(|e| e.name).collect();
        assert!(names.contains(&"csv") && names.contains(&"jsonl"), "{names:?}");
        for ty in ["csv", "jsonl"] {
            let c = data_component(&format!("type = \"{ty}\"\npath = \"d\""));
            let entry = lookup::<DataSourceEntry>(&c, |_| true).unwrap();
            assert!((entry.build)(&c).is_ok());
        }
        let c = data_component("type = \"csv\"\npath = \"d\"\nvalidation-fraction = 0");
        let entry = lookup::<DataSourceEntry>(&c, |_| true).unwrap();
        let Err(d) = (entry.build)(&c) else {
            panic!("expected a range error")
        };
        assert_eq!(d.0[0].code, "data::invalid-value");
    }
}
