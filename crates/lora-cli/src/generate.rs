//! `lora generate`: text from a causal language model, the base alone or with
//! a run's adapter. The prompt is rendered with the model's chat template
//! (`--chat`) or used as it is; tokens are decoded through the model's
//! key/value cache, sampled greedily or with temperature, top-k and top-p from
//! a seeded stream, and streamed to the writer until the end-of-turn token.

use std::io::Write;
use std::path::{Path, PathBuf};

use lora_core::config::PipelineConfig;
use lora_core::registry::build_model;
use lora_core::stage::{AssetResolver, StageContext};
use lora_core::{AdapterModel, Error, ModelOptions, Result, Task};
use lora_data::chat_template::{ChatTokenizer, Message};
use rand::Rng;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 is greedy.
    pub temperature: f32,
    /// Keep the `k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (1: all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    pub fn check(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Other(format!(
                "temperature ({}) must be finite and >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Other(format!("top-p ({}) must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// The next token from `logits` under `s`, drawing from `rng`.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut impl Rng) -> u32 {
    if s.temperature == 0.0 {
        return lora_core::adapter::argmax(logits) as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let max = logits[order[0]];
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| (((logits[i] - max) / s.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                acc += p;
                acc >= s.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (p, &i) in probs.iter().zip(&order) {
        u -= p;
        if u <= 0.0 {
            return i as u32;
        }
    }
    order[order.len() - 1] as u32
}

/// Decodes up to `max_new` tokens after `prompt`, writing the text as it
/// grows; stops at the end-of-turn token. Returns the generated ids.
pub fn generate(
    model: &mut dyn AdapterModel,
    tok: &ChatTokenizer,
    prompt: &[u32],
    max_new: usize,
    sampling: &Sampling,
    out: &mut dyn Write,
) -> Result<Vec<u32>> {
    sampling.check()?;
    let dec = model
        .decoder()
        .ok_or_else(|| Error::Other("the model cannot generate text (not a causal language model)".into()))?;
    let room = dec.context_length().saturating_sub(prompt.len());
    dec.reset();
    let mut rng = lora_core::init::rng(sampling.seed);
    let mut logits = dec.feed(prompt)?;
    let mut ids = Vec::new();
    let mut shown = 0;
    for _ in 0..max_new.min(room) {
        let next = sample(&logits, sampling, &mut rng);
        if next == tok.eos_id {
            break;
        }
        ids.push(next);
        // Decode the whole answer each time: a character may span tokens.
        let text = tok.decode(&ids)?;
        if !text.ends_with('\u{fffd}') && text.len() > shown {
            let _ = out.write_all(&text.as_bytes()[shown..]);
            let _ = out.flush();
            shown = text.len();
        }
        logits = dec.feed(&[next])?;
    }
    let _ = writeln!(out);
    Ok(ids)
}

/// Where the model comes from: a run's folder (its pipeline and adapter) or a GGUF file alone.
pub struct Source {
    pub adapter: Option<PathBuf>,
    pub model: Option<String>,
    pub backend: String,
}

const BASE: &str = "asset:smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model (with the adapter's weights when one is given) and its tokenizer.
pub fn load(src: &Source, assets: &dyn AssetResolver) -> Result<(Box<dyn AdapterModel>, ChatTokenizer)> {
    let text = match &src.adapter {
        Some(dir) => {
            let p = dir.join("pipeline.toml");
            std::fs::read_to_string(&p).map_err(|e| Error::io("cannot read the run's pipeline", &p, e))?
        }
        None => format!(
            "[run]\nname = \"generate\"\nbackend = \"{}\"\noutput-dir = \"unused\"\n[data]\ntype = \"chat\"\npath = \"unused\"\n\
             [model]\ntype = \"llama-causal-lm\"\npath = \"{}\"\n[lora]\nr = 1\nalpha = 1\ntarget-modules = []\n[train]\n[eval]\n",
            src.backend,
            src.model
                .as_deref()
                .unwrap_or(BASE)
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
        ),
    };
    let path = src
        .adapter
        .as_ref()
        .map_or_else(|| Path::new("<generate>").to_path_buf(), |d| d.join("pipeline.toml"));
    let config = PipelineConfig::parse(&path, text)?;
    let stage = build_model(&config.model, &src.backend).map_err(Error::Invalid)?;
    let ctx = StageContext {
        seed: config.run.seed,
        assets,
        tokenizer: None,
    };
    let gguf = stage
        .tokenizer(&ctx)?
        .ok_or_else(|| Error::Other("the model has no tokenizer".into()))?;
    let tok = ChatTokenizer::from_gguf(&gguf)?;
    let mut model = stage.build(&ctx, &config.lora, &Task::CausalLm, &ModelOptions::default())?;
    if let Some(dir) = &src.adapter {
        lora_train::load_adapter(dir, model.as_mut())?;
    }
    Ok((model, tok))
}

/// The prompt's token ids: rendered as one user turn with `chat`, else as written.
pub fn prompt_ids(tok: &ChatTokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    let text = if chat {
        tok.render(&[Message::new("user", prompt)], true)?
    } else {
        prompt.to_string()
    };
    let ids = tok.encode(&text)?;
    if ids.is_empty() {
        return Err(Error::Other("the prompt is empty".into()));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_top_k_1_equals_greedy() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = lora_core::init::rng(1);
        assert_eq!(sample(&logits, &Sampling::default(), &mut rng), 1);
        let s = Sampling {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &s, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_likely_set_and_seeds_repeat() {
        // Probabilities about 0.47, 0.43, 0.09, 0.01 at temperature 1.
        let logits = [2.0, 1.9, 0.35, -1.5];
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.8,
            seed: 3,
            ..Default::default()
        };
        let mut rng = lora_core::init::rng(s.seed);
        let draws: Vec<u32> = (0..200).map(|_| sample(&logits, &s, &mut rng)).collect();
        assert!(draws.iter().all(|&d| d < 2), "only the top two reach 0.8");
        assert!(draws.contains(&0) && draws.contains(&1));
        let mut again = lora_core::init::rng(s.seed);
        let repeat: Vec<u32> = (0..200).map(|_| sample(&logits, &s, &mut again)).collect();
        assert_eq!(draws, repeat);
    }
}
