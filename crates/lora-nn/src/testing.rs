//! Model tests written once, run by every backend on its own operations:
//! `lora_nn::model_tests!(MyOps)` in a backend's test module stamps out one
//! `#[test]` per check. Reference values are hand computations or the
//! model's own unmerged outputs; the real-asset checks live in `tests/suite`.

use std::path::PathBuf;

use lora_core::adapter::{AdapterModel, DType};
use lora_core::bert::{BertConfig, TARGETS};
use lora_core::init::{normal, rng};
use lora_core::vit::{CONFIG_FILE, VitConfig, WEIGHTS_FILE};
use lora_core::{Batch, ImageBatch, LoraSpec, TextBatch};

use crate::dropout::MaskSource;
use crate::linear::{LoraLinear, LoraWeights};
use crate::ops::TensorOps;
use crate::params::ParamStore;
use crate::weights::{HostWeights, SafetensorsFile, WeightSource};

/// Generates one `#[test]` per model check for a backend's operations value.
#[macro_export]
macro_rules! model_tests {
    ($ops:expr) => {
        $crate::model_tests!(@each $ops;
            lora_linear_matches_hand_computation,
            lora_gradients_reach_a_and_b,
            fused_sublayers_equal_their_composition,
            bert_with_lora_equals_the_base_at_initialisation,
            bert_merged_equals_unmerged_and_unmerge_is_exact,
            bert_logits_are_the_pooled_full_hidden_states,
            bert_gradients_reach_every_parameter,
            bert_targets_and_ranks_are_checked,
            bert_base_dropout_trains_and_stays_off_in_evaluation,
            vit_full_training_learns_and_its_saved_base_reloads,
            vit_lora_trains_the_adapter_and_the_head_and_merges,
            vit_patch_embedding_takes_lora_with_conv_shapes,
            vit_soft_labels_equal_one_hot_labels,
            checkpointed_gradients_equal_the_full_graph,
            narrow_base_weights_compute_like_rounded_f32_weights);
    };
    (@each $ops:expr; $($name:ident),*) => {
        $(#[test] fn $name() { $crate::testing::$name($ops) })*
    };
}

fn spec(targets: &[&str], r: usize, rslora: bool) -> LoraSpec {
    LoraSpec {
        r,
        alpha: 4.0,
        dropout: 0.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        use_rslora: rslora,
        rank_pattern: Default::default(),
        alpha_pattern: Default::default(),
        layers_to_transform: None,
        target_modules_location: None,
        patterns_location: None,
    }
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{x} vs {y}");
    }
}

/// A temporary folder removed on drop (std only: this module ships with the crate).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lora-nn-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `W = [[1, 2], [3, 4], [5, 6]]`, `b = [0.5, -0.5, 1]`, `A = [[1, -1]]`, `B = 0`.
fn layer<O: TensorOps>(ops: &O, store: &mut ParamStore<O>, scale_alpha: f64) -> LoraLinear<O> {
    let w = ops.weight_from_host(vec![1., 2., 3., 4., 5., 6.], &[3, 2]).unwrap();
    let b = ops.weight_from_host(vec![0.5, -0.5, 1.0], &[3]).unwrap();
    let a = store
        .add(
            ops,
            lora_core::ParamInfo::new("x.lora_A.weight", vec![1, 2], true),
            vec![1., -1.],
        )
        .unwrap();
    let bb = store
        .add(
            ops,
            lora_core::ParamInfo::new("x.lora_B.weight", vec![3, 1], true),
            vec![0.; 3],
        )
        .unwrap();
    LoraLinear::new(w, Some(b)).with_lora(LoraWeights {
        a,
        b: bb,
        scale: scale_alpha,
        dropout: 0.0,
    })
}

pub fn lora_linear_matches_hand_computation<O: TensorOps>(ops: O) {
    let mut store = ParamStore::default();
    let mut l = layer(&ops, &mut store, 2.0);
    let x = ops.tensor(vec![1., 1., 2., -1.], &[2, 2]).unwrap();
    // At initialisation the output is the base's: x W^T + b.
    let y = ops.to_host(&l.forward(&ops, &x, None).unwrap()).unwrap();
    assert_eq!(y, [3.5, 6.5, 12.0, 0.5, 1.5, 5.0]);
    // With B = [1, 0, -2]: A x = [2, 3] rows; scale 2 * B A x added.
    store.write(&ops, &[vec![1., -1.], vec![1., 0., -2.]]).unwrap();
    let y = ops.to_host(&l.forward(&ops, &x, None).unwrap()).unwrap();
    assert_eq!(
        y,
        [3.5, 6.5, 12.0, 0.5, 1.5, 5.0]
            .iter()
            .zip([0., 0., 0., 6., 0., -12.])
            .map(|(a, b)| a + b)
            .collect::<Vec<f32>>()
    );
    // Merging folds scale * B A into a copy of W; unmerging restores the base exactly.
    let before = y;
    let w_before = ops.weight_to_host(l.weight()).unwrap();
    l.merge(&ops).unwrap();
    close(
        &ops.to_host(&l.forward(&ops, &x, None).unwrap()).unwrap(),
        &before,
        1e-5,
    );
    l.unmerge();
    assert_eq!(ops.to_host(&l.forward(&ops, &x, None).unwrap()).unwrap(), before);
    assert_eq!(ops.weight_to_host(l.weight()).unwrap(), w_before);
    // Dropout touches the adapter's input only: with p = 0 it is the identity.
    let mut masks = MaskSource::new(1);
    assert_eq!(
        ops.to_host(&l.forward(&ops, &x, Some(&mut masks)).unwrap()).unwrap(),
        before
    );
}

pub fn lora_gradients_reach_a_and_b<O: TensorOps>(ops: O) {
    let mut store = ParamStore::default();
    let l = layer(&ops, &mut store, 1.0);
    store.write(&ops, &[vec![1., -1.], vec![1., 1., 1.]]).unwrap();
    ops.track(store.leaves());
    let x = ops.tensor(vec![1., 2.], &[1, 2]).unwrap();
    let y = l.forward(&ops, &x, None).unwrap();
    // sum(y) as y [1, 3] times ones [3, 1].
    let sum = ops.matmul(&y, &ops.tensor(vec![1.; 3], &[3, 1]).unwrap()).unwrap();
    let grads = ops.backward(&sum).unwrap();
    // d/dA sum(B A x) = (sum B) x^T = 3 * [1, 2]; d/dB = A x = -1 for each row.
    assert_eq!(store.grads(&ops, &grads).unwrap(), [3., 6., -1., -1., -1.]);
}

/// A sublayer of `(x, residual)`, fused or composed.
type Sublayer<'a, T> = dyn Fn(&T, &T) -> T + 'a;

/// The backend's `feed_forward` and `linear_add_norm` against the trait's
/// default compositions of its own operations, bit for bit: values and the
/// gradients of both inputs, with and without the base's dropout and a bias,
/// over more values than one parallel block.
pub fn fused_sublayers_equal_their_composition<O: TensorOps>(ops: O) {
    use crate::ops::{FrozenLinear, FrozenNorm};
    use lora_core::init::CounterMask;
    let (rows, hidden, inner) = (1100, 32, 64);
    let values = |n: usize, seed: u64| normal(1.0, n, &mut rng(seed));
    let weight = |shape: &[usize], seed: u64| {
        ops.weight_from_host(values(shape.iter().product(), seed), shape)
            .unwrap()
    };
    let (w1, b1, w2, b2) = (
        weight(&[inner, hidden], 3),
        weight(&[inner], 4),
        weight(&[hidden, inner], 5),
        weight(&[hidden], 6),
    );
    let (w3, gamma, beta) = (weight(&[hidden, hidden], 7), weight(&[hidden], 8), weight(&[hidden], 9));
    let norm = FrozenNorm {
        gamma: &gamma,
        beta: &beta,
        eps: 1e-12,
    };
    let ones = |r: usize, c: usize| ops.tensor(vec![1.0; r * c], &[r, c]).unwrap();
    let weights = ops.tensor(values(rows * hidden, 10), &[rows, hidden]).unwrap();
    // The gradients of x and the residual through sum(y * weights), and y.
    let run = |f: &Sublayer<'_, O::T>| {
        let x = ops.leaf(values(rows * hidden, 1), &[rows, hidden]).unwrap();
        let residual = ops.leaf(values(rows * hidden, 2), &[rows, hidden]).unwrap();
        ops.track(&[x.clone(), residual.clone()]);
        let y = f(&ops.use_leaf(&x), &ops.use_leaf(&residual));
        let total = ops.matmul(
            &ones(1, rows),
            &ops.matmul(&ops.mul(&y, &weights).unwrap(), &ones(hidden, 1)).unwrap(),
        );
        let grads = ops.backward(&total.unwrap()).unwrap();
        let grad = |l| ops.grad(&grads, l).unwrap().unwrap_or_default();
        (ops.to_host(&y).unwrap(), grad(&x), grad(&residual))
    };
    for (mask, bias) in [(None, Some(&b1)), (CounterMask::new(11, 0.25), None)] {
        let up = FrozenLinear { weight: &w1, bias };
        let down = FrozenLinear {
            weight: &w2,
            bias: Some(&b2),
        };
        let out = FrozenLinear {
            weight: &w3,
            bias: bias.map(|_| &b2),
        };
        let dropped = |y: O::T| match mask {
            Some(m) => ops.dropout(&y, m).unwrap(),
            None => y,
        };
        let fused = run(&|x, _| ops.feed_forward(x, up, down, norm, mask).unwrap());
        let composed = run(&|x, _| {
            let act = ops.gelu(&ops.frozen_linear(x, &w1, bias).unwrap()).unwrap();
            let y = dropped(ops.frozen_linear(&act, &w2, Some(&b2)).unwrap());
            ops.add_layer_norm(&y, x, &gamma, &beta, 1e-12).unwrap()
        });
        assert_eq!(
            (&fused.0, &fused.1),
            (&composed.0, &composed.1),
            "feed-forward, dropout {}",
            mask.is_some()
        );
        let fused = run(&|x, r| ops.linear_add_norm(x, r, out, norm, mask).unwrap());
        let composed = run(&|x, r| {
            let y = dropped(ops.frozen_linear(x, &w3, out.bias).unwrap());
            ops.add_layer_norm(&y, r, &gamma, &beta, 1e-12).unwrap()
        });
        assert_eq!(fused, composed, "linear + norm, dropout {}", mask.is_some());
    }
}

fn bert_config() -> BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 20, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 16, "hidden_act": "gelu", "max_position_embeddings": 16,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0
    }))
    .expect("a valid config")
}

/// Random base weights with Hugging Face's names (no `bert.` prefix, like MiniLM).
fn bert_weights(cfg: &BertConfig) -> HostWeights {
    bert_weights_rounded(cfg, |v| v)
}

/// The same weights with every matrix's values passed through `round`.
fn bert_weights_rounded(cfg: &BertConfig, round: fn(f32) -> f32) -> HostWeights {
    let mut r = rng(99);
    let mut m = HostWeights::default();
    let mut put = |name: String, shape: Vec<usize>, std: f32| {
        let mut v = normal(std, shape.iter().product(), &mut r);
        if shape.len() >= 2 {
            v.iter_mut().for_each(|x| *x = round(*x));
        }
        m.insert(name, shape, &v);
    };
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    put("embeddings.word_embeddings.weight".into(), vec![cfg.vocab_size, h], 1.0);
    put(
        "embeddings.position_embeddings.weight".into(),
        vec![cfg.max_position_embeddings, h],
        0.1,
    );
    put("embeddings.token_type_embeddings.weight".into(), vec![2, h], 0.1);
    put("pooler.dense.weight".into(), vec![h, h], 0.3);
    put("pooler.dense.bias".into(), vec![h], 0.1);
    let mut norms = vec!["embeddings.LayerNorm".to_string()];
    for l in 0..cfg.num_hidden_layers {
        for (_, path, _) in TARGETS {
            let (o, inp) = match path {
                "intermediate.dense" => (i, h),
                "output.dense" => (h, i),
                _ => (h, h),
            };
            put(format!("encoder.layer.{l}.{path}.weight"), vec![o, inp], 0.3);
            put(format!("encoder.layer.{l}.{path}.bias"), vec![o], 0.1);
        }
        norms.push(format!("encoder.layer.{l}.attention.output.LayerNorm"));
        norms.push(format!("encoder.layer.{l}.output.LayerNorm"));
    }
    for n in norms {
        m.insert(format!("{n}.weight"), vec![h], &vec![1.1; h]);
        m.insert(format!("{n}.bias"), vec![h], &vec![0.05; h]);
    }
    m
}

fn text_batch() -> Batch {
    Batch::Text(TextBatch {
        batch_size: 2,
        seq_len: 5,
        input_ids: vec![1, 5, 7, 9, 2, 1, 4, 2, 0, 0],
        attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
        labels: vec![0, 2],
    })
}

fn bert<O: TensorOps>(ops: &O, targets: &[&str]) -> crate::bert::BertClassifier<O> {
    let cfg = bert_config();
    crate::bert::build(
        ops.clone(),
        cfg.clone(),
        &bert_weights(&cfg),
        &spec(targets, 2, false),
        3,
        0.0,
        7,
    )
    .unwrap()
}

/// Random non-zero values for every trainable parameter, so that B != 0.
fn perturb(m: &mut dyn AdapterModel, seed: u64) {
    let mut r = rng(seed);
    let v: Vec<Vec<f32>> = m.params().iter().map(|p| normal(0.2, p.numel(), &mut r)).collect();
    m.write_params(&v).unwrap();
}

const ALL: [&str; 6] = [
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

pub fn bert_with_lora_equals_the_base_at_initialisation<O: TensorOps>(ops: O) {
    let with = bert(&ops, &["query", "value", "intermediate.dense", "output.dense"]);
    let without = bert(&ops, &[]);
    let (a, b) = (
        with.hidden_states(&text_batch()).unwrap(),
        without.hidden_states(&text_batch()).unwrap(),
    );
    assert_eq!(a.shape, [2, 5, 8]);
    assert_eq!(a.data, b.data);
}

pub fn bert_merged_equals_unmerged_and_unmerge_is_exact<O: TensorOps>(ops: O) {
    let mut m = bert(&ops, &ALL);
    perturb(&mut m, 5);
    let before = m.predict(&text_batch()).unwrap();
    m.merge().unwrap();
    close(&m.predict(&text_batch()).unwrap().data, &before.data, 1e-5);
    m.unmerge().unwrap();
    assert_eq!(m.predict(&text_batch()).unwrap().data, before.data);
}

/// The logits (whose last block computes only the first tokens) against the
/// pooler and classifier applied by hand to the full last hidden states: with
/// LoRA on the output projection (the composed attention) and without (the
/// fused one elsewhere), a padded sequence in the batch.
pub fn bert_logits_are_the_pooled_full_hidden_states<O: TensorOps>(ops: O) {
    let cfg = bert_config();
    let (h, base) = (cfg.hidden_size, bert_weights(&cfg));
    let pooler_w = base.view("pooler.dense.weight").unwrap().to_f32();
    let pooler_b = base.view("pooler.dense.bias").unwrap().to_f32();
    for targets in [&ALL[..], &["query", "value"][..]] {
        let mut m = bert(&ops, targets);
        perturb(&mut m, 11);
        let params = m.read_params().unwrap();
        let named = |suffix: &str| {
            let i = m.params().iter().position(|p| p.name.ends_with(suffix)).unwrap();
            params[i].clone()
        };
        let (head_w, head_b) = (named("classifier.weight"), named("classifier.bias"));
        let hidden = m.hidden_states(&text_batch()).unwrap();
        let (b, t) = (hidden.shape[0], hidden.shape[1]);
        let mut want = Vec::new();
        for s in 0..b {
            let first = &hidden.data[s * t * h..][..h];
            let pooled: Vec<f32> = (0..h)
                .map(|o| (pooler_b[o] + (0..h).map(|i| pooler_w[o * h + i] * first[i]).sum::<f32>()).tanh())
                .collect();
            want.extend(
                (0..head_b.len()).map(|c| head_b[c] + (0..h).map(|i| head_w[c * h + i] * pooled[i]).sum::<f32>()),
            );
        }
        let got = m.predict(&text_batch()).unwrap();
        assert_eq!(got.shape, [b, head_b.len()]);
        close(&got.data, &want, 1e-5);
    }
}

pub fn bert_gradients_reach_every_parameter<O: TensorOps>(ops: O) {
    let mut m = bert(&ops, &["query", "value"]);
    perturb(&mut m, 5);
    // 2 layers x 2 modules x (A, B) + classifier weight and bias.
    assert_eq!(m.params().len(), 10);
    let out = m.train_step(&text_batch(), 0).unwrap();
    assert_eq!(out.weight, 2.0);
    for (g, info) in out.split_grads(m.params()).iter().zip(m.params()) {
        let norm: f32 = g.iter().map(|x| x * x).sum();
        assert!(norm > 0.0 && norm.is_finite(), "gradient of {}: {norm}", info.name);
    }
    // The same loss and gradients again: a training step changes nothing it reads.
    let again = m.train_step(&text_batch(), 0).unwrap();
    assert_eq!((out.loss, &out.grads), (again.loss, &again.grads));
}

/// BERT's own hidden and attention dropout: on in training (a pure function of
/// the step's seed), off in evaluation, and nothing at all when switched off.
pub fn bert_base_dropout_trains_and_stays_off_in_evaluation<O: TensorOps>(ops: O) {
    let mut cfg = bert_config();
    cfg.hidden_dropout_prob = 0.3;
    cfg.attention_probs_dropout_prob = 0.4;
    let lora = spec(&["query", "value"], 2, false);
    let build = |cfg: BertConfig| {
        let mut m = crate::bert::build(ops.clone(), cfg.clone(), &bert_weights(&cfg), &lora, 3, 0.0, 7).unwrap();
        perturb(&mut m, 5);
        m
    };
    let (mut on, mut off) = (build(cfg.clone()), build(cfg.clone().without_dropout()));
    let b = text_batch();
    let logits = on.predict(&b).unwrap().data;
    assert_eq!(logits, off.predict(&b).unwrap().data, "evaluation has no dropout");
    // Off: the training loss is the evaluation loss (no dropout anywhere else here).
    let Batch::Text(t) = &b else { unreachable!() };
    let eval_loss = logits
        .chunks(3)
        .zip(&t.labels)
        .map(|(row, &y)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            lse - row[y as usize]
        })
        .sum::<f32>()
        / 2.0;
    let plain = off.train_step(&b, 0).unwrap();
    assert!((plain.loss - eval_loss).abs() < 1e-5, "{} vs {eval_loss}", plain.loss);
    // On: another loss, the same again for the same seed, another for another seed.
    let (first, again, other) = (
        on.train_step(&b, 0).unwrap(),
        on.train_step(&b, 0).unwrap(),
        on.train_step(&b, 1).unwrap(),
    );
    assert!((first.loss - plain.loss).abs() > 1e-4, "dropout changed nothing");
    assert_eq!((first.loss, &first.grads), (again.loss, &again.grads));
    assert_ne!(first.loss, other.loss);
    // Attention dropout alone reaches the loss too.
    let mut attention_only = cfg.clone().without_dropout();
    attention_only.attention_probs_dropout_prob = 0.4;
    let mut m = build(attention_only);
    assert!((m.train_step(&b, 0).unwrap().loss - plain.loss).abs() > 1e-5);
}

pub fn bert_targets_and_ranks_are_checked<O: TensorOps>(ops: O) {
    let cfg = bert_config();
    let w = bert_weights(&cfg);
    let build = |s: LoraSpec| crate::bert::build(ops.clone(), cfg.clone(), &w, &s, 3, 0.0, 7);
    let text = build(spec(&["quary"], 2, false)).err().unwrap().to_string();
    assert!(
        text.contains("did you mean `query`") && text.contains("intermediate.dense"),
        "{text}"
    );
    let text = build(spec(&["query"], 9, false)).err().unwrap().to_string();
    assert!(text.contains("Valid range: 1 <= rank <= 8"), "{text}");
    let (plain, rs) = (
        build(spec(&["query"], 2, false)).unwrap(),
        build(spec(&["query"], 2, true)).unwrap(),
    );
    let first = |m: &crate::bert::BertClassifier<O>| m.params()[0].name.clone();
    assert_eq!(
        first(&plain),
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
    );
    assert_eq!(
        bert(&ops, &["value", "output.dense"]).peft_info().target_modules,
        serde_json::json!(r".*\.layer\.\d+\.(attention\.self\.value|output\.dense)")
    );
    assert_eq!(
        bert(&ops, &["value", "query"]).peft_info().target_modules,
        serde_json::json!(["query", "value"])
    );
    // The same B moves the outputs further under rsLoRA: alpha / sqrt(r) = 2.83 against alpha / r = 2.
    let mut outs = Vec::new();
    for mut m in [plain, rs] {
        let mut v = m.read_params().unwrap();
        v[1] = vec![0.1; v[1].len()];
        m.write_params(&v).unwrap();
        let base = bert(&ops, &[]).hidden_states(&text_batch()).unwrap();
        let h = m.hidden_states(&text_batch()).unwrap();
        outs.push(
            h.data
                .iter()
                .zip(&base.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max),
        );
    }
    assert!(outs[1] > outs[0] * 1.2, "rsLoRA should scale more: {outs:?}");
}

fn vit_config() -> VitConfig {
    let mut cfg: VitConfig = serde_json::from_value(serde_json::json!({
        "image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 8,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16
    }))
    .expect("a valid config");
    cfg.layer_norm_eps = 1e-6;
    cfg
}

fn image_batch(n: usize, seed: u64) -> ImageBatch {
    let mut r = rng(seed);
    ImageBatch {
        batch_size: n,
        channels: 1,
        height: 8,
        width: 8,
        pixels: normal(1.0, n * 64, &mut r),
        labels: (0..n).map(|i| (i % 3) as u32).collect(),
        soft_labels: None,
    }
}

/// Plain SGD on the host, enough to see the loss fall.
fn sgd(m: &mut dyn AdapterModel, b: &Batch, steps: usize, lr: f32) -> (f32, f32) {
    let first = m.train_step(b, 0).unwrap().loss;
    let mut last = first;
    for s in 0..steps {
        let out = m.train_step(b, s as u64).unwrap();
        last = out.loss;
        let mut p = m.read_params().unwrap();
        for (v, g) in p.iter_mut().zip(&out.split_grads(m.params())) {
            v.iter_mut().zip(g).for_each(|(v, g)| *v -= lr * g);
        }
        m.write_params(&p).unwrap();
    }
    (first, last)
}

/// A new ViT saved as a base in a temporary folder.
fn saved_base<O: TensorOps>(ops: &O) -> (crate::vit::VitClassifier<O>, TempDir) {
    let full = crate::vit::new_full(ops.clone(), vit_config(), 3, 1).unwrap();
    let dir = TempDir::new("vit");
    assert!(full.save_base(&dir.0).unwrap());
    (full, dir)
}

fn from_base<O: TensorOps>(ops: &O, dir: &TempDir, targets: &[&str], classes: usize) -> crate::vit::VitClassifier<O> {
    let cfg = VitConfig::from_file(&dir.0.join(CONFIG_FILE)).unwrap();
    let weights = SafetensorsFile::open(&dir.0.join(WEIGHTS_FILE)).unwrap();
    crate::vit::from_base(ops.clone(), cfg, &weights, &spec(targets, 2, false), classes, 3).unwrap()
}

pub fn vit_full_training_learns_and_its_saved_base_reloads<O: TensorOps>(ops: O) {
    let mut full = crate::vit::new_full(ops.clone(), vit_config(), 3, 1).unwrap();
    let s = full.summary();
    assert_eq!(s.trainable_parameters, s.total_parameters);
    assert_eq!(
        full.params()[0].shape,
        [8, 1, 4, 4],
        "the patch projection is stored as a Conv2d kernel"
    );
    assert_eq!(full.params()[0].compute_shape, [8, 16]);
    let b = Batch::Image(image_batch(6, 2));
    // lr 0.1: the loss falls smoothly (0.42x in 80 steps); at 1.0 it oscillated,
    // and whether it ended under 0.7x turned on the last bits of an exp.
    let (first, last) = sgd(&mut full, &b, 80, 0.1);
    assert!(last < first * 0.7, "loss {first} -> {last}");
    // Every base weight got a gradient.
    let g = full.train_step(&b, 0).unwrap().split_grads(full.params());
    assert!(g.iter().all(|g| g.iter().any(|v| *v != 0.0)));
    let dir = TempDir::new("vit-full");
    assert!(full.save_base(&dir.0).unwrap());
    assert_eq!(VitConfig::from_file(&dir.0.join(CONFIG_FILE)).unwrap(), vit_config());
    let adapted = from_base(&ops, &dir, &["query", "value"], 3);
    assert!(!adapted.save_base(&dir.0).unwrap(), "a LoRA model writes no base");
    let (a, f) = (adapted.hidden_states(&b).unwrap(), full.hidden_states(&b).unwrap());
    assert_eq!(a.shape, [6, 5, 8]);
    close(&a.data, &f.data, 1e-4);
}

pub fn vit_lora_trains_the_adapter_and_the_head_and_merges<O: TensorOps>(ops: O) {
    let (full, dir) = saved_base(&ops);
    let mut m = from_base(&ops, &dir, &["value", "intermediate.dense"], 4);
    let names: Vec<&str> = m.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 2 * 2 * 2 + 2);
    assert_eq!(
        names[0],
        "base_model.model.vit.encoder.layer.0.attention.attention.value.lora_A.weight"
    );
    assert_eq!(
        names[2],
        "base_model.model.vit.encoder.layer.0.intermediate.dense.lora_A.weight"
    );
    assert_eq!(*names.last().unwrap(), "base_model.model.classifier.bias");
    let s = m.summary();
    // r=2: value 2*(8+8), intermediate 2*(8+16), per layer; head 4*8+4.
    assert_eq!(s.trainable_parameters, 2 * (32 + 48) + 36);
    assert_eq!(
        s.total_parameters - s.trainable_parameters,
        full.summary().total_parameters - 3 * 8 - 3
    );
    let b = Batch::Image(image_batch(8, 5));
    let (first, last) = sgd(&mut m, &b, 40, 0.5);
    assert!(last < first, "loss {first} -> {last}");
    let before = m.predict(&b).unwrap();
    // The logits (the last block computes the class tokens alone) are the head
    // applied by hand to the full final hidden states' class tokens.
    let (params, hidden) = (m.read_params().unwrap(), m.hidden_states(&b).unwrap());
    let (head_w, head_b) = (&params[params.len() - 2], &params[params.len() - 1]);
    let (t, h) = (hidden.shape[1], hidden.shape[2]);
    let want: Vec<f32> = (0..hidden.shape[0])
        .flat_map(|s| {
            let class_token = &hidden.data[s * t * h..][..h];
            (0..head_b.len()).map(move |c| head_b[c] + (0..h).map(|i| head_w[c * h + i] * class_token[i]).sum::<f32>())
        })
        .collect();
    close(&before.data, &want, 1e-5);
    m.merge().unwrap();
    close(&m.predict(&b).unwrap().data, &before.data, 1e-4);
    m.unmerge().unwrap();
    assert_eq!(m.predict(&b).unwrap(), before);
}

pub fn vit_patch_embedding_takes_lora_with_conv_shapes<O: TensorOps>(ops: O) {
    let (_, dir) = saved_base(&ops);
    let mut m = from_base(&ops, &dir, &["patch_embeddings.projection"], 3);
    let p = m.params();
    assert_eq!(
        p[0].name,
        "base_model.model.vit.embeddings.patch_embeddings.projection.lora_A.weight"
    );
    assert_eq!(
        (p[0].shape.as_slice(), p[1].shape.as_slice()),
        (&[2, 1, 4, 4][..], &[8, 2, 1, 1][..])
    );
    assert_eq!(
        (p[0].compute_shape.as_slice(), p[1].compute_shape.as_slice()),
        (&[2, 16][..], &[8, 2][..])
    );
    let b = Batch::Image(image_batch(6, 4));
    let (first, last) = sgd(&mut m, &b, 30, 0.5);
    assert!(last < first, "{first} -> {last}");
    let before = m.predict(&b).unwrap();
    m.merge().unwrap();
    close(&m.predict(&b).unwrap().data, &before.data, 1e-4);
}

pub fn vit_soft_labels_equal_one_hot_labels<O: TensorOps>(ops: O) {
    let mut m = crate::vit::new_full(ops, vit_config(), 3, 1).unwrap();
    let mut b = image_batch(4, 9);
    let hard = m.train_step(&Batch::Image(b.clone()), 0).unwrap();
    let mut soft = vec![0.0; 12];
    for (i, &l) in b.labels.iter().enumerate() {
        soft[i * 3 + l as usize] = 1.0;
    }
    b.soft_labels = Some(soft);
    let s = m.train_step(&Batch::Image(b.clone()), 0).unwrap();
    assert!((hard.loss - s.loss).abs() < 1e-5, "{} vs {}", hard.loss, s.loss);
    close(&hard.grads, &s.grads, 1e-5);
    b.height = 4;
    let e = m.predict(&Batch::Image(b)).unwrap_err().to_string();
    assert!(e.contains("takes 1x8x8 images") && e.contains("gives 1x4x8"), "{e}");
}

/// The loss and gradients of a checkpointed step against the full graph's:
/// each parameter's largest difference within 1e-6 of its largest gradient.
fn same_step(plain: &mut dyn AdapterModel, ckpt: &mut dyn AdapterModel, b: &Batch, seed: u64) {
    let (p, c) = (plain.train_step(b, seed).unwrap(), ckpt.train_step(b, seed).unwrap());
    assert!(
        (p.loss - c.loss).abs() <= 1e-6 * p.loss.abs(),
        "loss {} vs {}",
        p.loss,
        c.loss
    );
    assert_eq!(p.weight, c.weight);
    for ((gp, gc), info) in p
        .split_grads(plain.params())
        .iter()
        .zip(c.split_grads(ckpt.params()))
        .zip(plain.params())
    {
        let scale = gp.iter().fold(0f32, |m, g| m.max(g.abs()));
        assert!(scale > 0.0, "{} has no gradient", info.name);
        let diff = gp.iter().zip(&gc).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-6 * scale, "{}: difference {diff} against {scale}", info.name);
    }
}

pub fn checkpointed_gradients_equal_the_full_graph<O: TensorOps>(ops: O) {
    assert!(ops.checkpointing(), "{} implements checkpointing", ops.backend());
    // BERT, LoRA on every module with dropout, and classifier dropout: the
    // recomputed blocks must draw the same masks.
    let cfg = bert_config();
    let mut lora = spec(&TARGETS.map(|(name, _, _)| name), 2, false);
    lora.dropout = 0.3;
    let build = |checkpointing: bool| {
        let mut m = crate::bert::build(ops.clone(), cfg.clone(), &bert_weights(&cfg), &lora, 3, 0.2, 7).unwrap();
        perturb(&mut m, 5);
        m.checkpointing = checkpointing;
        m
    };
    let (mut plain, mut ckpt) = (build(false), build(true));
    for seed in [0, 11] {
        same_step(&mut plain, &mut ckpt, &text_batch(), seed);
    }
    // ViT in full mode: the embedding's own parameters get their gradients too.
    let b = Batch::Image(image_batch(5, 3));
    let mut plain = crate::vit::new_full(ops.clone(), vit_config(), 3, 1).unwrap();
    let mut ckpt = crate::vit::new_full(ops.clone(), vit_config(), 3, 1).unwrap();
    ckpt.checkpointing = true;
    same_step(&mut plain, &mut ckpt, &b, 0);
    // LoRA on the patch embedding and a block's linears.
    let (_, dir) = saved_base(&ops);
    let targets = ["patch_embeddings.projection", "query", "intermediate.dense"];
    let (mut plain, mut ckpt) = (from_base(&ops, &dir, &targets, 3), from_base(&ops, &dir, &targets, 3));
    perturb(&mut plain, 8);
    perturb(&mut ckpt, 8);
    ckpt.checkpointing = true;
    same_step(&mut plain, &mut ckpt, &b, 2);
}

/// `x` rounded to the nearest bf16 (ties to even), as an f32.
fn to_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    f32::from_bits((bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
}

/// `x` rounded to the nearest f16 (ties to even), as an f32: normal numbers
/// keep 10 mantissa bits (the test's weights are far from f16's subnormals).
fn to_f16(x: f32) -> f32 {
    let bits = x.to_bits();
    f32::from_bits((bits + 0xfff + ((bits >> 13) & 1)) & 0xffff_e000)
}

pub fn narrow_base_weights_compute_like_rounded_f32_weights<O: TensorOps>(ops: O) {
    let cfg = bert_config();
    let lora = spec(&["query", "value", "intermediate.dense"], 2, false);
    for (dtype, round) in [(DType::Bf16, to_bf16 as fn(f32) -> f32), (DType::F16, to_f16)] {
        let Ok(narrow) = ops.with_dtype(dtype) else {
            assert!(
                !ops.dtypes().contains(&dtype),
                "{} lists {dtype:?} and refuses it",
                ops.backend()
            );
            continue;
        };
        // The narrow model stores the weights rounded and computes in f32: the
        // same numbers as an f32 model given the rounded weights.
        let mut m = crate::bert::build(narrow, cfg.clone(), &bert_weights(&cfg), &lora, 3, 0.0, 7).unwrap();
        let rounded = bert_weights_rounded(&cfg, round);
        let mut reference = crate::bert::build(ops.clone(), cfg.clone(), &rounded, &lora, 3, 0.0, 7).unwrap();
        perturb(&mut m, 5);
        perturb(&mut reference, 5);
        let b = text_batch();
        close(&m.predict(&b).unwrap().data, &reference.predict(&b).unwrap().data, 1e-6);
        let (x, y) = (m.train_step(&b, 0).unwrap(), reference.train_step(&b, 0).unwrap());
        assert!(
            (x.loss - y.loss).abs() <= 1e-6,
            "{dtype:?}: loss {} vs {}",
            x.loss,
            y.loss
        );
        close(&x.grads, &y.grads, 1e-6);
        // And not the unrounded model's: the test sees the rounding.
        let mut plain = bert(&ops, &["query", "value", "intermediate.dense"]);
        perturb(&mut plain, 5);
        let p = plain.predict(&b).unwrap();
        assert!(
            p.data
                .iter()
                .zip(&m.predict(&b).unwrap().data)
                .any(|(a, b)| (a - b).abs() > 1e-5)
        );
        // Merging leaves the stored base untouched.
        let before = m.predict(&b).unwrap();
        m.merge().unwrap();
        close(&m.predict(&b).unwrap().data, &before.data, 1e-5);
        m.unmerge().unwrap();
        assert_eq!(m.predict(&b).unwrap(), before);
    }
}
