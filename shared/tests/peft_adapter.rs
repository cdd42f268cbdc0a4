//! A PEFT LoRA adapter folder is a model: its base plus `(alpha / r) B A` on the adapted layers.
//! The oracle is the same model with the merged weights written as an ordinary Hugging Face
//! folder (whose log-probs the fixture tests hold to transformers'); the merge here is spelled
//! out in f64 loops, independently of the loader's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rspo::data::DigestCache;
mod support;
use support::fixture;

use rspo::model::{model_ref, teacher_forced_logprobs, Checkpoint, PromptResponse, Weights};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rspo-peft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The layers the test adapts, with PEFT's module names.
const LAYERS: [&str; 4] = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.1.mlp.up_proj",
];

/// A known factor: values from a formula, large enough to move the log-probs.
fn factor(rows: usize, cols: usize, salt: usize) -> Matrix {
    (0..rows)
        .map(|i| {
            (0..cols)
                .map(|j| 0.3 * (((i * 7 + j * 13 + salt * 29) % 17) as f64 / 8.0 - 1.0))
                .collect()
        })
        .collect()
}

fn tensor(m: &[Vec<f64>]) -> Tensor {
    let flat: Vec<f32> = m.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_vec(flat, (m.len(), m[0].len()), &Device::Cpu).unwrap()
}

fn matrix(t: &Tensor) -> Matrix {
    t.to_dtype(DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

/// A matrix as rows of f64.
type Matrix = Vec<Vec<f64>>;

struct Adapter {
    /// PEFT tensor name -> tensor.
    tensors: HashMap<String, Tensor>,
    /// layer -> (A, B).
    factors: BTreeMap<String, (Matrix, Matrix)>,
}

fn make_adapter(base: &Weights, rank: usize, salt: usize) -> Adapter {
    let mut tensors = HashMap::new();
    let mut factors = BTreeMap::new();
    for (k, layer) in LAYERS.iter().enumerate() {
        let (out_dim, in_dim) = base.tensors()[&format!("{layer}.weight")].dims2().unwrap();
        let a = factor(rank, in_dim, salt + 2 * k);
        let b = factor(out_dim, rank, salt + 2 * k + 1);
        tensors.insert(
            format!("base_model.model.{layer}.lora_A.weight"),
            tensor(&a),
        );
        tensors.insert(
            format!("base_model.model.{layer}.lora_B.weight"),
            tensor(&b),
        );
        factors.insert(layer.to_string(), (a, b));
    }
    Adapter { tensors, factors }
}

fn write_adapter(dir: &Path, adapter: &Adapter, config: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(&adapter.tensors, dir.join("adapter_model.safetensors"))
        .unwrap();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
}

/// PEFT's adapter_config.json for these layers.
fn config(base: &str, rank: usize, alpha: f64) -> serde_json::Value {
    serde_json::json!({
        "base_model_name_or_path": base,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"],
        "fan_in_fan_out": false,
        "bias": "none",
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true
    })
}

/// W + scale * B A in f64, element by element.
fn merge(base: &mut HashMap<String, Tensor>, adapter: &Adapter, scale: f64) {
    for (layer, (a, b)) in &adapter.factors {
        let key = format!("{layer}.weight");
        let mut w = matrix(&base[&key]);
        for (i, row) in w.iter_mut().enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x += scale * (0..a.len()).map(|r| b[i][r] * a[r][j]).sum::<f64>();
            }
        }
        base.insert(key, tensor(&w));
    }
}

/// An ordinary Hugging Face folder: the fixture's files with these weights.
fn write_merged(dir: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name != "model.safetensors" {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

fn logprobs(model_dir: &Path) -> Vec<f32> {
    let ck = Checkpoint::open(model_dir).unwrap();
    let model = ck.load_model(DType::F32, &Device::Cpu).unwrap();
    let prompt = ck.encode("[INST] Tell me about cats. [/INST]").unwrap();
    let responses = [
        ck.encode("Cats are small furry animals").unwrap(),
        ck.encode("the mat; zzz 42").unwrap(),
    ];
    let pairs: Vec<PromptResponse> = responses
        .iter()
        .map(|r| PromptResponse {
            prompt: &prompt,
            response: r,
        })
        .collect();
    let out = teacher_forced_logprobs(&model, &pairs).unwrap();
    out.sums().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn base_weights() -> Weights {
    Weights::load(&fixture("tiny-llama"), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn an_adapter_folder_loads_as_its_base_plus_the_scaled_product() {
    let dir = scratch("merge");
    let base = base_weights();
    let adapter = make_adapter(&base, 2, 0);
    let base_path = std::fs::canonicalize(fixture("tiny-llama")).unwrap();
    // PEFT resets fan_in_fan_out to false on nn.Linear layers: it changes nothing.
    let cfg = |base: &str| {
        let mut c = config(base, 2, 6.0);
        c["fan_in_fan_out"] = true.into();
        c
    };
    write_adapter(
        &dir.join("adapter"),
        &adapter,
        cfg(base_path.to_str().unwrap()),
    );
    let mut merged = base.tensors().clone();
    merge(&mut merged, &adapter, 6.0 / 2.0);
    write_merged(&dir.join("merged"), &merged);

    let ours = logprobs(&dir.join("adapter"));
    let oracle = logprobs(&dir.join("merged"));
    let base_lp = logprobs(&fixture("tiny-llama"));
    assert!(max_diff(&ours, &oracle) < 1e-4, "{ours:?} vs {oracle:?}");
    assert!(
        max_diff(&oracle, &base_lp) > 0.1,
        "the adapter must matter: {oracle:?} vs base {base_lp:?}"
    );

    // A relative base path is resolved from the working directory, as from_pretrained does.
    assert_eq!(
        std::env::current_dir().unwrap(),
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    );
    write_adapter(
        &dir.join("relative"),
        &adapter,
        cfg("../tests/fixtures/tiny-llama"),
    );
    assert!(max_diff(&logprobs(&dir.join("relative")), &oracle) < 1e-4);
    // Its identity is the base's and the adapter's, not the path the base is written as.
    let id = |d: &Path| model_ref(d, DigestCache::Reuse).unwrap().digest;
    assert_eq!(id(&dir.join("relative")), id(&dir.join("adapter")));
    assert_ne!(id(&dir.join("adapter")), id(&fixture("tiny-llama")));

    // rsLoRA scales by alpha / sqrt(r); an adapter on an adapter stacks both.
    write_adapter(
        &dir.join("rslora"),
        &adapter,
        serde_json::json!({"base_model_name_or_path": base_path, "r": 2, "lora_alpha": 6.0,
            "use_rslora": true, "peft_type": "LORA"}),
    );
    let mut rs = base.tensors().clone();
    merge(&mut rs, &adapter, 6.0 / 2f64.sqrt());
    write_merged(&dir.join("rs-merged"), &rs);
    assert!(
        max_diff(
            &logprobs(&dir.join("rslora")),
            &logprobs(&dir.join("rs-merged"))
        ) < 1e-4
    );
    assert_ne!(id(&dir.join("rslora")), id(&dir.join("adapter")));

    let second = make_adapter(&base, 3, 5);
    write_adapter(
        &dir.join("stacked"),
        &second,
        config(dir.join("adapter").to_str().unwrap(), 3, 1.5),
    );
    let mut both = merged.clone();
    merge(&mut both, &second, 0.5);
    write_merged(&dir.join("both-merged"), &both);
    assert!(
        max_diff(
            &logprobs(&dir.join("stacked")),
            &logprobs(&dir.join("both-merged"))
        ) < 1e-4
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_adapters_are_refused_by_name() {
    let dir = scratch("refuse");
    let base = base_weights();
    let adapter = make_adapter(&base, 2, 0);
    let base_path = std::fs::canonicalize(fixture("tiny-llama")).unwrap();
    let base_path = base_path.to_str().unwrap();
    let error = |name: &str, cfg: serde_json::Value| -> String {
        let d = dir.join(name);
        write_adapter(&d, &adapter, cfg);
        match Checkpoint::open(&d).and_then(|ck| ck.load_model(DType::F32, &Device::Cpu)) {
            Ok(_) => panic!("{name} loaded"),
            Err(e) => e.to_string(),
        }
    };
    let with = |key: &str, value: serde_json::Value| {
        let mut c = config(base_path, 2, 6.0);
        c[key] = value;
        c
    };
    for (name, cfg, expected) in [
        ("dora", with("use_dora", true.into()), "DoRA (use_dora)"),
        ("bias", with("bias", "all".into()), "bias \"all\""),
        (
            "rank-pattern",
            with("rank_pattern", serde_json::json!({"q_proj": 4})),
            "rank_pattern",
        ),
        (
            "modules",
            with("modules_to_save", serde_json::json!(["lm_head"])),
            "modules_to_save",
        ),
        ("ia3", with("peft_type", "IA3".into()), "peft_type IA3"),
        ("rank", with("r", 4.into()), "expected rank r = 4"),
        (
            "no-base",
            with("base_model_name_or_path", "no/such-dir/here".into()),
            "base_model_name_or_path no/such-dir/here",
        ),
    ] {
        let e = error(name, cfg);
        assert!(e.contains(expected), "{name}: {e}");
        assert!(
            e.contains("adapter_config.json") || e.contains("adapter_model"),
            "{name}: {e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
