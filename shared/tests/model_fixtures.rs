//! The transformer against values computed by Hugging Face transformers (float64) on the same
//! checkpoints: tests/fixtures/<model>/expected.json. The models run on `RSPO_TEST_DEVICE`
//! (default cpu; see support/mod.rs), in f32; `device_parity.rs` adds bf16.

use candle_core::{DType, Device, Tensor, Var};
use rspo::model::{
    generate_with, sequence_scores, teacher_forced_logprobs, Checkpoint, GenerationRequest,
    KvCache, PromptResponse, Sampler, SamplingParams, Transformer, Weights,
};
use serde_json::Value;
use std::collections::HashMap;

mod support;
use support::{fixture, test_device};

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn load(name: &str) -> (Checkpoint, Transformer) {
    let ck = Checkpoint::open(&fixture(name)).unwrap();
    let model = ck.load_model(DType::F32, &test_device()).unwrap();
    (ck, model)
}

const CAUSAL: [&str; 5] = [
    "tiny-llama",
    "tiny-llama3",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-qwen3",
];

#[test]
fn token_logprobs_match_transformers() {
    for name in CAUSAL {
        let (_, model) = load(name);
        let exp = expected(name);
        for (s, seq) in exp["sequences"].as_array().unwrap().iter().enumerate() {
            let input = ids(&seq["input_ids"]);
            let want = floats(&seq["token_logprobs"]);
            // Scoring everything after BOS: the prompt is BOS alone.
            let got = teacher_forced_logprobs(
                &model,
                &[PromptResponse {
                    prompt: &input[..1],
                    response: &input[1..],
                }],
            )
            .unwrap();
            let got_tokens = &got.to_vecs().unwrap()[0];
            assert_eq!(got_tokens.len(), want.len());
            for (t, (g, w)) in got_tokens.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() < 1e-4,
                    "{name} seq {s} token {t}: {g} vs {w}"
                );
            }
            let sum = got.sums().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
            let want_sum = seq["sum_logprob"].as_f64().unwrap();
            assert!(
                (sum - want_sum).abs() < 1e-3,
                "{name} seq {s} sum: {sum} vs {want_sum}"
            );

            // The last position's logits: first 8, argmax, logsumexp.
            let mut cache = KvCache::new(model.cfg.num_hidden_layers, vec![0]);
            let x = Tensor::new(input.as_slice(), model.device())
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let hidden = model.forward_hidden(&x, &mut cache).unwrap();
            let last = hidden.narrow(1, input.len() - 1, 1).unwrap();
            let logits = model
                .logits(&last)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (g, w) in logits.iter().zip(floats(&seq["last_logits_first8"])) {
                assert!(
                    (*g as f64 - w).abs() < 1e-4,
                    "{name} seq {s} logit: {g} vs {w}"
                );
            }
            let argmax = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert_eq!(
                argmax as u64,
                seq["last_logits_argmax"].as_u64().unwrap(),
                "{name}"
            );
        }
    }
}

/// bf16 (the GPU default): token log-probs within `BF16_LOGPROB_TOL` of transformers' float64
/// values, a sum of n token log-probs within `max(BF16_LOGPROB_TOL, BF16_SUM_TOL_PER_SQRT_TOKEN
/// x sqrt(n))`, reward scores within `BF16_SCORE_TOL`.
///
/// Why these numbers: bf16 keeps 8 significant bits, so each rounding moves a value by up to
/// u = 2^-9 (about 0.2%) of itself. The weights, every matmul output and the residual stream
/// are rounded (attention scores, softmax and log-softmax run in f32), and these random
/// fixtures have logits of magnitude ~10 (log-probs down to -15): a few roundings of 0.2% of
/// 10 is a few hundredths on a logit. Measured on the CPU (candle 0.11.1, with the 32000-token
/// fixtures; the 1024-token ones stay within the same bounds): worst token error
/// 0.080 (tiny-llama3), worst sum 0.21 (46 tokens), worst score 0.037; the bounds are about
/// 2x those, since a GPU rounds in other places (other accumulation orders), and still show
/// a wrong op at once (a dropped bias or norm moves log-probs by whole units). Token errors
/// partly cancel in a sum, so its bound grows with sqrt(n), not n.
const BF16_LOGPROB_TOL: f64 = 0.15;
const BF16_SUM_TOL_PER_SQRT_TOKEN: f64 = 0.06;
const BF16_SCORE_TOL: f64 = 0.08;

#[test]
fn bf16_token_logprobs_and_scores_match_transformers_loosely() {
    let dev = test_device();
    let mut report = String::new();
    for name in CAUSAL {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        let model = ck.load_model(DType::BF16, &dev).unwrap();
        assert_eq!(model.dtype(), DType::BF16);
        let (mut worst, mut worst_sum) = (0f64, 0f64);
        for (s, seq) in expected(name)["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let input = ids(&seq["input_ids"]);
            let want = floats(&seq["token_logprobs"]);
            let got = teacher_forced_logprobs(
                &model,
                &[PromptResponse {
                    prompt: &input[..1],
                    response: &input[1..],
                }],
            )
            .unwrap();
            // Log-probs come back f32 whatever the model dtype.
            assert_eq!(got.tokens.dtype(), DType::F32);
            for (t, (g, w)) in got.to_vecs().unwrap()[0].iter().zip(&want).enumerate() {
                let err = (*g as f64 - w).abs();
                worst = worst.max(err);
                assert!(
                    err < BF16_LOGPROB_TOL,
                    "{name} seq {s} token {t}: {g} vs {w}"
                );
            }
            let sum = got.sums().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
            let want_sum = seq["sum_logprob"].as_f64().unwrap();
            let tol =
                BF16_LOGPROB_TOL.max(BF16_SUM_TOL_PER_SQRT_TOKEN * (want.len() as f64).sqrt());
            worst_sum = worst_sum.max((sum - want_sum).abs());
            assert!(
                (sum - want_sum).abs() < tol,
                "{name} seq {s} sum: {sum} vs {want_sum} (tolerance {tol})"
            );
        }
        report.push_str(&format!(
            "{name:>12} bf16: worst token log-prob error {worst:.4}, worst sum error {worst_sum:.4}\n"
        ));
    }
    let ck = Checkpoint::open(&fixture("tiny-llama-rm")).unwrap();
    let model = ck.load_model(DType::BF16, &dev).unwrap();
    let mut worst = 0f64;
    for seq in expected("tiny-llama-rm")["sequences"].as_array().unwrap() {
        let score = sequence_scores(&model, &[ids(&seq["input_ids"])])
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0] as f64;
        let want = seq["score"].as_f64().unwrap();
        worst = worst.max((score - want).abs());
        assert!(
            (score - want).abs() < BF16_SCORE_TOL,
            "bf16 score {score} vs {want}"
        );
    }
    report.push_str(&format!(
        "tiny-llama-rm bf16: worst score error {worst:.4}\n"
    ));
    println!("{report}");
}

/// Greedy decoding, one token at a time through the KV cache.
fn greedy(model: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let dev = model.device();
    let mut cache = KvCache::new(model.cfg.num_hidden_layers, vec![0]);
    let mut input = Tensor::new(prompt, dev).unwrap().unsqueeze(0).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let hidden = model.forward_hidden(&input, &mut cache).unwrap();
        let t = hidden.dim(1).unwrap();
        let logits = model.logits(&hidden.narrow(1, t - 1, 1).unwrap()).unwrap();
        let next = logits
            .flatten_all()
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        out.push(next);
        input = Tensor::new(&[next], dev).unwrap().unsqueeze(0).unwrap();
    }
    out
}

#[test]
fn greedy_tokens_match_with_kv_cache() {
    for name in CAUSAL {
        let (_, model) = load(name);
        let g = &expected(name)["greedy"];
        let got = greedy(
            &model,
            &ids(&g["prompt_ids"]),
            g["new_tokens"].as_u64().unwrap() as usize,
        );
        assert_eq!(got, ids(&g["output_ids"]), "{name}");
    }
}

#[test]
fn reward_model_scores_match() {
    let (_, model) = load("tiny-llama-rm");
    for seq in expected("tiny-llama-rm")["sequences"].as_array().unwrap() {
        let input = ids(&seq["input_ids"]);
        let score = sequence_scores(&model, &[input])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        let want = seq["score"].as_f64().unwrap();
        assert!(
            (score as f64 - want).abs() < 1e-4,
            "score {score} vs {want}"
        );
    }
    // Batched with padding: the same scores.
    let seqs: Vec<Vec<u32>> = expected("tiny-llama-rm")["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| ids(&s["input_ids"]))
        .collect();
    let batched = sequence_scores(&model, &seqs)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (seq, got) in expected("tiny-llama-rm")["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(batched)
    {
        let want = seq["score"].as_f64().unwrap();
        assert!(
            (got as f64 - want).abs() < 1e-4,
            "batched score {got} vs {want}"
        );
    }
}

#[test]
fn padded_batch_equals_each_sequence_alone() {
    for name in ["tiny-llama", "tiny-mistral", "tiny-qwen3"] {
        let (_, model) = load(name);
        let seqs: Vec<Vec<u32>> = expected(name)["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| ids(&s["input_ids"]))
            .collect();
        // Different prompt/response splits so rows have different lengths in both parts.
        let batch: Vec<PromptResponse> = seqs
            .iter()
            .enumerate()
            .map(|(i, s)| PromptResponse {
                prompt: &s[..1 + i],
                response: &s[1 + i..],
            })
            .collect();
        let together = teacher_forced_logprobs(&model, &batch)
            .unwrap()
            .to_vecs()
            .unwrap();
        for (pr, row) in batch.iter().zip(&together) {
            let alone = teacher_forced_logprobs(&model, std::slice::from_ref(pr))
                .unwrap()
                .to_vecs()
                .unwrap();
            for (a, b) in alone[0].iter().zip(row) {
                assert!((a - b).abs() < 1e-5, "{name}: alone {a} vs batched {b}");
            }
        }
    }
}

/// Builds the model from `Var`s (as train-step does) and returns it with the vars by name.
fn trainable(name: &str) -> (Transformer, Vec<(String, Var)>) {
    let ck = Checkpoint::open(&fixture(name)).unwrap();
    let w = Weights::load(&ck.dir, DType::F32, &test_device()).unwrap();
    let vars: Vec<(String, Var)> = w
        .tensors()
        .iter()
        .map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap()))
        .collect();
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let model = Transformer::new(
        ck.config.clone(),
        &Weights::from_tensors(tensors, ck.dir.clone()),
    )
    .unwrap();
    (model, vars)
}

fn summed_logprob_loss(model: &Transformer, seqs: &[Vec<u32>]) -> Tensor {
    let batch: Vec<PromptResponse> = seqs
        .iter()
        .map(|s| PromptResponse {
            prompt: &s[..2],
            response: &s[2..],
        })
        .collect();
    teacher_forced_logprobs(model, &batch)
        .unwrap()
        .sums()
        .unwrap()
        .sum_all()
        .unwrap()
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        let (model, vars) = trainable(name);
        let seqs: Vec<Vec<u32>> = expected(name)["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| ids(&s["input_ids"]))
            .collect();
        let loss = summed_logprob_loss(&model, &seqs);
        let grads = loss.backward().unwrap();
        assert!(!vars.is_empty());
        for (n, v) in &vars {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: zero gradient for {n}"
            );
        }
    }
}

#[test]
fn gradient_matches_finite_difference() {
    let name = "tiny-llama";
    let seqs: Vec<Vec<u32>> = expected(name)["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| ids(&s["input_ids"]))
        .collect();
    let (model, vars) = trainable(name);
    let loss = summed_logprob_loss(&model, &seqs);
    let grads = loss.backward().unwrap();
    let (pname, var) = vars
        .iter()
        .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    let g = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // The entry with the largest gradient, perturbed in float64 for a clean central difference.
    let (idx, &analytic) = g
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap();
    let ck = Checkpoint::open(&fixture(name)).unwrap();
    let base = Weights::load(&ck.dir, DType::F64, &Device::Cpu).unwrap();
    let eval = |delta: f64| -> f64 {
        let mut t = base.tensors().clone();
        let w = t[pname.as_str()]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let mut w2 = w.clone();
        w2[idx] += delta;
        t.insert(
            pname.clone(),
            Tensor::from_vec(w2, t[pname.as_str()].shape(), &Device::Cpu).unwrap(),
        );
        let m =
            Transformer::new(ck.config.clone(), &Weights::from_tensors(t, ck.dir.clone())).unwrap();
        summed_logprob_loss(&m, &seqs)
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-4;
    let numeric = (eval(h) - eval(-h)) / (2.0 * h);
    let rel = (analytic as f64 - numeric).abs() / numeric.abs();
    assert!(
        rel < 1e-3,
        "analytic {analytic} vs finite difference {numeric} (rel {rel})"
    );
}

#[test]
fn chat_template_renders_and_raises() {
    let ck = Checkpoint::open(&fixture("tiny-llama")).unwrap();
    let msgs = serde_json::json!([{"role":"user","content":"Hi there"},{"role":"assistant","content":"Hello!"}]);
    let text = ck.render_chat(msgs.as_array().unwrap(), false).unwrap();
    assert_eq!(text, "<s>[INST] Hi there [/INST]Hello!</s>");
    let bad = serde_json::json!([{"role":"assistant","content":"Hello!"}]);
    let err = ck
        .render_chat(bad.as_array().unwrap(), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Conversation roles must alternate user/assistant/user/assistant/..."),
        "{err}"
    );
}

#[test]
fn encoding_inverts_decoding_of_a_fixture_conversation() {
    // The third tiny-llama sequence is a rendered `[INST] ... [/INST]` conversation.
    let (ck, _) = load("tiny-llama");
    let seq = ids(&expected("tiny-llama")["sequences"][2]["input_ids"]);
    let text = ck.tokenizer.decode(&seq, false).unwrap();
    assert!(text.starts_with("<s>"), "{text}");
    assert_eq!(ck.encode(&text).unwrap(), seq, "decoded: {text}");
}

#[test]
fn missing_files_and_unsupported_architectures_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("rspo-bad-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = Checkpoint::open(&dir).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::copy(fixture("tiny-llama/config.json"), dir.join("config.json")).unwrap();
    let err = Checkpoint::open(&dir).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(dir.join("config.json"), r#"{"architectures":["BertForMaskedLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#).unwrap();
    let err = Checkpoint::open(&dir).err().unwrap().to_string();
    assert!(
        err.contains("BertForMaskedLM") && err.contains("unsupported"),
        "{err}"
    );
    let err = Checkpoint::open(&dir.join("nope"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_weights_cover_every_tensor_a_checkpoint_has() {
    for name in [
        "tiny-llama",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-llama-rm",
    ] {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        let real = Weights::load(&ck.dir, DType::F32, &Device::Cpu).unwrap();
        let random =
            rspo::model::random_weights(&ck.config, 0.02, DType::F32, &Device::Cpu).unwrap();
        let mut a: Vec<&String> = real.names().collect();
        let mut b: Vec<&String> = random.names().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}");
        Transformer::new(ck.config.clone(), &random).unwrap();
    }
}

/// The decode loop on the test device (sampling as tensor ops there, the preallocated cache, and
/// off the CPU the batched attention) against the CPU's host-sampling loop, for the same seeds:
/// greedy and sampled rows from every fixture, prompts of different lengths in one batch (rows
/// finish at different steps). Greedy ids must be identical (the fixtures' smallest top-2 gap is
/// far above f32 error); on the CPU sampled ids and log-probs must be too, bit for bit. Elsewhere
/// sampled text follows the same seeds up to float differences: the share of identical rows is
/// printed (`scripts/gpu-check.sh` puts it in its table) and must be at least half.
#[test]
fn decode_on_the_test_device_matches_the_cpu_rows() {
    let dev = test_device();
    let settings = [
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        },
        SamplingParams::default(),
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 20,
        },
        SamplingParams {
            temperature: 1.3,
            top_p: 0.6,
            top_k: 50,
        },
    ];
    let (mut greedy_same, mut greedy_rows, mut sampled_same, mut sampled_rows) = (0, 0, 0, 0);
    for name in CAUSAL {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        let cpu = ck.load_model(DType::F32, &Device::Cpu).unwrap();
        let on_dev = ck.load_model(DType::F32, &dev).unwrap();
        let exp = expected(name);
        let prompts: Vec<Vec<u32>> = exp["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| ids(&s["input_ids"]))
            .collect();
        let requests: Vec<GenerationRequest> = (0..6)
            .map(|i| GenerationRequest {
                prompt_ids: prompts[i % 3][..prompts[i % 3].len() - i / 3].to_vec(),
                seed: 7 + i as u64,
            })
            .collect();
        for params in &settings {
            let run = |model, sampler| {
                generate_with(model, &requests, params, 12, &[2, 13], sampler, |_| {}).unwrap()
            };
            let (want, got) = (run(&cpu, Sampler::Host), run(&on_dev, Sampler::Device));
            for (w, g) in want.iter().zip(&got) {
                let same = w.response_ids == g.response_ids;
                if params.temperature == 0.0 {
                    assert!(
                        same,
                        "{name} greedy: {:?} vs {:?}",
                        g.response_ids, w.response_ids
                    );
                    greedy_same += same as usize;
                    greedy_rows += 1;
                } else {
                    sampled_same += same as usize;
                    sampled_rows += 1;
                }
                if dev.is_cpu() {
                    assert!(same, "{name} {params:?}");
                    assert_eq!(w.finish, g.finish, "{name} {params:?}");
                    assert_eq!(w.sample_logprob.to_bits(), g.sample_logprob.to_bits());
                } else if same {
                    assert!((w.sample_logprob - g.sample_logprob).abs() < 1e-3, "{name}");
                }
            }
            if params.temperature == 0.0 {
                // The fixture's greedy prompt reproduces transformers' tokens.
                let want = ids(&exp["greedy"]["output_ids"]);
                let row = &got[0].response_ids;
                assert_eq!(row[..], want[..row.len()], "{name}");
            }
        }
    }
    println!(
        "decode rows identical to the CPU on {dev:?}: greedy {greedy_same}/{greedy_rows}, sampled {sampled_same}/{sampled_rows}"
    );
    assert!(
        2 * sampled_same >= sampled_rows,
        "{sampled_same}/{sampled_rows}"
    );
}
