//! The `llm` judge on the real SmolLM2-135M-Instruct GGUF: its probabilities are the softmax
//! over the two verdict tokens of the model's own next-token logits, computed here
//! independently (the comparison rendered by this test's own Jinja environment, one unpadded
//! forward pass per prompt, the full vocabulary's logits). Skips without the GGUF (fails under
//! CI=true).

use candle_core::DType;
use rspo::data::Message;
use rspo::judge::{ComparisonTemplate, JudgeItem, LlmJudge, PairwiseJudge, DEFAULT_TEMPLATE};
use rspo::model::{hidden_states, Checkpoint};

mod support;
use support::{smollm2_gguf, test_device};

/// The comparison as the judge model sees it, rendered without the judge's code.
fn rendered(ck: &Checkpoint, instruction: &str, first: &str, second: &str) -> Vec<u32> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    let user = env
        .render_str(
            DEFAULT_TEMPLATE,
            minijinja::context! {instruction => instruction, output_1 => first, output_2 => second},
        )
        .unwrap();
    let text = ck.render_chat(&[Message::user(user)], true).unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    ck.encode(&text).unwrap()
}

/// Next-token logits after `ids`, the full vocabulary, one row alone.
fn next_logits(model: &rspo::model::Transformer, ids: &[u32]) -> Vec<f32> {
    let (hidden, _) = hidden_states(model, &[ids.to_vec()]).unwrap();
    let t = hidden.dim(1).unwrap();
    let last = hidden.narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap();
    model
        .logits(&last)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// softmax over the two logits: P(the first).
fn two_way(logits: &[f32], ids: [u32; 2]) -> f64 {
    let (a, b) = (
        f64::from(logits[ids[0] as usize]),
        f64::from(logits[ids[1] as usize]),
    );
    let m = a.max(b);
    (a - m).exp() / ((a - m).exp() + (b - m).exp())
}

#[test]
fn probabilities_are_the_verdict_softmax_of_the_models_logits() {
    let Some(gguf) = smollm2_gguf() else { return };
    let device = test_device();
    let ck = Checkpoint::open(&gguf).unwrap();
    let model = ck.load_model(DType::F32, &device).unwrap();
    // The verdicts as the tokenizer spells them on their own.
    let ids = [
        ck.tokenizer.token_to_id("a").unwrap(),
        ck.tokenizer.token_to_id("b").unwrap(),
    ];
    let judge = LlmJudge::new(
        Checkpoint::open(&gguf).unwrap(),
        model.clone(),
        ComparisonTemplate::open(None).unwrap(),
        ["a".into(), "b".into()],
        "smollm2".into(),
        "digest",
    )
    .unwrap();
    assert_eq!(judge.verdict_ids(), ids);

    let instruction = "What is the capital of France?";
    let messages = [Message::user(instruction)];
    // A repeated response: its prompts run once, and the pair of equals is still judged.
    let responses = [
        "The capital of France is Paris.",
        "I like turtles.",
        "Paris.",
        "I like turtles.",
    ];
    let items: Vec<JudgeItem> = responses
        .iter()
        .enumerate()
        .map(|(i, r)| JudgeItem {
            prompt_id: "q",
            sample_idx: i as u32,
            messages: &messages,
            prompt_text: "",
            response: r,
            reference: None,
            constraints: None,
        })
        .collect();
    judge.check(&items).unwrap();
    let verdicts = judge.compare_group(&items).unwrap();
    let pairs = rspo::judge::pairs_of(responses.len());
    assert_eq!(verdicts.len(), pairs.len());
    let mut worst: f64 = 0.0;
    for (v, &(i, j)) in verdicts.iter().zip(&pairs) {
        let forward = two_way(
            &next_logits(
                &model,
                &rendered(&ck, instruction, responses[i], responses[j]),
            ),
            ids,
        );
        let swapped = 1.0
            - two_way(
                &next_logits(
                    &model,
                    &rendered(&ck, instruction, responses[j], responses[i]),
                ),
                ids,
            );
        let (f, s) = (v.p_forward.unwrap(), v.p_swapped.unwrap());
        eprintln!("({i}, {j}): p_forward {f:.6} (want {forward:.6}), p_swapped {s:.6} (want {swapped:.6}), p {:.6}", v.p);
        worst = worst.max((f - forward).abs()).max((s - swapped).abs());
        assert!((v.p - 0.5 * (f + s)).abs() < 1e-15);
    }
    // Batched and left-padded against alone: f32 rounding only.
    eprintln!("largest difference from the unpadded forward passes: {worst:.2e}");
    assert!(worst < 3e-5, "{worst}");

    // The same pair through `compare` (evaluation's path, a batch of its two orders).
    let one = judge.compare(&items[0], &items[1]).unwrap();
    assert!(
        (one.p - verdicts[0].p).abs() < 1e-5,
        "{one:?} {:?}",
        verdicts[0]
    );
}
