//! Facts about a text data source for the validation rules: rows, labels and
//! their counts per split, duplicates, and token lengths of a sample. The
//! split is the one `prepare` makes (same seeds), but only a sample is tokenized.

use std::collections::{BTreeSet, HashSet};

use lora_core::Result;
use lora_core::rules::{DataFacts, SplitFacts};
use lora_core::stage::StageContext;

use crate::config::SourceFormat;
use crate::labels::LabelMap;
use crate::read::{RawRow, read_rows};
use crate::stage::TextData;
use crate::tokenize::TextEncoder;

/// Training texts tokenized for the length figures.
pub const TOKEN_SAMPLE: usize = 2000;

/// Reads the data the way `prepare` does and reports what the rules need.
///
/// A file that cannot be found is an error; rows that cannot be read are a
/// fact (`read_error`), so that the rest of the configuration is still checked.
pub fn gather(src: &TextData, ctx: &StageContext) -> Result<DataFacts> {
    let cfg = src.config();
    let mut facts = DataFacts::default();
    let train_path = src.resolve(ctx, &cfg.path)?;
    if let SourceFormat::Csv { delimiter } = src.format() {
        facts.single_column_header = single_column_header(&train_path, delimiter);
        facts.header = csv_header(&train_path, delimiter);
    }
    let read = |path: &std::path::Path| read_rows(path, src.format(), &cfg.text_column, &cfg.label_column);
    let rows = match read(&train_path) {
        Ok(rows) => rows,
        Err(e) => {
            facts.read_error = Some(e.message());
            return Ok(facts);
        }
    };
    let validation_rows = match &cfg.validation_path {
        Some(p) => match read(&src.resolve(ctx, p)?) {
            Ok(rows) => Some(rows),
            Err(e) => {
                facts.read_error = Some(e.message());
                return Ok(facts);
            }
        },
        None => None,
    };
    facts.file_rows = rows.len();
    facts.validation_file_rows = validation_rows.as_ref().map(Vec::len);
    facts.distinct_raw_labels = rows
        .iter()
        .map(|r| r.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels = match &cfg.labels {
        Some(names) => LabelMap::explicit(names.clone()),
        None => LabelMap::from_rows(&rows),
    };
    facts.label_names = labels.names().to_vec();

    let mut unknown: Option<(usize, usize, String)> = None;
    let mut known = |rows: Vec<RawRow>| -> Vec<(String, u32)> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match labels.class_of(&row.label) {
                Some(id) => out.push((row.text, id)),
                None => match &mut unknown {
                    Some((n, _, _)) => *n += 1,
                    None => unknown = Some((1, row.line, row.label)),
                },
            }
        }
        out
    };
    let examples = known(rows);
    let validation = validation_rows.map(&mut known);
    facts.unknown_labels = unknown;

    let all_texts = examples.iter().chain(validation.iter().flatten()).map(|(t, _)| t);
    for text in all_texts {
        let trimmed = text.trim();
        facts.numeric_texts += usize::from(!trimmed.is_empty() && trimmed.parse::<f64>().is_ok());
        facts.replacement_texts += usize::from(text.contains('\u{FFFD}'));
    }

    let (train, validation) = src.split(ctx.seed, examples, validation);
    let n_labels = labels.len();
    let split_facts = |split: &[(String, u32)]| {
        let mut counts = vec![0; n_labels];
        for (_, class) in split {
            counts[*class as usize] += 1;
        }
        SplitFacts {
            rows: split.len(),
            label_counts: counts,
        }
    };
    facts.train = split_facts(&train);
    facts.validation = split_facts(&validation);
    let validation_texts: HashSet<&str> = validation.iter().map(|(t, _)| t.as_str()).collect();
    let mut seen = HashSet::new();
    for (text, _) in &train {
        facts.shared_texts += usize::from(validation_texts.contains(text.as_str()));
        facts.duplicate_train_texts += usize::from(!seen.insert(text.as_str()));
    }

    match src
        .tokenizer_file(ctx)
        .and_then(|p| TextEncoder::from_file(&p, 1 << 20))
    {
        Ok(encoder) => {
            facts.tokenizer_vocab = Some(encoder.vocab_size());
            // The training split is already a seeded shuffle (or a seeded sample), so
            // its head is a fair sample.
            let sample: Vec<&str> = train.iter().take(TOKEN_SAMPLE).map(|(t, _)| t.as_str()).collect();
            let mut lengths: Vec<usize> = encoder.encode(&sample)?.iter().map(|e| e.ids.len()).collect();
            lengths.sort_unstable();
            if let Some(&max) = lengths.last() {
                let pct = |p: f64| lengths[((p * (lengths.len() - 1) as f64).round() as usize).min(lengths.len() - 1)];
                facts.token_length_percentiles = Some([pct(0.5), pct(0.9), pct(0.99), max]);
                facts.token_sample = lengths.len();
                let over = lengths.iter().filter(|&&l| l > cfg.max_length).count();
                facts.truncated_share = over as f64 / lengths.len() as f64;
            }
        }
        Err(e) => facts.tokenizer_error = Some(e.to_string()),
    }
    Ok(facts)
}

/// The header line of a csv file when the delimiter does not split it.
fn single_column_header(path: &std::path::Path, delimiter: u8) -> Option<String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).ok()?;
    let mut line = Vec::new();
    std::io::BufReader::new(file).read_until(b'\n', &mut line).ok()?;
    let header = String::from_utf8_lossy(&line).trim_end().to_string();
    (!header.is_empty() && !header.as_bytes().contains(&delimiter)).then_some(header)
}

/// Column names of a csv file, byte-order mark stripped; empty when unreadable.
fn csv_header(path: &std::path::Path, delimiter: u8) -> Vec<String> {
    let Ok(mut reader) = csv::ReaderBuilder::new().delimiter(delimiter).from_path(path) else {
        return Vec::new();
    };
    match reader.byte_headers() {
        Ok(h) => h
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim_start_matches('\u{FEFF}').to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}
