//! A chat model's own tokenizer and template, read from its GGUF file: the
//! byte-level BPE of `tokenizer.ggml.*` rebuilt as a `tokenizers` tokenizer,
//! and `tokenizer.chat_template` rendered with `minijinja` (the Jinja dialect
//! Hugging Face's templates are written in).

use std::path::Path;

use lora_core::gguf::{Header, Value};
use lora_core::{Error, Result};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The roles of ChatML (the template of every chat model read here): a
/// conversation with another role is rejected before any work.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// ggml's token type of control tokens (`<|im_start|>`, `<|endoftext|>`, ...).
const CONTROL: i64 = 3;

/// A token's byte range in the text it came from.
pub type Offsets = (usize, usize);

/// The tokenizer and chat template of a GGUF model.
pub struct ChatTokenizer {
    pub tokenizer: Tokenizer,
    /// The template, parsed once.
    env: minijinja::Environment<'static>,
    /// The end-of-turn token (`tokenizer.ggml.eos_token_id`).
    pub eos_id: u32,
    pub eos_token: String,
    pub bos_token: String,
    /// The padding id (`tokenizer.ggml.padding_token_id`, else the end-of-turn token).
    pub pad_id: u32,
}

fn strings<'a>(h: &'a Header, key: &str) -> Result<Vec<&'a str>> {
    let bad = || {
        Error::Data(format!(
            "{}: `{key}` is missing or not a list of strings",
            h.path.display()
        ))
    };
    h.get(key)
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_str().ok_or_else(bad))
        .collect()
}

impl ChatTokenizer {
    /// Reads the header of the GGUF file at `path` (never its weights).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        Self::from_header(&Header::read(path)?)
    }

    pub fn from_header(h: &Header) -> Result<Self> {
        let path = h.path.display();
        let model = h
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        if model != "gpt2" {
            return Err(Error::Data(format!(
                "{path}: tokenizer model `{model}` is not supported (only `gpt2`, byte-level BPE)"
            )));
        }
        let tokens = strings(h, "tokenizer.ggml.tokens")?;
        let merges = strings(h, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match h.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_f64().map_or(1, |x| x as i64)).collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Data(format!("{path}: merge `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Data(format!("{path}: cannot build the BPE tokenizer: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        // llama.cpp's pre-tokenizer names: `smollm` splits digits one by one, then GPT-2's regex.
        let byte_level = ByteLevel::new(false, true, true);
        let pre = h.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
        match pre {
            "smollm" => {
                tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()])));
            }
            "gpt2" | "default" => {
                tokenizer.with_pre_tokenizer(Some(byte_level));
            }
            other => {
                return Err(Error::Data(format!(
                    "{path}: pre-tokenizer `{other}` is not supported (smollm, gpt2, default)"
                )));
            }
        }
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == CONTROL)
            .map(|(s, _)| AddedToken::from(s.to_string(), true))
            .collect();
        tokenizer
            .add_special_tokens(special)
            .map_err(|e| Error::Data(format!("{path}: cannot add the special tokens: {e}")))?;
        let id = |key: &str| h.get(key).and_then(Value::as_u64).map(|v| v as u32);
        let eos_id = id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| Error::Data(format!("{path}: no `tokenizer.ggml.eos_token_id`")))?;
        let name = |i: u32| tokens.get(i as usize).map(|s| s.to_string());
        let eos_token =
            name(eos_id).ok_or_else(|| Error::Data(format!("{path}: end-of-turn id {eos_id} out of range")))?;
        let bos_token = id("tokenizer.ggml.bos_token_id").and_then(name).unwrap_or_default();
        let template = h
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Data(format!("{path}: no `tokenizer.chat_template`")))?
            .to_string();
        let mut env = minijinja::Environment::new();
        env.add_template_owned("chat", template)
            .map_err(|e| Error::Data(format!("{path}: the chat template does not parse: {e}")))?;
        Ok(Self {
            tokenizer,
            env,
            eos_id,
            eos_token,
            bos_token,
            pad_id: id("tokenizer.ggml.padding_token_id").unwrap_or(eos_id),
        })
    }

    /// The conversation rendered by the model's template.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        self.env
            .get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| Error::Data(format!("the chat template cannot render: {e}")))
    }

    /// Token ids of `text` (special tokens written in it are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Data(format!("cannot tokenize: {e}")))
    }

    /// Token ids and each token's byte offsets in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Offsets>)> {
        self.tokenizer
            .encode(text, false)
            .map(|e| (e.get_ids().to_vec(), e.get_offsets().to_vec()))
            .map_err(|e| Error::Data(format!("cannot tokenize: {e}")))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::Data(format!("cannot decode: {e}")))
    }
}
