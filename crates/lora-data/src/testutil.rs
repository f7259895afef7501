//! Fixtures for the unit tests: a tiny BERT-style tokenizer and pipeline files.

use std::path::{Path, PathBuf};

use lora_core::config::{Component, PipelineConfig};
use lora_core::stage::{NoAssets, StageContext};
use serde_json::json;

/// Words of the tiny vocabulary, after the special tokens.
const WORDS: &[&str] = &[
    "a", "man", "is", "eating", "food", ".", "the", "film", "movie", "was", "good", "bad", "great", "awful", "cafe",
    "play", "##ing", "##s", "fun", "very", "!",
];

/// A WordPiece `tokenizer.json` in the layout Hugging Face exports, including a
/// fixed padding to 16 and truncation at 16 that [`crate::TextEncoder`] must override.
/// `[PAD]` gets id `pad_id` (the other specials fill the ids around it).
pub fn tokenizer_json(pad_id: usize) -> String {
    let mut vocab: Vec<&str> = vec!["[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    vocab.extend_from_slice(WORDS);
    vocab.insert(pad_id, "[PAD]");
    let id = |t: &str| vocab.iter().position(|v| *v == t).unwrap();
    let special = |t: &str| {
        json!({"id": id(t), "content": t, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(special);
    json!({
        "version": "1.0",
        "truncation": {"max_length": 16, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": id("[PAD]"), "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [id("[CLS]")], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [id("[SEP]")], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": map}
    })
    .to_string()
}

/// Ids in the default fixture (`[PAD]` = 0).
pub const PAD: u32 = 0;
pub const CLS: u32 = 2;
pub const SEP: u32 = 3;

/// Writes the default tokenizer (`[PAD]` = 0) into `dir`.
pub fn write_tokenizer(dir: &Path) -> PathBuf {
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tokenizer_json(0)).unwrap();
    path
}

pub fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A whole pipeline around the given `[data]` body, so that components carry real spans.
pub fn data_component(data_body: &str) -> Component {
    let text = format!(
        "[run]\nname = \"t\"\noutput-dir = \"out\"\n\n[data]\n{data_body}\n\n[model]\ntype = \"m\"\n\n\
         [lora]\nr = 4\nalpha = 8\ntarget-modules = [\"query\"]\n\n[train]\n\n[eval]\n"
    );
    PipelineConfig::parse(Path::new("pipeline.toml"), text).unwrap().data
}

pub fn ctx(seed: u64, tokenizer: Option<PathBuf>) -> StageContext<'static> {
    StageContext {
        seed,
        assets: &NoAssets,
        tokenizer,
    }
}

/// Toml string literal of a path.
pub fn lit(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// The text batch inside a batch (`Batch` is non-exhaustive).
pub fn text_batch(b: lora_core::Batch) -> lora_core::TextBatch {
    match b {
        lora_core::Batch::Text(t) => t,
        _ => panic!("expected a text batch"),
    }
}
