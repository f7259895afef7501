//! Exports of a tiny Llama (one layer, hidden 256 so that Q4_K applies) with a
//! seeded adapter: the merge checked by hand computation in both row orders,
//! every quantization against the f32 merge, llama.cpp's adapter layout, the
//! checks that refuse before writing, and (when the `gguf` Python package is
//! available; CI installs it) llama.cpp's own reader on every file.

use std::path::{Path, PathBuf};

use lora_core::gguf::{GgmlType, Value, write};
use lora_core::llama::{LlamaConfig, hf_name};
use lora_export::{Adapter, GgufFile, llama};
use lora_nn::gguf::unpermute_rows;

const D: usize = 256;
const HEADS: usize = 4;
const KV: usize = 2;
const FF: usize = 512;
const VOCAB: usize = 16;
const R: usize = 4;
const ALPHA: f64 = 8.0;

fn noise(n: usize, seed: u32, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * amp
        })
        .collect()
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `[out, in]` of each linear module.
const MODULES: [(&str, &str, usize, usize); 7] = [
    ("q_proj", "attn_q", D, D),
    ("k_proj", "attn_k", KV * D / HEADS, D),
    ("v_proj", "attn_v", KV * D / HEADS, D),
    ("o_proj", "attn_output", D, D),
    ("gate_proj", "ffn_gate", FF, D),
    ("up_proj", "ffn_up", FF, D),
    ("down_proj", "ffn_down", D, FF),
];

fn tiny_llama(dir: &Path) -> PathBuf {
    tiny_llama_typed(dir, GgmlType::F32)
}

/// The tiny Llama with its layer's matrices stored as `ty` (SmolLM2's base is Q4_1).
fn tiny_llama_typed(dir: &Path, ty: GgmlType) -> PathBuf {
    let meta = [
        ("general.architecture", Value::Str("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.context_length", Value::U32(64)),
        ("llama.embedding_length", Value::U32(D as u32)),
        ("llama.feed_forward_length", Value::U32(FF as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV as u32)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.chat_template", Value::Str("{{ messages }}".into())),
    ];
    let mut tensors = vec![
        (
            "token_embd.weight".to_string(),
            vec![D as u64, VOCAB as u64],
            bytes(&noise(D * VOCAB, 1, 0.1)),
        ),
        ("output_norm.weight".to_string(), vec![D as u64], bytes(&vec![1.0; D])),
        (
            "blk.0.attn_norm.weight".to_string(),
            vec![D as u64],
            bytes(&noise(D, 2, 1.0)),
        ),
        (
            "blk.0.ffn_norm.weight".to_string(),
            vec![D as u64],
            bytes(&noise(D, 3, 1.0)),
        ),
    ];
    for (i, (_, g, out, inp)) in MODULES.iter().enumerate() {
        tensors.push((
            format!("blk.0.{g}.weight"),
            vec![*inp as u64, *out as u64],
            lora_export::quant::quantize(ty, &noise(out * inp, 10 + i as u32, 0.05)),
        ));
    }
    let t: Vec<(&str, Vec<u64>, u32, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, b)| {
            let id = if n.starts_with("blk.0.") && d.len() == 2 {
                ty.into()
            } else {
                0
            };
            (n.as_str(), d.clone(), id, b.clone())
        })
        .collect();
    let path = match ty {
        GgmlType::F32 => dir.join("tiny.gguf"),
        _ => dir.join(format!("tiny-{}.gguf", ty.name())),
    };
    std::fs::write(&path, write(&meta, &t)).unwrap();
    path
}

/// A PEFT adapter on every module of layer 0, rank R; `shape_bug` makes q_proj's A too narrow.
fn adapter(dir: &Path, shape_bug: bool) -> PathBuf {
    let run = dir.join(if shape_bug { "bad-run" } else { "run" });
    std::fs::create_dir_all(&run).unwrap();
    let mut owned = Vec::new();
    for (i, (m, _, out, inp)) in MODULES.iter().enumerate() {
        let key = format!("base_model.model.{}", hf_name(0, m));
        let inp = if shape_bug && *m == "q_proj" { inp - 32 } else { *inp };
        owned.push((
            format!("{key}.lora_A.weight"),
            vec![R, inp],
            bytes(&noise(R * inp, 100 + i as u32, 0.1)),
        ));
        owned.push((
            format!("{key}.lora_B.weight"),
            vec![*out, R],
            bytes(&noise(out * R, 200 + i as u32, 0.05)),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        run.join("adapter_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let cfg = serde_json::json!({"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "task_type": "CAUSAL_LM",
        "use_rslora": false, "rank_pattern": {}, "alpha_pattern": {}});
    std::fs::write(run.join("adapter_config.json"), cfg.to_string()).unwrap();
    run
}

/// `scale * B A` by plain loops, `[out, in]` in Hugging Face's row order.
fn delta_by_hand(run: &Path, module: &str, out: usize, inp: usize) -> Vec<f32> {
    let st_bytes = std::fs::read(run.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let key = format!("base_model.model.{}", hf_name(0, module));
    let a = floats(st.tensor(&format!("{key}.lora_A.weight")).unwrap().data());
    let b = floats(st.tensor(&format!("{key}.lora_B.weight")).unwrap().data());
    let mut d = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            let mut s = 0f64;
            for k in 0..R {
                s += b[o * R + k] as f64 * a[k * inp + i] as f64;
            }
            d[o * inp + i] = (ALPHA / R as f64 * s) as f32;
        }
    }
    d
}

fn heads(module: &str) -> Option<usize> {
    match module {
        "q_proj" => Some(HEADS),
        "k_proj" => Some(KV),
        _ => None,
    }
}

/// A stored `[out, in]` f32 matrix in Hugging Face's row order.
fn hf_rows(values: &[f32], out: usize, module: &str) -> Vec<f32> {
    match heads(module) {
        Some(h) => floats(&unpermute_rows(&bytes(values), out, h)),
        None => values.to_vec(),
    }
}

fn export_gguf(base: &Path, run: &Path, ty: GgmlType, out: &Path) {
    let base = GgufFile::open(base).unwrap();
    let adapter = Adapter::read(run).unwrap();
    let (meta, tensors) = llama::merged_gguf(&base, &adapter, ty.into(), llama::Rounding::Reference, None).unwrap();
    lora_export::write::gguf(out, &meta, &tensors).unwrap();
}

#[test]
fn merged_f32_is_the_base_plus_the_scaled_update_in_both_row_orders() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, run) = (tiny_llama(dir.path()), adapter(dir.path(), false));
    let out = dir.path().join("merged-f32.gguf");
    export_gguf(&base_path, &run, GgmlType::F32, &out);
    let (base, merged) = (GgufFile::open(&base_path).unwrap(), GgufFile::open(&out).unwrap());
    let adapter = Adapter::read(&run).unwrap();
    let st = llama::merged_safetensors(&base, &adapter).unwrap();
    let hf = safetensors::SafeTensors::deserialize(&st[0].1).unwrap();
    for (m, g, o, i) in MODULES {
        let name = format!("blk.0.{g}.weight");
        let want: Vec<f32> = hf_rows(&base.matrix(&name).unwrap().to_f32(), o, m)
            .iter()
            .zip(delta_by_hand(&run, m, o, i))
            .map(|(w, d)| w + d)
            .collect();
        let got = hf_rows(&merged.matrix(&name).unwrap().to_f32(), o, m);
        let from_st = floats(hf.tensor(&format!("{}.weight", hf_name(0, m))).unwrap().data());
        for (label, got) in [("gguf", got), ("safetensors", from_st)] {
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-6, "{label} {m}: {worst}");
        }
    }
    // Norms and the embedding pass through unchanged; the tokenizer's metadata too.
    assert_eq!(
        merged.vector("blk.0.attn_norm.weight").unwrap(),
        base.vector("blk.0.attn_norm.weight").unwrap()
    );
    assert_eq!(
        merged.header.get("tokenizer.chat_template"),
        base.header.get("tokenizer.chat_template")
    );
    assert_eq!(merged.header.get("general.file_type").and_then(Value::as_u64), Some(0));
    let config: serde_json::Value = serde_json::from_slice(&st[1].1).unwrap();
    assert_eq!(config["num_key_value_heads"], KV);
}

#[test]
fn every_quantization_decodes_near_the_f32_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, run) = (tiny_llama(dir.path()), adapter(dir.path(), false));
    let f32_path = dir.path().join("merged-f32.gguf");
    export_gguf(&base_path, &run, GgmlType::F32, &f32_path);
    let reference = GgufFile::open(&f32_path).unwrap();
    for (ty, tol) in [
        (GgmlType::F16, 1e-3),
        (GgmlType::Q8_0, 1e-2),
        // The symmetric types clamp the value opposite the largest one: one step off.
        (GgmlType::Q5_0, 1.0 / 16.0 + 1e-3),
        (GgmlType::Q4_1, 0.1),
        (GgmlType::Q4_0, 1.0 / 8.0 + 1e-3),
        (GgmlType::Q4_K, 0.1),
        (GgmlType::Q6_K, 1.0 / 32.0),
    ] {
        let path = dir.path().join(format!("merged-{}.gguf", ty.name()));
        export_gguf(&base_path, &run, ty, &path);
        let f = GgufFile::open(&path).unwrap();
        for (_, g, _, _) in MODULES {
            let name = format!("blk.0.{g}.weight");
            let m = f.matrix(&name).unwrap();
            assert_eq!(m.ggml, ty, "{name}");
            let (got, want) = (m.to_f32(), reference.matrix(&name).unwrap().to_f32());
            let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
            assert!(worst <= tol, "{ty:?} {name}: {worst}");
        }
        // The tied embedding stays at 8 bits below 8 bits.
        let embd = f.matrix("token_embd.weight").unwrap().ggml;
        assert!(
            matches!(
                (ty, embd),
                (GgmlType::F16, GgmlType::F16) | (GgmlType::Q6_K, GgmlType::Q6_K) | (_, GgmlType::Q8_0)
            ),
            "{ty:?}: {embd:?}"
        );
    }
}

#[test]
fn q4_1_of_a_q4_1_base_keeps_its_blocks_and_unbiased_rounding_keeps_a_small_update() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = tiny_llama_typed(dir.path(), GgmlType::Q4_1);
    let base = GgufFile::open(&base_path).unwrap();
    let run = adapter(dir.path(), false);
    let mut adapter = Adapter::read(&run).unwrap();
    let merge = |adapter: &Adapter, rounding| {
        let (_, tensors) = llama::merged_gguf(&base, adapter, GgmlType::Q4_1.into(), rounding, None).unwrap();
        tensors
    };
    // A zero update: both roundings give back the base's own blocks, byte for byte
    // (ggml's min/max quantizer lands on the grid it came from).
    let b_names: Vec<String> = adapter
        .tensors
        .keys()
        .filter(|k| k.contains("lora_B"))
        .cloned()
        .collect();
    for k in &b_names {
        adapter
            .tensors
            .get_mut(k)
            .unwrap()
            .data
            .iter_mut()
            .for_each(|v| *v = 0.0);
    }
    for rounding in [llama::Rounding::Reference, llama::Rounding::Fitted] {
        for t in merge(&adapter, rounding)
            .iter()
            .filter(|t| t.name.starts_with("blk.0.") && t.dims.len() == 2)
        {
            assert_eq!(t.bytes, base.matrix(&t.name).unwrap().bytes, "{rounding:?} {}", t.name);
        }
    }
    // An update of about 2% of a step (LoRA's usual size next to a 4-bit step):
    // the fraction of it that the merged file keeps, <Q - W, delta> / |delta|^2.
    let adapter = Adapter::read(&run).unwrap();
    let mut small = adapter.clone();
    for k in &b_names {
        small
            .tensors
            .get_mut(k)
            .unwrap()
            .data
            .iter_mut()
            .for_each(|v| *v *= 0.003);
    }
    let kept = |rounding| {
        let (mut dot, mut norm) = (0f64, 0f64);
        for t in merge(&small, rounding)
            .iter()
            .filter(|t| t.name.starts_with("blk.0.") && t.dims.len() == 2)
        {
            let m = MODULES
                .iter()
                .find(|m| t.name == format!("blk.0.{}.weight", m.1))
                .unwrap();
            let w = hf_rows(&base.matrix(&t.name).unwrap().to_f32(), m.2, m.0);
            let mut q = vec![0f32; w.len()];
            lora_nn::gguf::decode(GgmlType::Q4_1, &t.bytes, &mut q);
            let q = hf_rows(&q, m.2, m.0);
            let d: Vec<f32> = delta_by_hand(&run, m.0, m.2, m.3).iter().map(|v| v * 0.003).collect();
            for ((q, w), d) in q.iter().zip(&w).zip(&d) {
                dot += f64::from((q - w) * d);
                norm += f64::from(d * d);
            }
        }
        dot / norm
    };
    let (reference, unbiased) = (kept(llama::Rounding::Reference), kept(llama::Rounding::Fitted));
    assert!(
        reference.abs() < 0.3,
        "nearest rounding keeps {reference} of the update"
    );
    // Not all of it: a value at a block's lowest or highest level (2 of 32)
    // cannot move outward on the base's grid.
    assert!(
        (0.85..1.1).contains(&unbiased),
        "unbiased rounding keeps {unbiased} of the update"
    );
}

#[test]
fn adapter_gguf_has_llama_cpp_keys_and_b_rows_in_gguf_order() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, run) = (tiny_llama(dir.path()), adapter(dir.path(), false));
    let base = GgufFile::open(&base_path).unwrap();
    let (meta, tensors) = llama::adapter_gguf(&base, &Adapter::read(&run).unwrap()).unwrap();
    let out = dir.path().join("adapter.gguf");
    lora_export::write::gguf(&out, &meta, &tensors).unwrap();
    let h = lora_core::gguf::Header::read(&out).unwrap();
    assert_eq!(h.get("general.type").and_then(Value::as_str), Some("adapter"));
    assert_eq!(h.get("adapter.type").and_then(Value::as_str), Some("lora"));
    assert_eq!(h.get("adapter.lora.alpha"), Some(&Value::F32(ALPHA as f32)));
    assert_eq!(h.tensors.len(), 2 * MODULES.len());
    let f = GgufFile::open(&out).unwrap();
    let st_bytes = std::fs::read(run.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    for (m, g, o, i) in MODULES {
        let a = f.matrix(&format!("blk.0.{g}.weight.lora_a")).unwrap();
        let b = f.matrix(&format!("blk.0.{g}.weight.lora_b")).unwrap();
        assert_eq!((a.shape, b.shape), ([R, i], [o, R]), "{m}");
        let key = format!("base_model.model.{}", hf_name(0, m));
        let peft_b = floats(st.tensor(&format!("{key}.lora_B.weight")).unwrap().data());
        assert_eq!(hf_rows(&b.to_f32(), o, m), peft_b, "{m}");
    }
}

fn code(e: lora_core::Error) -> String {
    match e {
        lora_core::Error::Invalid(d) => d.to_string(),
        other => panic!("not an input error: {other}"),
    }
}

#[test]
fn checks_refuse_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = tiny_llama(dir.path());
    let base = GgufFile::open(&base_path).unwrap();
    // A missing adapter.
    let err = code(Adapter::read(&dir.path().join("nowhere")).unwrap_err());
    assert!(err.contains("export::adapter-missing"), "{err}");
    // Shapes that do not fit this base.
    let bad = Adapter::read(&adapter(dir.path(), true)).unwrap();
    let err = code(
        llama::merged_gguf(&base, &bad, GgmlType::Q8_0.into(), llama::Rounding::Fitted, None)
            .err()
            .unwrap(),
    );
    assert!(err.contains("export::base-mismatch") && err.contains("q_proj"), "{err}");
    let err = code(llama::adapter_gguf(&base, &bad).err().unwrap());
    assert!(err.contains("export::base-mismatch"), "{err}");
    // A base other than the recorded one.
    let run = adapter(dir.path(), false);
    lora_export::record::write(&run, std::slice::from_ref(&base_path)).unwrap();
    assert!(lora_export::record::check(&run, std::slice::from_ref(&base_path)).unwrap());
    let other = dir.path().join("other").join("tiny.gguf");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    let mut changed = std::fs::read(&base_path).unwrap();
    *changed.last_mut().unwrap() ^= 1;
    std::fs::write(&other, changed).unwrap();
    let err = code(lora_export::record::check(&run, &[other]).unwrap_err());
    assert!(err.contains("export::base-mismatch") && err.contains("sha256"), "{err}");
    // A quantization the architecture cannot take: hidden 32 has no whole Q4_K super-block.
    let small =
        GgufFile::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/validate/models/tiny-llama.gguf"))
            .unwrap();
    let err = code(llama::check_quant(&small, GgmlType::Q4_K.into()).unwrap_err());
    assert!(err.contains("export::quant-unsupported"), "{err}");
    llama::check_quant(&small, GgmlType::Q8_0.into()).unwrap();
    assert!(lora_export::parse_quant("q3_k").is_err());
    // Nothing but the inputs in the folder.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["bad-run", "other", "run", "tiny.gguf"]);
}

/// llama.cpp's Python reader (`gguf` on PyPI) on every exported file: set
/// `LORA_GGUF_PYTHON` to a python that has it (CI does and sets
/// `LORA_REQUIRE_REFERENCE=1`); elsewhere the test says it did not run.
#[test]
fn the_gguf_package_reads_every_field_and_tensor() {
    let python = std::env::var("LORA_GGUF_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = std::process::Command::new(&python)
        .args(["-c", "import gguf"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var("LORA_REQUIRE_REFERENCE").is_err(),
            "{python} has no `gguf` package"
        );
        eprintln!("skipped: {python} has no `gguf` package (pip install gguf)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (base_path, run) = (tiny_llama(dir.path()), adapter(dir.path(), false));
    let mut files = Vec::new();
    for ty in GgmlType::ALL {
        let path = dir.path().join(format!("merged-{}.gguf", ty.name()));
        export_gguf(&base_path, &run, ty, &path);
        files.push(path);
    }
    let base = GgufFile::open(&base_path).unwrap();
    // Calibrated Q4_0 (GPTQ) and Q5_0 (importance matrix) from skewed inputs:
    // still blocks the gguf package reads, close to the f32 values; the same
    // statistics give the same bytes.
    let stats = skewed_statistics(&base);
    for (ty, method) in [
        (GgmlType::Q4_0, lora_export::calibrated::Method::Gptq),
        (GgmlType::Q5_0, lora_export::calibrated::Method::Imatrix),
    ] {
        let calibration = Some(llama::Calibration { stats: &stats, method });
        let adapter = Adapter::read(&run).unwrap();
        let (meta, tensors) =
            llama::merged_gguf(&base, &adapter, ty.into(), llama::Rounding::Fitted, calibration).unwrap();
        let (_, again) = llama::merged_gguf(&base, &adapter, ty.into(), llama::Rounding::Fitted, calibration).unwrap();
        assert!(tensors.iter().zip(&again).all(|(a, b)| a.bytes == b.bytes));
        let path = dir.path().join(format!("calibrated-{}.gguf", ty.name()));
        lora_export::write::gguf(&path, &meta, &tensors).unwrap();
        files.push(PathBuf::from(format!("calibrated:{}", path.display())));
    }
    // llama.cpp's Q4_K_M mix: one layer of one, so attn_v and ffn_down are Q6_K.
    let (meta, tensors) = llama::merged_gguf(
        &base,
        &Adapter::read(&run).unwrap(),
        llama::TypePlan::Q4_K_M,
        llama::Rounding::Reference,
        None,
    )
    .unwrap();
    let q4_k_m = dir.path().join("merged-q4_k_m.gguf");
    lora_export::write::gguf(&q4_k_m, &meta, &tensors).unwrap();
    files.push(q4_k_m);
    let (meta, tensors) = llama::adapter_gguf(&base, &Adapter::read(&run).unwrap()).unwrap();
    let adapter_path = dir.path().join("adapter.gguf");
    lora_export::write::gguf(&adapter_path, &meta, &tensors).unwrap();
    files.push(adapter_path);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/check_gguf.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), files.len() - 1);
    // F16, Q4_0, Q4_1, Q5_0, Q8_0: all 7 matrices (and the Q8_0/F16 embedding) byte-identical to gguf's quantizer.
    for l in &lines[0..5] {
        assert!(l["byte_identical_tensors"].as_u64().unwrap() >= 8, "{l}");
    }
    assert_eq!(lines.last().unwrap()["adapter_pairs"], 7);
    // The calibrated files: all seven matrices rounded from the statistics.
    for l in &lines[lines.len() - 4..lines.len() - 2] {
        assert_eq!(l["calibrated_tensors"], 7, "{l}");
    }
    // Q4_K_M: attn_v, ffn_down and the tied embedding Q6_K, the other five matrices Q4_K.
    let mix = &lines[lines.len() - 2]["types"];
    assert_eq!(
        (mix["Q6_K"].as_u64(), mix["Q4_K"].as_u64()),
        (Some(3), Some(5)),
        "{mix}"
    );
    let _ = LlamaConfig::from_header(&base.header).unwrap();
}

/// Gram matrices of 64 seeded inputs to each matrix of layer 0, their
/// first eight columns ten times larger.
fn skewed_statistics(base: &GgufFile) -> lora_core::calibration::InputStatistics {
    let mut stats = lora_core::calibration::InputStatistics::default();
    for (module, _, _) in lora_core::llama::TARGETS {
        let name = lora_core::llama::gguf_name(0, module);
        let dim = base.header.tensors.iter().find(|t| t.name == name).unwrap().dims[0] as usize;
        let x: Vec<f32> = (0..64 * dim)
            .map(|i| (i as f32 * 0.618).sin() * if i % dim < 8 { 10.0 } else { 1.0 })
            .collect();
        let mut xtx = vec![0f32; dim * dim];
        for row in x.chunks_exact(dim) {
            for a in 0..dim {
                for b in 0..dim {
                    xtx[a * dim + b] += row[a] * row[b];
                }
            }
        }
        stats.add(&[name], dim, &xtx, 64).unwrap();
    }
    stats
}

/// `name -> (shape, values)` as an f32 safetensors file.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), s.clone(), bytes(v)))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn vit_merge_folds_the_patch_convolution_and_the_linears_by_hand() {
    // A ViT base in Hugging Face's layout (hidden 4, patches of 2x2 on 1 channel):
    // the patch embedding [4, 1, 2, 2] and one query [4, 4].
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    let conv = noise(16, 1, 0.5);
    let query = noise(16, 2, 0.5);
    write_safetensors(
        &base.join("model.safetensors"),
        &[
            (
                "vit.embeddings.patch_embeddings.projection.weight",
                vec![4, 1, 2, 2],
                conv.clone(),
            ),
            (
                "vit.encoder.layer.0.attention.attention.query.weight",
                vec![4, 4],
                query.clone(),
            ),
            ("classifier.weight", vec![2, 4], vec![0.0; 8]),
        ],
    );
    let cfg = serde_json::json!({"model_type": "vit", "image_size": 4, "num_channels": 1, "hidden_size": 4});
    std::fs::write(base.join("config.json"), cfg.to_string()).unwrap();
    // PEFT's conv2d pair (A [r, c, kh, kw], B [out, r, 1, 1]) at rank 2 through
    // rank_pattern, the query at rank 1; alpha 4.
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let (ca, cb, qa, qb) = (noise(8, 3, 0.3), noise(8, 4, 0.3), noise(4, 5, 0.3), noise(4, 6, 0.3));
    let p = "base_model.model.vit.";
    write_safetensors(
        &run.join("adapter_model.safetensors"),
        &[
            (
                &format!("{p}embeddings.patch_embeddings.projection.lora_A.weight"),
                vec![2, 1, 2, 2],
                ca.clone(),
            ),
            (
                &format!("{p}embeddings.patch_embeddings.projection.lora_B.weight"),
                vec![4, 2, 1, 1],
                cb.clone(),
            ),
            (
                &format!("{p}encoder.layer.0.attention.attention.query.lora_A.weight"),
                vec![1, 4],
                qa.clone(),
            ),
            (
                &format!("{p}encoder.layer.0.attention.attention.query.lora_B.weight"),
                vec![4, 1],
                qb.clone(),
            ),
            ("base_model.model.classifier.weight", vec![2, 4], vec![0.5; 8]),
            ("base_model.model.classifier.bias", vec![2], vec![0.1, -0.1]),
        ],
    );
    let acfg = serde_json::json!({"peft_type": "LORA", "r": 1, "lora_alpha": 4,
        "rank_pattern": {"patch_embeddings.projection": 2}, "modules_to_save": ["classifier"]});
    std::fs::write(run.join("adapter_config.json"), acfg.to_string()).unwrap();
    let adapter = Adapter::read(&run).unwrap();
    let labels = vec!["a".to_string(), "b".to_string()];
    let files = lora_export::bert::merged_vit_safetensors(&base, &adapter, &labels).unwrap();
    let st = safetensors::SafeTensors::deserialize(&files[0].1).unwrap();
    let got = |n: &str| floats(st.tensor(n).unwrap().data());
    // By hand: W + (alpha / r) B A, the kernel flattened to its 4 inputs.
    for o in 0..4 {
        for i in 0..4 {
            let dc = (4.0 / 2.0) * (cb[o * 2] * ca[i] + cb[o * 2 + 1] * ca[4 + i]);
            let dq = (4.0 / 1.0) * qb[o] * qa[i];
            let c = got("vit.embeddings.patch_embeddings.projection.weight")[o * 4 + i];
            let q = got("vit.encoder.layer.0.attention.attention.query.weight")[o * 4 + i];
            assert!((c - conv[o * 4 + i] - dc).abs() < 1e-6, "conv [{o}, {i}]");
            assert!((q - query[o * 4 + i] - dq).abs() < 1e-6, "query [{o}, {i}]");
        }
    }
    assert_eq!(got("classifier.bias"), [0.1, -0.1]);
    let config: serde_json::Value = serde_json::from_slice(&files[1].1).unwrap();
    assert_eq!(config["architectures"][0], "ViTForImageClassification");
    assert_eq!(config["id2label"]["1"], "b");
    let processor: serde_json::Value = serde_json::from_slice(&files[2].1).unwrap();
    assert_eq!(
        (
            processor["size"]["height"].as_u64(),
            processor["do_normalize"].as_bool()
        ),
        (Some(4), Some(false))
    );
    // A BERT adapter is not a ViT's.
    let err = code(
        lora_export::bert::merged_vit_safetensors(
            &base,
            &Adapter::read(&adapter_dir_bert(dir.path())).unwrap(),
            &labels,
        )
        .unwrap_err(),
    );
    assert!(err.contains("export::base-mismatch"), "{err}");
}

/// A one-module adapter whose paths are BERT's.
fn adapter_dir_bert(dir: &Path) -> PathBuf {
    let run = dir.join("bert-run");
    std::fs::create_dir_all(&run).unwrap();
    let k = "base_model.model.bert.encoder.layer.0.attention.self.query";
    write_safetensors(
        &run.join("adapter_model.safetensors"),
        &[
            (&format!("{k}.lora_A.weight"), vec![1, 4], vec![0.1; 4]),
            (&format!("{k}.lora_B.weight"), vec![4, 1], vec![0.1; 4]),
        ],
    );
    std::fs::write(
        run.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 1, "task_type": "SEQ_CLS"}"#,
    )
    .unwrap();
    run
}
