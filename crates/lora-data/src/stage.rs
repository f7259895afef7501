//! The data stage: read, map labels, split, cap, tokenise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::init::derive_seed;
use lora_core::stage::{DataStage, InputEncoder, PreparedData, StageContext};
use lora_core::{Error, Result};

use crate::augment::AugmentPipeline;
use crate::config::{DataConfig, SourceFormat};
use crate::dataset::TextDataset;
use crate::labels::LabelMap;
use crate::read::read_rows;
use crate::split;
use crate::tokenize::TextEncoder;

/// The prepared splits with their concrete types, for callers that want more than
/// [`PreparedData`] exposes (the truncation counts, for example).
pub struct TextSplits {
    pub label_names: Vec<String>,
    pub train: TextDataset,
    pub validation: TextDataset,
    pub encoder: TextEncoder,
}

impl From<TextSplits> for PreparedData {
    fn from(s: TextSplits) -> Self {
        PreparedData {
            task: lora_core::Task::classification(s.label_names),
            train: Box::new(s.train),
            validation: Box::new(s.validation),
            encoder: Box::new(s.encoder),
        }
    }
}

/// A text-classification data source (`csv` or `jsonl`).
#[derive(Debug, Clone)]
pub struct TextData {
    config: DataConfig,
    format: SourceFormat,
    /// `[[data.augment]]`: token-level augmentations of training passes.
    augment: Arc<AugmentPipeline>,
    /// Where the table was written, so that errors found later can still point at it.
    component: Option<Component>,
}

impl TextData {
    /// Deserializes and checks a `[data]` table; `format_name` is `csv` or `jsonl`.
    pub fn from_component(component: &Component, format_name: &str) -> Result<Self, Diagnostics> {
        let component = component.clone().with_nested(&["augment"]);
        let config: DataConfig = component.deserialize()?;
        let format = config.validate(format_name, Some(&component))?;
        let augment = AugmentPipeline::from_components(&component.array_components("augment")?)?;
        if augment.has_image_ops() {
            return Err(Diagnostic::error(
                "data::wrong-augmentation",
                format!(
                    "[[data.augment]] of text data lists image operations ({}); text takes token-dropout, token-mask, random-swap",
                    augment.names().join(", ")
                ),
            )
            .at(component.value_location("augment"))
            .into());
        }
        Ok(Self {
            config,
            format,
            augment: Arc::new(augment),
            component: Some(component),
        })
    }

    /// A source from a configuration built in code; errors carry no location.
    pub fn new(config: DataConfig, format_name: &str) -> Result<Self, Diagnostics> {
        let format = config.validate(format_name, None)?;
        Ok(Self {
            config,
            format,
            augment: Arc::new(AugmentPipeline::default()),
            component: None,
        })
    }

    pub fn config(&self) -> &DataConfig {
        &self.config
    }

    pub fn format(&self) -> SourceFormat {
        self.format
    }

    /// The `tokenizer` key, else the model's tokenizer.
    fn tokenizer_path(&self, ctx: &StageContext) -> Result<PathBuf> {
        if let Some(t) = &self.config.tokenizer {
            return ctx.assets.resolve(t);
        }
        if let Some(t) = &ctx.tokenizer {
            return Ok(t.clone());
        }
        let at = self.component.as_ref().map(Component::location);
        let d = Diagnostic::error("data::no-tokenizer", "no tokenizer for the text data")
            .at(at)
            .help("set `tokenizer = \"path/to/tokenizer.json\"` in [data], or use a model that ships one");
        Err(Diagnostics::from(d).into())
    }

    /// The encoder alone: the tokenizer and max-length, no data file is read.
    pub fn text_encoder(&self, ctx: &StageContext) -> Result<TextEncoder> {
        let path = self.tokenizer_path(ctx)?;
        TextEncoder::from_file(&path, self.config.max_length)?.with_truncation(self.config.truncation)
    }

    /// Reads, splits, caps and tokenises the data.
    pub fn load(&self, ctx: &StageContext) -> Result<TextSplits> {
        let encoder = self.text_encoder(ctx)?;
        let cfg = &self.config;
        let read = |path: &Path| read_rows(path, self.format, &cfg.text_column, &cfg.label_column);

        let train_path = ctx.assets.resolve(&cfg.path)?;
        let rows = read(&train_path)?;
        if rows.is_empty() {
            return Err(Error::Data(format!(
                "{}: the data file has no rows",
                train_path.display()
            )));
        }
        // Derived from the whole training file, before the split and the caps, so that the
        // class ids do not depend on the seed or on max-train-samples.
        let labels = match &cfg.labels {
            Some(names) => LabelMap::explicit(names.clone()),
            None => LabelMap::from_rows(&rows),
        };
        let examples = labels.resolve(rows, cfg.on_unknown_label, &train_path)?;

        let validation = match &cfg.validation_path {
            Some(validation_path) => {
                let validation_path = ctx.assets.resolve(validation_path)?;
                let validation = labels.resolve(read(&validation_path)?, cfg.on_unknown_label, &validation_path)?;
                if validation.is_empty() {
                    return Err(Error::Data(format!(
                        "{}: the validation file has no usable rows",
                        validation_path.display()
                    )));
                }
                Some(validation)
            }
            None => None,
        };
        let (train, validation) = self.split(ctx.seed, examples, validation);
        check_training_split(&train, labels.names(), &train_path)?;

        let augmented =
            tokenize(&encoder, train)?.with_augment(self.augment.clone(), encoder.specials(), encoder.mask_id());
        Ok(TextSplits {
            train: augmented,
            validation: tokenize(&encoder, validation)?,
            label_names: labels.names().to_vec(),
            encoder,
        })
    }
}

impl TextData {
    /// The training and validation splits, capped: a separate validation file is
    /// sampled, otherwise `validation-fraction` of the training rows is split off.
    pub(crate) fn split<T>(&self, seed: u64, examples: Vec<T>, validation: Option<Vec<T>>) -> (Vec<T>, Vec<T>) {
        let cfg = &self.config;
        match validation {
            Some(validation) => (
                split::sample(examples, cfg.max_train_samples, derive_seed(seed, "sample-train", 0)),
                split::sample(
                    validation,
                    cfg.max_validation_samples,
                    derive_seed(seed, "sample-validation", 0),
                ),
            ),
            None => {
                let (train, validation) =
                    split::split_off_validation(examples, cfg.validation_fraction, derive_seed(seed, "split", 0));
                (
                    split::truncate(train, cfg.max_train_samples),
                    split::truncate(validation, cfg.max_validation_samples),
                )
            }
        }
    }

    /// The data file's path, resolved.
    pub(crate) fn resolve(&self, ctx: &StageContext, path: &str) -> Result<PathBuf> {
        ctx.assets.resolve(path)
    }

    pub(crate) fn tokenizer_file(&self, ctx: &StageContext) -> Result<PathBuf> {
        self.tokenizer_path(ctx)
    }
}

/// A classifier cannot learn from no rows or from one class; say so before training starts.
fn check_training_split(train: &[(String, u32)], names: &[String], path: &Path) -> Result<()> {
    if train.is_empty() {
        return Err(Error::Data(format!(
            "{}: the training split is empty (too few rows, or every row was skipped)",
            path.display()
        )));
    }
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, class) in train {
        *counts.entry(*class).or_default() += 1;
    }
    if let [(class, rows)] = counts.into_iter().collect::<Vec<_>>()[..] {
        let name = names.get(class as usize).map_or("?", String::as_str);
        return Err(Error::Data(format!(
            "{}: the training split has a single class, `{name}` ({rows} rows); a classifier needs at least two",
            path.display()
        )));
    }
    Ok(())
}

fn tokenize(encoder: &TextEncoder, examples: Vec<(String, u32)>) -> Result<TextDataset> {
    let (texts, classes): (Vec<String>, Vec<u32>) = examples.into_iter().unzip();
    let encoded = encoder.encode(&texts)?;
    let truncated = encoded.iter().filter(|e| e.truncated).count();
    let examples = encoded.into_iter().map(|e| e.ids).zip(classes).collect();
    Ok(TextDataset::new(examples, encoder.pad_id(), truncated))
}

impl DataStage for TextData {
    fn prepare(&self, ctx: &StageContext) -> Result<PreparedData> {
        Ok(self.load(ctx)?.into())
    }

    fn encoder(&self, ctx: &StageContext) -> Result<Box<dyn InputEncoder>> {
        Ok(Box::new(self.text_encoder(ctx)?))
    }

    fn facts(&self, ctx: &StageContext) -> Result<Option<lora_core::rules::DataFacts>> {
        crate::facts::gather(self, ctx).map(Some)
    }

    fn resolved(&self) -> serde_json::Value {
        let name = match self.format {
            SourceFormat::Csv { .. } => "csv",
            SourceFormat::Jsonl => "jsonl",
        };
        let mut v = serde_json::json!({ "type": name });
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&self.config) {
            v.as_object_mut().expect("object").extend(fields);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{CLS, PAD, SEP, ctx, data_component, lit, text_batch, write, write_tokenizer};
    use lora_core::stage::Dataset;

    /// Whole words of the fixture vocabulary (digits would all be `[UNK]`).
    const WORDS: [&str; 17] = [
        "a", "man", "is", "eating", "food", "the", "film", "movie", "was", "good", "bad", "great", "awful", "cafe",
        "play", "fun", "very",
    ];

    /// A csv of `n` rows whose labels cycle through `labels`; every text tokenises differently.
    fn csv(n: usize, labels: &[&str]) -> String {
        let mut s = String::from("text,label\n");
        for i in 0..n {
            s.push_str(&format!(
                "{} {},{}\n",
                WORDS[i / 17 % 17],
                WORDS[i % 17],
                labels[i % labels.len()]
            ));
        }
        s
    }

    fn source(body: &str) -> TextData {
        let c = data_component(body);
        TextData::from_component(&c, &c.type_name).unwrap()
    }

    fn texts_of(d: &TextDataset) -> Vec<Vec<u32>> {
        (0..d.len()).map(|i| d.example(i).unwrap().0.to_vec()).collect()
    }

    #[test]
    fn a_csv_is_split_with_the_seed_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let tok = write_tokenizer(dir.path());
        let data = write(dir.path(), "d.csv", csv(50, &["pos", "neg", "mixed"]));
        let src = source(&format!(
            "type = \"csv\"\npath = {}\nvalidation-fraction = 0.2",
            lit(&data)
        ));
        let a = src.load(&ctx(1, Some(tok.clone()))).unwrap();
        assert_eq!(a.label_names, ["mixed", "neg", "pos"]);
        assert_eq!((a.train.len(), a.validation.len()), (40, 10));
        // Every row's text carries its index, so the two splits must not share one.
        let (train, validation) = (texts_of(&a.train), texts_of(&a.validation));
        assert!(train.iter().all(|t| !validation.contains(t)));
        assert!(
            train
                .iter()
                .chain(&validation)
                .all(|t| t[0] == CLS && *t.last().unwrap() == SEP)
        );

        let again = src.load(&ctx(1, Some(tok.clone()))).unwrap();
        assert_eq!(
            (texts_of(&again.train), again.train.labels()),
            (train.clone(), a.train.labels())
        );
        let other = src.load(&ctx(2, Some(tok.clone()))).unwrap();
        assert_ne!(texts_of(&other.validation), validation);
        assert_eq!(
            other.label_names, a.label_names,
            "the label map does not depend on the seed"
        );

        let capped = source(&format!(
            "type = \"csv\"\npath = {}\nvalidation-fraction = 0.2\nmax-train-samples = 7\nmax-validation-samples = 3",
            lit(&data)
        ))
        .load(&ctx(1, Some(tok)))
        .unwrap();
        assert_eq!((capped.train.len(), capped.validation.len()), (7, 3));
        assert_eq!(
            texts_of(&capped.train),
            train[..7],
            "a cap keeps the head of the same shuffle"
        );
    }

    #[test]
    fn jsonl_with_a_validation_file_and_an_explicit_label_map() {
        let dir = tempfile::tempdir().unwrap();
        let tok = write_tokenizer(dir.path());
        let train = write(
            dir.path(),
            "train.jsonl",
            "{\"review\": \"good film\", \"y\": \"pos\"}\n{\"review\": \"bad movie\", \"y\": 0}\n\n\
             {\"review\": \"great fun\", \"y\": 1}\n{\"review\": \"meh\", \"y\": \"meh\"}\n",
        );
        let validation = write(
            dir.path(),
            "val.jsonl",
            "{\"review\": \"awful film\", \"y\": \"neg\"}\n",
        );
        let body = format!(
            "type = \"jsonl\"\npath = {}\nvalidation-path = {}\ntext-column = \"review\"\nlabel-column = \"y\"\n\
             labels = [\"neg\", \"pos\"]\nmax-length = 4",
            lit(&train),
            lit(&validation)
        );
        let e = source(&body)
            .load(&ctx(1, Some(tok.clone())))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("train.jsonl:5: label `meh` is not one of `labels` (neg, pos)"),
            "{e}"
        );

        let s = source(&format!("{body}\non-unknown-label = \"skip\""))
            .load(&ctx(1, Some(tok)))
            .unwrap();
        assert_eq!(s.label_names, ["neg", "pos"]);
        assert_eq!(s.train.labels(), [1, 0, 1], "file order kept without a cap");
        assert_eq!(s.validation.labels(), [0]);
        assert_eq!(s.train.truncated(), 0);
        assert_eq!(s.validation.truncated(), 0);
        assert_eq!(s.train.example(0).unwrap().0, [CLS, 15, 12, SEP]);
    }

    #[test]
    fn truncated_examples_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let tok = write_tokenizer(dir.path());
        let data = write(
            dir.path(),
            "d.csv",
            "text,label\na man is eating food,x\na man,y\nthe film was,x\nbad,y\n",
        );
        let body = format!(
            "type = \"csv\"\npath = {}\nvalidation-path = {}\nmax-length = 5",
            lit(&data),
            lit(&data)
        );
        let s = source(&body).load(&ctx(1, Some(tok))).unwrap();
        assert_eq!(s.train.truncated(), 1, "only `a man is eating food` exceeds 3 words");
        assert_eq!(s.train.max_seq_len(), 5);
    }

    #[test]
    fn the_encoder_needs_no_data_and_matches_the_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let tok = write_tokenizer(dir.path());
        let missing = dir.path().join("not-there.csv");
        let src = source(&format!(
            "type = \"csv\"\npath = {}\ntokenizer = {}",
            lit(&missing),
            lit(&tok)
        ));
        let encoder = DataStage::encoder(&src, &ctx(1, None)).unwrap();
        assert!(src.prepare(&ctx(1, None)).is_err(), "the data file really is missing");

        let data = write(dir.path(), "d.csv", csv(12, &["a", "b"]));
        let src = source(&format!(
            "type = \"csv\"\npath = {}\nvalidation-path = {}",
            lit(&data),
            lit(&data)
        ));
        let prepared = src.prepare(&ctx(1, Some(tok))).unwrap();
        let texts: Vec<String> = csv(12, &["a", "b"])
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().into())
            .collect();
        let from_encoder = text_batch(encoder.encode_inputs(&texts).unwrap());
        let from_dataset = text_batch(prepared.train.batches(12, None).next().unwrap().unwrap());
        assert_eq!(from_encoder.input_ids, from_dataset.input_ids);
        assert_eq!(from_encoder.attention_mask, from_dataset.attention_mask);
        assert!(from_encoder.labels.is_empty());
        assert_eq!(from_dataset.labels, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn the_configured_tokenizer_wins_and_none_at_all_is_a_located_error() {
        let dir = tempfile::tempdir().unwrap();
        let tok = write_tokenizer(dir.path());
        let src = source("type = \"csv\"\npath = \"d.csv\"");
        let Err(Error::Invalid(d)) = src.text_encoder(&ctx(1, None)) else {
            panic!("expected a diagnostic")
        };
        assert_eq!(d.0[0].code, "data::no-tokenizer");
        assert_eq!(d.0[0].location.as_ref().unwrap().line_col(), (5, 1), "the [data] table");
        let bogus = dir.path().join("model-tokenizer.json");
        let configured = source(&format!("type = \"csv\"\npath = \"d.csv\"\ntokenizer = {}", lit(&tok)));
        assert!(configured.text_encoder(&ctx(1, Some(bogus.clone()))).is_ok());
        assert!(src.text_encoder(&ctx(1, Some(bogus))).is_err());
        // An asset reference goes through the resolver (NoAssets refuses it).
        let asset = source("type = \"csv\"\npath = \"asset:corpus/d.csv\"");
        let e = asset.prepare(&ctx(1, Some(tok))).err().unwrap().to_string();
        assert!(e.contains("names an asset"), "{e}");
    }

    #[test]
    fn truncation_strategies_keep_the_tail_or_head_and_tail_around_the_specials() {
        let dir = tempfile::tempdir().unwrap();
        let tok = write_tokenizer(dir.path());
        let data = write(
            dir.path(),
            "d.csv",
            "text,label
a man is eating food,x
the film,y
",
        );
        let body = |t: &str| {
            format!(
                "type = \"csv\"\npath = {}\nvalidation-path = {}\nmax-length = 6\ntruncation = \"{t}\"",
                lit(&data),
                lit(&data)
            )
        };
        // a=5 man=6 is=7 eating=8 food=9; the film = 11 12. Four body tokens fit in 6.
        let first = |t: &str| source(&body(t)).load(&ctx(1, Some(tok.clone()))).unwrap();
        let head = first("head");
        assert_eq!(head.train.example(0).unwrap().0, [CLS, 5, 6, 7, 8, SEP]);
        let tail = first("tail");
        assert_eq!(tail.train.example(0).unwrap().0, [CLS, 6, 7, 8, 9, SEP]);
        assert_eq!(
            tail.train.example(1).unwrap().0,
            [CLS, 11, 12, SEP],
            "short texts are whole"
        );
        assert_eq!(tail.train.truncated(), 1);
        let both = first("head-tail");
        assert_eq!(
            both.train.example(0).unwrap().0,
            [CLS, 5, 7, 8, 9, SEP],
            "1 from the head, 3 from the tail"
        );
    }

    #[test]
    fn text_augmentations_touch_only_training_passes_and_never_the_specials() {
        use lora_augment as _;
        const MASK: u32 = 4;
        let dir = tempfile::tempdir().unwrap();
        let tok = write_tokenizer(dir.path());
        let data = write(dir.path(), "d.csv", csv(12, &["a", "b"]));
        let src = source(&format!(
            "type = \"csv\"\npath = {}\nvalidation-path = {}\n[[data.augment]]\ntype = \"token-mask\"\nrate = 1.0",
            lit(&data),
            lit(&data)
        ));
        let s = src.load(&ctx(1, Some(tok))).unwrap();
        let shuffled = text_batch(s.train.batches(12, Some(3)).next().unwrap().unwrap());
        for row in shuffled.input_ids.chunks(shuffled.seq_len) {
            let real: Vec<u32> = row.iter().copied().take_while(|&t| t != PAD).collect();
            assert_eq!(real[0], CLS);
            assert_eq!(*real.last().unwrap(), SEP);
            assert!(real[1..real.len() - 1].iter().all(|&t| t == MASK), "{real:?}");
        }
        let ordered = text_batch(s.train.batches(12, None).next().unwrap().unwrap());
        assert!(!ordered.input_ids.contains(&MASK), "ordered passes are not augmented");
        let validation = text_batch(s.validation.batches(12, Some(3)).next().unwrap().unwrap());
        assert!(!validation.input_ids.contains(&MASK));

        let c = data_component("type = \"csv\"\npath = \"d\"\n[[data.augment]]\ntype = \"horizontal-flip\"");
        let e = TextData::from_component(&c, "csv").unwrap_err();
        assert_eq!(e.0[0].code, "data::wrong-augmentation");
    }

    #[test]
    fn a_training_split_with_one_class_or_none_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tok = write_tokenizer(dir.path());
        let one = write(dir.path(), "one.csv", csv(10, &["pos"]));
        let e = source(&format!("type = \"csv\"\npath = {}", lit(&one)))
            .load(&ctx(1, Some(tok.clone())))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("the training split has a single class, `pos` (9 rows)"),
            "{e}"
        );

        let single_row = write(dir.path(), "single.csv", "text,label\ngood,pos\n");
        let e = source(&format!("type = \"csv\"\npath = {}", lit(&single_row))).load(&ctx(1, Some(tok.clone())));
        assert!(e.err().unwrap().to_string().contains("the training split is empty"));

        let header_only = write(dir.path(), "empty.csv", "text,label\n");
        let e = source(&format!("type = \"csv\"\npath = {}", lit(&header_only))).load(&ctx(1, Some(tok)));
        assert!(e.err().unwrap().to_string().contains("has no rows"));
    }
}
