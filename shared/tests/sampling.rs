//! Decoding through `generate`: greedy reproduces transformers' tokens, and sampling draws
//! from exactly the distribution temperature and top-p define.

use candle_core::{DType, Device, Tensor};
use rspo::model::{
    generate, generate_continuously, Checkpoint, DecodeOptions, Finish, GenerationOutput,
    GenerationRequest, KvCache, Sampler, SamplingParams, Transformer,
};
use serde_json::Value;

mod support;
use support::{fixture, TINY_POLICIES};

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The input ids of the fixture's reference sequences.
fn fixture_prompts(name: &str) -> Vec<Vec<u32>> {
    expected(name)["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| ids(&s["input_ids"]))
        .collect()
}

fn load(name: &str) -> Transformer {
    Checkpoint::open(&fixture(name))
        .unwrap()
        .load_model(DType::F32, &Device::Cpu)
        .unwrap()
}

const GREEDY: SamplingParams = SamplingParams {
    temperature: 0.0,
    top_p: 1.0,
    top_k: 0,
};

#[test]
fn temperature_zero_reproduces_greedy_tokens_alone_and_in_a_batch() {
    for name in TINY_POLICIES {
        let model = load(name);
        let exp = expected(name);
        let g = &exp["greedy"];
        let want = ids(&g["output_ids"]);
        let prompt = ids(&g["prompt_ids"]);
        let req = |p: Vec<u32>| GenerationRequest {
            prompt_ids: p,
            seed: 0,
        };
        let alone = generate(
            &model,
            &[req(prompt.clone())],
            &GREEDY,
            want.len(),
            &[],
            |_| {},
        )
        .unwrap();
        assert_eq!(alone[0].response_ids, want, "{name} alone");
        assert_eq!(alone[0].finish, Finish::Length);
        // Next to longer and shorter prompts (different padding), the same tokens.
        let others = fixture_prompts(name);
        let mut batch = vec![req(others[1].clone()), req(prompt.clone())];
        batch.extend(others.iter().map(|o| req(o[..3].to_vec())));
        let out = generate(&model, &batch, &GREEDY, want.len(), &[], |_| {}).unwrap();
        assert_eq!(out[1].response_ids, want, "{name} in a batch");
    }
}

#[test]
fn stop_tokens_end_a_row_and_are_kept() {
    let model = load("tiny-llama");
    let g = &expected("tiny-llama")["greedy"];
    let want = ids(&g["output_ids"]);
    // Pretend the 5th greedy token is EOS: the row stops there, the token included.
    let out = generate(
        &model,
        &[GenerationRequest {
            prompt_ids: ids(&g["prompt_ids"]),
            seed: 0,
        }],
        &GREEDY,
        12,
        &[want[4]],
        |_| {},
    )
    .unwrap();
    assert_eq!(out[0].response_ids, want[..5].to_vec());
    assert_eq!(out[0].finish, Finish::Eos);
}

/// Logits of the next token after `prompt`, as the model computes them (checked against
/// transformers in model_fixtures.rs).
fn next_token_logits(model: &Transformer, prompt: &[u32]) -> Vec<f64> {
    let mut cache = KvCache::new(model.cfg.num_hidden_layers, vec![0]);
    let x = Tensor::new(prompt, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let h = model.forward_hidden(&x, &mut cache).unwrap();
    let l = model
        .logits(&h.narrow(1, prompt.len() - 1, 1).unwrap())
        .unwrap();
    l.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// The nucleus written out from its definition (Holtzman et al.): the most likely tokens
/// whose probability under softmax(logits / T) first reaches `top_p`, renormalised.
fn nucleus(logits: &[f64], temperature: f64, top_p: f64) -> Vec<(usize, f64)> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|l| ((l - max) / temperature).exp()).sum();
    let mut p: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, l)| (i, ((l - max) / temperature).exp() / z))
        .collect();
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut mass = 0.0;
    let mut keep = 0;
    while mass < top_p && keep < p.len() {
        mass += p[keep].1;
        keep += 1;
    }
    p.truncate(keep);
    p.iter().map(|&(i, q)| (i, q / mass)).collect()
}

/// Pearson's chi-square statistic of observed counts against expected probabilities.
fn chi_square(counts: &[f64], probs: &[f64], n: f64) -> f64 {
    counts
        .iter()
        .zip(probs)
        .map(|(c, p)| (c - n * p).powi(2) / (n * p))
        .sum()
}

#[test]
fn first_sampled_token_follows_temperature_and_top_p() {
    let model = load("tiny-llama");
    let prompt = ids(&expected("tiny-llama")["greedy"]["prompt_ids"]);
    let logits = next_token_logits(&model, &prompt);
    let (t, top_p) = (0.2, 0.8);
    let want = nucleus(&logits, t, top_p);
    assert!(
        want.len() >= 4 && want.len() < 40,
        "nucleus of {} tokens; pick other settings",
        want.len()
    );

    let n = 4000;
    let requests: Vec<GenerationRequest> = (0..n)
        .map(|s| GenerationRequest {
            prompt_ids: prompt.clone(),
            seed: s as u64,
        })
        .collect();
    let params = SamplingParams {
        temperature: t,
        top_p,
        top_k: 0,
    };
    let out = generate(&model, &requests, &params, 1, &[], |_| {}).unwrap();
    let mut counts = vec![0.0; want.len()];
    for o in &out {
        let tok = o.response_ids[0] as usize;
        let bin = want
            .iter()
            .position(|w| w.0 == tok)
            .unwrap_or_else(|| panic!("sampled token {tok} outside the nucleus"));
        counts[bin] += 1.0;
    }
    let probs: Vec<f64> = want.iter().map(|w| w.1).collect();
    let stat = chi_square(&counts, &probs, n as f64);
    // Critical value of chi-square at significance 0.001: df + 3.1 sqrt(2 df) + ~5 over-covers
    // df <= 40 (e.g. df = 10: 29.6 exact, 29.9 here).
    let df = (want.len() - 1) as f64;
    let critical = df + 3.1 * (2.0 * df).sqrt() + 5.0;
    assert!(stat < critical, "chi-square {stat} >= {critical} (df {df})");

    // The same draws judged against a wrong temperature or no top-p cut must fail. Bins: the
    // true nucleus's tokens plus one bin for everything else.
    for (wt, wp) in [(0.3, top_p), (t, 1.0)] {
        let wrong: std::collections::HashMap<usize, f64> =
            nucleus(&logits, wt, wp).into_iter().collect();
        let mut wprobs: Vec<f64> = want
            .iter()
            .map(|w| wrong.get(&w.0).copied().unwrap_or(0.0))
            .collect();
        let other = 1.0 - wprobs.iter().sum::<f64>();
        let mut wcounts = counts.clone();
        wprobs.push(other.max(1e-12));
        wcounts.push(0.0);
        let wdf = (wprobs.len() - 1) as f64;
        let wstat = chi_square(&wcounts, &wprobs, n as f64);
        assert!(
            wstat > wdf + 3.1 * (2.0 * wdf).sqrt() + 5.0,
            "T {wt} top-p {wp} not rejected: {wstat}"
        );
    }
}

#[test]
fn rows_sample_the_same_whatever_the_batch() {
    let model = load("tiny-llama");
    let prompts = fixture_prompts("tiny-llama");
    let params = SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        top_k: 0,
    };
    let requests: Vec<GenerationRequest> = (0..8)
        .map(|i| GenerationRequest {
            prompt_ids: prompts[i % 3].clone(),
            seed: 100 + i as u64,
        })
        .collect();
    let together = generate(&model, &requests, &params, 10, &[2], |_| {}).unwrap();
    for (r, t) in requests.iter().zip(&together) {
        let alone = generate(&model, std::slice::from_ref(r), &params, 10, &[2], |_| {}).unwrap();
        assert_eq!(alone[0].response_ids, t.response_ids);
        assert!((alone[0].sample_logprob - t.sample_logprob).abs() < 1e-4);
    }
}

/// Continuous batching: through a few slots, each finished row's slot taken by the next
/// waiting request (prompts of different lengths, responses ending at different steps), every
/// request decodes exactly as it does in one batch with all the others, bit for bit.
#[test]
fn refilled_slots_decode_as_one_batch_does() {
    let model = load("tiny-llama");
    let prompts = fixture_prompts("tiny-llama");
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
    };
    // Short and long prompts in turn, so a long one often waits for a slot.
    let requests: Vec<GenerationRequest> = (0..24)
        .map(|i| {
            let p = &prompts[i % prompts.len()];
            GenerationRequest {
                prompt_ids: p[..p.len() - (i % 4).min(p.len() - 1)].to_vec(),
                seed: 500 + i as u64,
            }
        })
        .collect();
    // Many stop tokens: rows end early and at different steps.
    let stop: Vec<u32> = (0..model.cfg.vocab_size as u32).step_by(9).collect();
    let all = generate(&model, &requests, &params, 20, &stop, |_| {}).unwrap();
    let lengths: std::collections::BTreeSet<usize> =
        all.iter().map(|o| o.response_ids.len()).collect();
    assert!(lengths.len() >= 4, "responses of many lengths: {lengths:?}");
    assert!(all.iter().any(|o| o.finish == Finish::Eos));
    assert!(all.iter().any(|o| o.finish == Finish::Length));
    for max_rows in [1, 2, 3, 7] {
        let options = DecodeOptions {
            params: &params,
            max_new_tokens: 20,
            stop_tokens: &stop,
            sampler: Sampler::Host,
            max_rows,
        };
        let mut got: Vec<Option<GenerationOutput>> = vec![None; requests.len()];
        let mut tokens = 0;
        let mut order = Vec::new();
        generate_continuously(
            &model,
            &requests,
            &options,
            |n| tokens += n,
            |i, out| {
                order.push(i);
                got[i] = Some(out);
                Ok::<(), rspo::model::ModelError>(())
            },
        )
        .unwrap();
        assert_eq!(
            tokens,
            all.iter().map(|o| o.response_ids.len()).sum::<usize>(),
            "max_rows {max_rows}: every token counted once"
        );
        if max_rows > 1 {
            assert_ne!(
                order,
                (0..requests.len()).collect::<Vec<_>>(),
                "max_rows {max_rows}: rows finish out of order"
            );
        }
        for (i, (a, b)) in all.iter().zip(&got).enumerate() {
            let b = b.as_ref().expect("every request finishes");
            assert_eq!(
                a.response_ids, b.response_ids,
                "max_rows {max_rows}, request {i}"
            );
            assert_eq!(a.finish, b.finish, "max_rows {max_rows}, request {i}");
            assert_eq!(
                a.sample_logprob.to_bits(),
                b.sample_logprob.to_bits(),
                "max_rows {max_rows}, request {i}"
            );
        }
    }
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let model = load("tiny-llama");
    let long = vec![1u32; model.cfg.max_position_embeddings + 1];
    let err = generate(
        &model,
        &[GenerationRequest {
            prompt_ids: long,
            seed: 0,
        }],
        &GREEDY,
        4,
        &[],
        |_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("longer than the model's context"),
        "{err}"
    );
}
