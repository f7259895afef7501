//! `[data] type = "chat"`: conversations (JSONL of `{"messages": [{role,
//! content}]}`, or chitchat-dataset's JSON) and plain texts for a causal
//! language model. Each conversation is rendered with the model's own chat
//! template and tokenized once; the loss is on the assistant's tokens (its
//! content and end-of-turn token) or on every token. Bad input (a role the
//! template lacks, a conversation past the limit with `truncation = "error"`)
//! is an invalid-input error before any work: exit 2, nothing written.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::init;
use lora_core::stage::{DataStage, Dataset, InputEncoder, PreparedData, StageContext};
use lora_core::{Batch, Error, Result, Task, TokenBatch};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::chat_template::{ChatTokenizer, Message, ROLES};

/// How the file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ChatFormat {
    /// One JSON object per line: `{"messages": [{"role": ..., "content": ...}, ...]}`.
    #[default]
    Jsonl,
    /// chitchat-dataset's `dataset.json`: conversation id -> `messages`, a list of
    /// turns, each a list of `{text, sender, timestamp}`; turns alternate user, assistant.
    Chitchat,
    /// One JSON object per line with a `text` field: completion data, loss on every token.
    Text,
}

/// What to do with a conversation longer than `max-length` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// An invalid-input error naming the conversation.
    #[default]
    Error,
    /// Keep the first `max-length` tokens.
    Right,
    /// Leave the conversation out.
    Drop,
}

/// Which tokens the loss is taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LossOn {
    /// The assistant's turns: content and end-of-turn token.
    #[default]
    Assistant,
    /// Every token after the first.
    All,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChatConfig {
    pub path: String,
    #[serde(default)]
    pub format: ChatFormat,
    /// A separate validation file (same format); otherwise `validation-fraction` is split off.
    pub validation_path: Option<String>,
    #[serde(default = "default_fraction")]
    pub validation_fraction: f64,
    /// Keep at most this many training conversations (a seeded sample).
    pub max_conversations: Option<usize>,
    /// Keep at most this many validation conversations (a seeded sample).
    pub max_validation: Option<usize>,
    /// Tokens per sequence; defaults to the model's context length.
    pub max_length: Option<usize>,
    #[serde(default)]
    pub truncation: Truncation,
    #[serde(default)]
    pub loss_on: LossOn,
    /// The text field of `format = "text"`.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Pack several training conversations into each row of `max-length`
    /// tokens, attention kept within each and positions restarting, instead of
    /// one right-padded row each. `batch-size` then counts packed rows. The
    /// validation split stays one conversation a row.
    #[serde(default)]
    pub packing: bool,
}

fn default_fraction() -> f64 {
    0.1
}

fn default_text_field() -> String {
    "text".into()
}

/// One example as read: a conversation or a plain text, and where it came from.
#[derive(Debug, Clone)]
enum Example {
    Chat(Vec<Message>),
    Text(String),
}

struct Row {
    /// `file:line` or `file:id`, for messages.
    origin: String,
    example: Example,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Data(format!("{}: {what}", path.display()))
}

fn read_rows(path: &Path, cfg: &ChatConfig) -> Result<Vec<Row>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open chat data", path, e))?;
    let mut rows = Vec::new();
    match cfg.format {
        ChatFormat::Jsonl | ChatFormat::Text => {
            #[derive(Deserialize)]
            struct Line {
                messages: Vec<Message>,
            }
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(|e| Error::io("cannot read chat data", path, e))?;
                if line.trim().is_empty() {
                    continue;
                }
                let origin = format!("{}:{}", path.display(), i + 1);
                let example = if cfg.format == ChatFormat::Text {
                    let v: serde_json::Value =
                        serde_json::from_str(&line).map_err(|e| Error::Data(format!("{origin}: not JSON: {e}")))?;
                    let text = v
                        .get(&cfg.text_field)
                        .and_then(|t| t.as_str())
                        .ok_or_else(|| Error::Data(format!("{origin}: no string field `{}`", cfg.text_field)))?;
                    Example::Text(text.to_string())
                } else {
                    let l: Line = serde_json::from_str(&line).map_err(|e| {
                        Error::Data(format!(
                            "{origin}: not a conversation ({{\"messages\": [{{\"role\", \"content\"}}]}}): {e}"
                        ))
                    })?;
                    Example::Chat(l.messages)
                };
                rows.push(Row { origin, example });
            }
        }
        ChatFormat::Chitchat => {
            #[derive(Deserialize)]
            struct Turn {
                text: String,
            }
            #[derive(Deserialize)]
            struct Conversation {
                messages: Vec<Vec<Turn>>,
            }
            let all: std::collections::BTreeMap<String, Conversation> =
                serde_json::from_reader(std::io::BufReader::new(file))
                    .map_err(|e| bad(path, format!("not chitchat-dataset JSON: {e}")))?;
            for (id, conv) in all {
                // Turns alternate speakers: the first is the user, the second the assistant.
                let messages: Vec<Message> = conv
                    .messages
                    .iter()
                    .enumerate()
                    .map(|(i, turn)| {
                        let text: Vec<&str> = turn.iter().map(|t| t.text.trim()).collect();
                        Message::new(if i % 2 == 0 { "user" } else { "assistant" }, &text.join("\n"))
                    })
                    .collect();
                rows.push(Row {
                    origin: format!("{}:{id}", path.display()),
                    example: Example::Chat(messages),
                });
            }
        }
    }
    if rows.is_empty() {
        return Err(bad(path, "no conversations"));
    }
    Ok(rows)
}

/// A tokenized sequence and the weight of each token as a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// `weights[i]` is the weight of predicting `ids[i]` (0 for the first token).
    pub weights: Vec<f32>,
}

/// Renders and tokenizes one conversation; the weights mark the assistant's
/// content and end-of-turn token (or every token with [`LossOn::All`]).
pub fn encode_chat(tok: &ChatTokenizer, messages: &[Message], loss_on: LossOn) -> Result<Sequence> {
    if let Some(m) = messages.iter().find(|m| !ROLES.contains(&m.role.as_str())) {
        return Err(Error::Data(format!(
            "role `{}` is not a role of the chat template ({})",
            m.role,
            ROLES.join(", ")
        )));
    }
    let text = tok.render(messages, false)?;
    let mut spans = Vec::new();
    for (i, _) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
        let before = tok.render(&messages[..i], true)?;
        let upto = tok.render(&messages[..=i], false)?;
        if !text.starts_with(&upto) || !upto.starts_with(&before) {
            return Err(Error::Data(
                "the chat template does not render a conversation as the concatenation of its turns".into(),
            ));
        }
        let turn = &upto[before.len()..];
        let Some(end) = turn.rfind(&tok.eos_token) else {
            return Err(Error::Data(format!(
                "the chat template ends no assistant turn with the end-of-turn token `{}`",
                tok.eos_token
            )));
        };
        spans.push(before.len()..before.len() + end + tok.eos_token.len());
    }
    let (ids, offsets) = tok.encode_with_offsets(&text)?;
    let weights = offsets
        .iter()
        .enumerate()
        .map(|(i, (start, _))| {
            let on = match loss_on {
                LossOn::All => i > 0,
                LossOn::Assistant => spans.iter().any(|s| s.contains(start)),
            };
            if on { 1.0 } else { 0.0 }
        })
        .collect();
    Ok(Sequence { ids, weights })
}

/// Tokenizes a plain text (completion data): the loss is on every token after the first.
pub fn encode_text(tok: &ChatTokenizer, text: &str) -> Result<Sequence> {
    let ids = tok.encode(text)?;
    let weights = (0..ids.len()).map(|i| if i > 0 { 1.0 } else { 0.0 }).collect();
    Ok(Sequence { ids, weights })
}

/// A tokenized split.
#[derive(Debug, Clone)]
pub struct ChatDataset {
    seqs: Vec<Sequence>,
    pad_id: u32,
    truncated: usize,
    /// With packing, the sequences of each row (indices into `seqs`).
    rows: Option<Vec<Vec<usize>>>,
}

impl ChatDataset {
    pub fn new(seqs: Vec<Sequence>, pad_id: u32, truncated: usize) -> Self {
        Self {
            seqs,
            pad_id,
            truncated,
            rows: None,
        }
    }

    /// The split packed into rows of at most `row_len` input tokens.
    pub fn packed(seqs: Vec<Sequence>, pad_id: u32, truncated: usize, row_len: usize) -> Self {
        let rows = pack(&seqs, row_len);
        Self {
            rows: Some(rows),
            ..Self::new(seqs, pad_id, truncated)
        }
    }

    pub fn sequences(&self) -> &[Sequence] {
        &self.seqs
    }
}

/// Input tokens of a sequence in a batch: all but its last.
fn inputs(s: &Sequence) -> usize {
    s.ids.len().saturating_sub(1)
}

/// Groups sequences into rows of at most `row_len` input tokens, first fit
/// over the sequences longest first (a sequence longer than a row gets a row
/// of its own). Deterministic: the same split packs the same way every epoch,
/// and the epochs shuffle the rows.
pub fn pack(seqs: &[Sequence], row_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(inputs(&seqs[i])), i));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let n = inputs(&seqs[i]);
        match rows.iter_mut().find(|(used, _)| used + n <= row_len) {
            Some((used, row)) => {
                *used += n;
                row.push(i);
            }
            None => rows.push((n, vec![i])),
        }
    }
    rows.into_iter().map(|(_, row)| row).collect()
}

/// Packs each row's sequences one after another, right-padded to the longest
/// row: the attention mask numbers the conversations of a row 1, 2, ... (0 is
/// padding), which the model reads as where attention stops and positions restart.
pub fn collate_packed(rows: &[Vec<&Sequence>], pad_id: u32) -> TokenBatch {
    let t = rows
        .iter()
        .map(|r| r.iter().map(|s| inputs(s)).sum::<usize>())
        .max()
        .unwrap_or(0);
    let n = rows.len() * t;
    let mut b = TokenBatch {
        batch_size: rows.len(),
        seq_len: t,
        input_ids: Vec::with_capacity(n),
        attention_mask: Vec::with_capacity(n),
        targets: Vec::with_capacity(n),
        weights: Vec::with_capacity(n),
    };
    for row in rows {
        let mut used = 0;
        for (k, s) in row.iter().enumerate() {
            let len = inputs(s);
            b.input_ids.extend_from_slice(&s.ids[..len]);
            b.targets.extend_from_slice(&s.ids[1.min(s.ids.len())..]);
            b.weights.extend_from_slice(&s.weights[1.min(s.weights.len())..]);
            b.attention_mask.extend(std::iter::repeat_n(k as u32 + 1, len));
            used += len;
        }
        let pad = t - used;
        b.input_ids.extend(std::iter::repeat_n(pad_id, pad));
        b.targets.extend(std::iter::repeat_n(pad_id, pad));
        b.weights.extend(std::iter::repeat_n(0.0, pad));
        b.attention_mask.extend(std::iter::repeat_n(0, pad));
    }
    b
}

/// Pads sequences on the right into a batch: the input is each sequence but its
/// last token, the targets each but its first; padding has weight 0.
pub fn collate(seqs: &[&Sequence], pad_id: u32) -> TokenBatch {
    let t = seqs.iter().map(|s| s.ids.len().saturating_sub(1)).max().unwrap_or(0);
    let n = seqs.len() * t;
    let (mut input_ids, mut attention_mask, mut targets, mut weights) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for s in seqs {
        let len = s.ids.len().saturating_sub(1);
        input_ids.extend_from_slice(&s.ids[..len]);
        targets.extend_from_slice(&s.ids[1.min(s.ids.len())..]);
        weights.extend_from_slice(&s.weights[1.min(s.weights.len())..]);
        attention_mask.extend(std::iter::repeat_n(1, len));
        let pad = t - len;
        input_ids.extend(std::iter::repeat_n(pad_id, pad));
        targets.extend(std::iter::repeat_n(pad_id, pad));
        weights.extend(std::iter::repeat_n(0.0, pad));
        attention_mask.extend(std::iter::repeat_n(0, pad));
    }
    TokenBatch {
        batch_size: seqs.len(),
        seq_len: t,
        input_ids,
        attention_mask,
        targets,
        weights,
    }
}

impl Dataset for ChatDataset {
    /// Rows: conversations, or packed rows.
    fn len(&self) -> usize {
        self.rows.as_ref().map_or(self.seqs.len(), Vec::len)
    }

    /// Every sequence's tokens and loss weights, for a checkpoint's data fingerprint.
    fn fingerprint(&self, feed: &mut dyn FnMut(&[u8])) -> bool {
        let mut bytes = Vec::new();
        for s in &self.seqs {
            bytes.clear();
            bytes.extend((s.ids.len() as u64).to_le_bytes());
            bytes.extend(s.ids.iter().flat_map(|id| id.to_le_bytes()));
            bytes.extend(s.weights.iter().flat_map(|w| w.to_bits().to_le_bytes()));
            feed(&bytes);
        }
        true
    }

    fn labels(&self) -> Vec<u32> {
        Vec::new()
    }

    fn truncated(&self) -> Option<usize> {
        Some(self.truncated)
    }

    fn batches(
        &self,
        batch_size: usize,
        order_seed: Option<u64>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if let Some(seed) = order_seed {
            order.shuffle(&mut init::rng(seed));
        }
        let batch_size = batch_size.max(1);
        let chunks: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
        Box::new(chunks.into_iter().map(move |idx| {
            Ok(Batch::Tokens(match &self.rows {
                Some(rows) => {
                    let rows: Vec<Vec<&Sequence>> = idx
                        .iter()
                        .map(|&r| rows[r].iter().map(|&i| &self.seqs[i]).collect())
                        .collect();
                    collate_packed(&rows, self.pad_id)
                }
                None => collate(&idx.iter().map(|&i| &self.seqs[i]).collect::<Vec<_>>(), self.pad_id),
            }))
        }))
    }
}

/// Renders prompts as one user turn each, for `lora predict` and the like.
struct PromptEncoder {
    tok: ChatTokenizer,
}

impl InputEncoder for PromptEncoder {
    fn input_kind(&self) -> &'static str {
        "text"
    }

    fn encode_inputs(&self, inputs: &[String]) -> Result<Batch> {
        let seqs = inputs
            .iter()
            .map(|p| {
                let text = self.tok.render(&[Message::new("user", p)], true)?;
                let ids = self.tok.encode(&text)?;
                Ok(Sequence {
                    weights: vec![0.0; ids.len()],
                    ids,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Batch::Tokens(collate(
            &seqs.iter().collect::<Vec<_>>(),
            self.tok.pad_id,
        )))
    }
}

/// The chat data stage.
pub struct ChatData {
    pub config: ChatConfig,
}

impl ChatData {
    pub fn from_component(c: &Component) -> std::result::Result<Self, Diagnostics> {
        let config: ChatConfig = c.deserialize()?;
        let mut d = Diagnostics::default();
        if !(config.validation_path.is_some()
            || (0.0..1.0).contains(&config.validation_fraction) && config.validation_fraction > 0.0)
        {
            d.push(
                Diagnostic::error(
                    "data::invalid-value",
                    format!(
                        "validation-fraction ({}) is out of range. Valid range: 0 < validation-fraction < 1",
                        config.validation_fraction
                    ),
                )
                .at(c.value_location("validation-fraction")),
            );
        }
        if config.max_length.is_some_and(|m| m < 2) {
            d.push(
                Diagnostic::error(
                    "data::invalid-value",
                    "max-length must be at least 2 tokens. Valid range: 2 <= max-length",
                )
                .at(c.value_location("max-length")),
            );
        }
        if d.has_errors() {
            return Err(d);
        }
        Ok(Self { config })
    }

    fn tokenizer(&self, ctx: &StageContext) -> Result<ChatTokenizer> {
        let path = ctx.tokenizer.as_ref().ok_or_else(|| {
            Error::Other(
                "the chat source needs a model whose file carries its tokenizer and chat template (llama-causal-lm)"
                    .into(),
            )
        })?;
        ChatTokenizer::from_gguf(path)
    }

    /// Tokenizes `rows`, applying the truncation policy; every bad row is one diagnostic.
    fn encode(&self, tok: &ChatTokenizer, rows: Vec<Row>, max_len: usize) -> Result<(Vec<Sequence>, usize)> {
        let mut diags = Diagnostics::default();
        let mut seqs = Vec::with_capacity(rows.len());
        let mut truncated = 0;
        for row in rows {
            let encoded = match &row.example {
                Example::Chat(m) => encode_chat(tok, m, self.config.loss_on),
                Example::Text(t) => encode_text(tok, t),
            };
            let mut seq = match encoded {
                Ok(s) => s,
                Err(e) => {
                    let code = if e.message().contains("role") {
                        "data::unknown-role"
                    } else {
                        "data::chat-unreadable"
                    };
                    diags.push(Diagnostic::error(code, format!("{}: {}", row.origin, e.message())));
                    continue;
                }
            };
            if seq.ids.len() > max_len {
                match self.config.truncation {
                    Truncation::Error => {
                        diags.push(
                            Diagnostic::error(
                                "data::conversation-too-long",
                                format!(
                                    "{}: {} tokens exceed the limit of {max_len} (max-length, at most the model's context)",
                                    row.origin,
                                    seq.ids.len()
                                ),
                            )
                            .help("set `truncation = \"right\"` to cut it, or `\"drop\"` to leave it out"),
                        );
                        continue;
                    }
                    Truncation::Right => {
                        seq.ids.truncate(max_len);
                        seq.weights.truncate(max_len);
                        truncated += 1;
                    }
                    Truncation::Drop => {
                        truncated += 1;
                        continue;
                    }
                }
            }
            if seq.ids.len() >= 2 && seq.weights.iter().any(|&w| w > 0.0) {
                seqs.push(seq);
            }
            if diags.0.len() >= 20 {
                break;
            }
        }
        if diags.has_errors() {
            return Err(Error::Invalid(diags));
        }
        Ok((seqs, truncated))
    }

    fn path(&self, ctx: &StageContext, p: &str) -> Result<PathBuf> {
        ctx.assets.resolve(p)
    }

    /// The splits, tokenized, with the maximum length used.
    pub fn load(&self, ctx: &StageContext) -> Result<(ChatDataset, ChatDataset, ChatTokenizer)> {
        let tok = self.tokenizer(ctx)?;
        let context = lora_core::gguf::Header::read(ctx.tokenizer.as_ref().expect("checked"))?
            .get("llama.context_length")
            .and_then(lora_core::gguf::Value::as_u64)
            .map_or(usize::MAX, |v| v as usize);
        let max_len = self.config.max_length.unwrap_or(context).min(context);
        let c = &self.config;
        let rows = read_rows(&self.path(ctx, &c.path)?, c)?;
        let (train, validation) = match &c.validation_path {
            Some(v) => (rows, read_rows(&self.path(ctx, v)?, c)?),
            None => crate::split::split_off_validation(rows, c.validation_fraction, ctx.seed),
        };
        let train = crate::split::sample(train, c.max_conversations, ctx.seed);
        let validation = crate::split::sample(validation, c.max_validation, ctx.seed ^ 0x5a5a);
        let (t, tt) = self.encode(&tok, train, max_len)?;
        let (v, vt) = self.encode(&tok, validation, max_len)?;
        if t.is_empty() || v.is_empty() {
            return Err(Error::Data(format!(
                "{}: {} training and {} validation sequences with target tokens; both need at least one",
                c.path,
                t.len(),
                v.len()
            )));
        }
        let train = match c.packing {
            true => ChatDataset::packed(t, tok.pad_id, tt, max_len.saturating_sub(1).max(1)),
            false => ChatDataset::new(t, tok.pad_id, tt),
        };
        Ok((train, ChatDataset::new(v, tok.pad_id, vt), tok))
    }
}

impl DataStage for ChatData {
    fn prepare(&self, ctx: &StageContext) -> Result<PreparedData> {
        let (train, validation, tok) = self.load(ctx)?;
        Ok(PreparedData {
            task: Task::CausalLm,
            train: Box::new(train),
            validation: Box::new(validation),
            encoder: Box::new(PromptEncoder { tok }),
        })
    }

    fn encoder(&self, ctx: &StageContext) -> Result<Box<dyn InputEncoder>> {
        Ok(Box::new(PromptEncoder {
            tok: self.tokenizer(ctx)?,
        }))
    }

    fn resolved(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "type": "chat" });
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&self.config) {
            v.as_object_mut().expect("object").extend(fields);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_shifts_targets_and_pads_with_zero_weight() {
        let a = Sequence {
            ids: vec![1, 2, 3, 4],
            weights: vec![0.0, 0.0, 1.0, 1.0],
        };
        let b = Sequence {
            ids: vec![5, 6],
            weights: vec![0.0, 1.0],
        };
        let batch = collate(&[&a, &b], 9);
        assert_eq!((batch.batch_size, batch.seq_len), (2, 3));
        assert_eq!(batch.input_ids, [1, 2, 3, 5, 9, 9]);
        assert_eq!(batch.targets, [2, 3, 4, 6, 9, 9]);
        assert_eq!(batch.weights, [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(batch.attention_mask, [1, 1, 1, 1, 0, 0]);
    }

    fn seq(n: usize, first: u32) -> Sequence {
        Sequence {
            ids: (first..first + n as u32).collect(),
            weights: (0..n).map(|i| if i > 0 { 1.0 } else { 0.0 }).collect(),
        }
    }

    #[test]
    fn packing_fits_longest_first_and_numbers_the_conversations() {
        // Input tokens 5, 3, 2, 4 and 6 into rows of 8: first fit, longest first.
        let seqs = [seq(6, 0), seq(4, 10), seq(3, 20), seq(5, 30), seq(7, 40)];
        let rows = pack(&seqs, 8);
        assert_eq!(rows, [vec![4, 2], vec![0, 1], vec![3]]);
        let rows: Vec<Vec<&Sequence>> = rows.iter().map(|r| r.iter().map(|&i| &seqs[i]).collect()).collect();
        let b = collate_packed(&rows[1..], 99);
        assert_eq!((b.batch_size, b.seq_len), (2, 8));
        assert_eq!(b.input_ids, [0, 1, 2, 3, 4, 10, 11, 12, 30, 31, 32, 33, 99, 99, 99, 99]);
        assert_eq!(b.targets, [1, 2, 3, 4, 5, 11, 12, 13, 31, 32, 33, 34, 99, 99, 99, 99]);
        assert_eq!(b.attention_mask, [1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0]);
        assert_eq!(b.weights.iter().sum::<f32>(), 12.0);
        let ds = ChatDataset::packed(seqs.to_vec(), 99, 0, 8);
        assert_eq!(ds.len(), 3);
        let total: usize = ds
            .batches(2, Some(1))
            .map(|b| match b.unwrap() {
                Batch::Tokens(t) => t.attention_mask.iter().filter(|&&m| m != 0).count(),
                _ => unreachable!(),
            })
            .sum();
        assert_eq!(total, 5 + 3 + 2 + 4 + 6);
    }
}
