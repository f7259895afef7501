//! Validation before any work: layering, the loader's structural checks, the
//! registries' schemas, facts about the model (header only), the data and the
//! machine, then every rule; every problem at once.

use std::path::Path;
use std::sync::Arc;

use lora_core::config::{PartialConfig, PipelineConfig};
use lora_core::diag::{Diagnostics, SourceFile};
use lora_core::doc::ConfigDoc;
use lora_core::registry::{DataSourceEntry, EvaluatorEntry, ModelEntry, TrainerEntry, build, build_model, entries};
use lora_core::rules::Facts;
use lora_core::stage::{AssetResolver, StageContext};
use lora_validate::Overrides;

use crate::pipeline::{Pipeline, take};

/// The outcome of validation: every diagnostic, and the pipeline when there is no error.
pub struct Checked {
    pub source: Arc<SourceFile>,
    pub diagnostics: Diagnostics,
    pub pipeline: Option<Pipeline>,
    /// The facts the rules saw (for `lora config show` and tests).
    pub facts: Facts,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.has_errors()
    }

    /// The pipeline, or every diagnostic as an error (exit code 2) when any is an error.
    pub fn into_pipeline(self) -> lora_core::Result<Pipeline> {
        if self.has_errors() {
            return Err(lora_core::Error::Invalid(self.diagnostics));
        }
        self.pipeline
            .ok_or_else(|| lora_core::Error::Other("validation passed but the pipeline is incomplete".into()))
    }
}

/// Composes the file with its layers and overrides, then validates it.
pub fn check_file(path: &Path, overrides: &Overrides, assets: &dyn AssetResolver) -> Result<Checked, Diagnostics> {
    Ok(check_composed(lora_validate::compose(path, overrides)?, assets))
}

/// Validates a composed document, keeping the warnings of its composition.
pub fn check_composed(composed: lora_validate::Composed, assets: &dyn AssetResolver) -> Checked {
    let mut checked = check_source(composed.source, assets);
    let mut all = composed.warnings;
    all.0.append(&mut checked.diagnostics.0);
    checked.diagnostics = all;
    checked
}

/// Validates a composed document.
pub fn check_source(source: Arc<SourceFile>, assets: &dyn AssetResolver) -> Checked {
    let doc = match ConfigDoc::parse(&source) {
        Ok(doc) => doc,
        Err(diagnostics) => {
            return Checked {
                source,
                diagnostics,
                pipeline: None,
                facts: Facts::default(),
            };
        }
    };
    // Plugins first: what they register is then known to the registries and the rules.
    let mut loader = crate::plugins::load_from(&doc);
    loader.0.extend(crate::plugins::duplicate_names().0);
    let (partial, parse_diags) = PartialConfig::parse(source.clone());
    loader.0.extend(parse_diags.0);
    let backend = partial
        .run
        .as_ref()
        .map_or("candle", |r| r.backend.as_str())
        .to_string();
    let compiled = crate::backends();

    // Each stage on its own, so that one broken table does not hide the others' problems.
    let data = partial
        .data
        .as_ref()
        .and_then(|c| take(&mut loader, build::<DataSourceEntry>(c)));
    // Facts come from the model's files, whichever backend reads them: fall back to a
    // compiled one when the chosen backend is not (a rule says so).
    let model_backend = if compiled.contains(&backend.as_str()) {
        backend.clone()
    } else {
        compiled.first().map_or(backend.clone(), |b| b.to_string())
    };
    let model = partial
        .model
        .as_ref()
        .and_then(|c| take(&mut loader, build_model(c, &model_backend)));
    let train = partial
        .train
        .as_ref()
        .and_then(|c| take(&mut loader, build::<TrainerEntry>(c)));
    let eval = partial
        .eval
        .as_ref()
        .and_then(|c| take(&mut loader, build::<EvaluatorEntry>(c)));
    if let Some(Some(c)) = &partial.strategy {
        take(&mut loader, lora_strategy::check(c));
    }
    let callbacks: Option<Vec<_>> = partial.callbacks.as_ref().map(|cs| {
        cs.iter()
            .filter_map(|c| take(&mut loader, crate::plugins::build_callback(c, partial.run.as_ref())))
            .collect()
    });

    let mut facts = Facts {
        machine: lora_validate::machine::facts(),
        backends: compiled.iter().map(|b| b.to_string()).collect(),
        model_types: entries::<ModelEntry>()
            .iter()
            .map(|e| (e.backend.to_string(), e.name.to_string()))
            .collect(),
        assets: lora_assets::assets()
            .iter()
            .map(|a| {
                let cached = lora_assets::Cache::from_env()
                    .and_then(|c| c.status(a.name))
                    .is_ok_and(|s| s.cached);
                (a.name.to_string(), cached)
            })
            .collect(),
        ..Facts::default()
    };
    for key in ["data.path", "data.validation-path", "data.tokenizer", "model.path"] {
        if let Some(p) = doc.get(key).and_then(|n| n.as_str()) {
            facts
                .paths
                .insert(key.to_string(), assets.resolve(p).map_err(|e| e.to_string()));
        }
    }
    let mut ctx = StageContext {
        seed: partial.run.as_ref().map_or(42, |r| r.seed),
        assets,
        tokenizer: None,
    };
    if let Some(model) = &model {
        ctx.tokenizer = model.tokenizer(&ctx).ok().flatten();
        match model.facts(&ctx) {
            Ok(f) => facts.model = f,
            Err(e) => facts.model_error = Some(e.message()),
        }
    }
    if let Some(data) = &data {
        match data.facts(&ctx) {
            Ok(f) => facts.data = f,
            Err(e) => facts.data_error = Some(e.message()),
        }
    }

    lora_plugin_host::take_unresolved_paths();
    let mut found = lora_validate::check(&doc, &facts);
    found.extend(lora_plugin_host::take_unresolved_paths());
    let diagnostics = lora_validate::finish(loader, found);
    let pipeline = if diagnostics.has_errors() {
        None
    } else {
        complete(source.clone(), partial).and_then(|config| {
            Some(Pipeline {
                config,
                data: data?,
                model: model?,
                train: train?,
                eval: eval?,
                callbacks: callbacks?,
            })
        })
    };
    Checked {
        source,
        diagnostics,
        pipeline,
        facts,
    }
}

fn complete(file: Arc<SourceFile>, p: PartialConfig) -> Option<PipelineConfig> {
    Some(PipelineConfig {
        file,
        run: p.run?,
        data: p.data?,
        model: p.model?,
        lora: p.lora?,
        train: p.train?,
        eval: p.eval?,
        monitor: p.monitor?,
        callbacks: p.callbacks?,
        checkpoint: p.checkpoint?,
        strategy: p.strategy?,
    })
}
