//! The sample browser's data: every judged sample of an evaluation, compact. Texts are stored
//! once in a string table (a baseline answer faced by every model, or a baseline model's sample
//! that is also one of the evaluated models' responses, appears once), rows are arrays of
//! numbers, and the JSON is gzipped (fixed level, no timestamp) and base64-encoded, which the
//! page decodes with the browser's own `DecompressionStream('gzip')`.

use std::collections::HashMap;
use std::io::Write;

use base64::Engine;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};

use crate::data::{EvalRow, FinishReason, Message};

/// One evaluation prompt: its id and conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct BrowserPrompt {
    pub id: String,
    pub messages: Vec<Message>,
}

/// What the browser shows, before encoding.
#[derive(Debug, Clone)]
pub struct BrowserData<'a> {
    /// The models in the report's order; the first is the one shown beside the others.
    pub models: &'a [String],
    /// The prompts in the evaluation's order.
    pub prompts: &'a [BrowserPrompt],
    pub rows: &'a [EvalRow],
    pub judge: &'a str,
    /// `reference` or the baseline model.
    pub baseline: &'a str,
}

/// Interns texts: each distinct text gets one index.
#[derive(Default)]
struct Strings {
    index: HashMap<String, usize>,
    list: Vec<String>,
}

impl Strings {
    fn id(&mut self, text: &str) -> usize {
        if let Some(&i) = self.index.get(text) {
            return i;
        }
        self.list.push(text.to_string());
        self.index.insert(text.to_string(), self.list.len() - 1);
        self.list.len() - 1
    }
}

/// Probabilities and scores to 4 decimals: the page shows 3, and 17 digits would double the rows.
fn short(x: f64) -> Value {
    json!((x * 1e4).round() / 1e4)
}

fn short_opt(x: Option<f64>) -> Value {
    x.map_or(Value::Null, short)
}

/// The data as JSON. Rows are `[model, prompt, sample_idx, response, baseline, p_win, eos,
/// chars, tokens, score_response, score_baseline, p_forward, p_swapped]`: model, prompt and the
/// texts as indices, `eos` 1 or 0, absent judge details as null.
pub fn browser_json(data: &BrowserData) -> Result<Value, String> {
    let mut strings = Strings::default();
    let model_of: HashMap<&str, usize> = data
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let prompt_of: HashMap<&str, usize> = data
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.as_str(), i))
        .collect();
    let prompts: Vec<Value> = data
        .prompts
        .iter()
        .map(|p| {
            let turns: Vec<Value> = p
                .messages
                .iter()
                .flat_map(|m| [json!(m.role), json!(strings.id(&m.content))])
                .collect();
            json!([p.id, turns])
        })
        .collect();
    let mut rows = Vec::with_capacity(data.rows.len());
    for r in data.rows {
        let model = model_of
            .get(r.model.as_str())
            .ok_or_else(|| format!("eval row of unknown model {:?}", r.model))?;
        let prompt = prompt_of
            .get(r.prompt_id.as_str())
            .ok_or_else(|| format!("eval row of unknown prompt {:?}", r.prompt_id))?;
        rows.push(json!([
            model,
            prompt,
            r.sample_idx,
            strings.id(&r.response),
            strings.id(&r.baseline),
            short(r.p_win),
            u8::from(r.finish_reason == FinishReason::Eos),
            r.len_response,
            r.tokens_response,
            short_opt(r.score_response),
            short_opt(r.score_baseline),
            short_opt(r.p_forward),
            short_opt(r.p_swapped),
        ]));
    }
    Ok(json!({
        "models": data.models,
        "judge": data.judge,
        "baseline": data.baseline,
        "prompts": prompts,
        "strings": strings.list,
        "rows": rows,
    }))
}

/// The JSON gzipped at a fixed level (the header has no time or name: the same data gives the
/// same bytes) and base64-encoded.
pub fn encode(value: &Value) -> String {
    let text = serde_json::to_vec(value).expect("JSON values serialize");
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
    gz.write_all(&text).expect("writing to memory");
    let bytes = gz.finish().expect("writing to memory");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    pub(crate) fn row(model: &str, prompt: &str, k: u32, response: &str, p: f64) -> EvalRow {
        EvalRow {
            model: model.into(),
            prompt_id: prompt.into(),
            sample_idx: k,
            response: response.into(),
            baseline: "the reference".into(),
            p_win: p,
            len_response: response.chars().count() as u32,
            len_baseline: 13,
            finish_reason: FinishReason::Eos,
            tokens_response: 2,
            score_response: None,
            score_baseline: None,
            p_forward: Some(p + 0.1),
            p_swapped: Some(p - 0.1),
        }
    }

    fn decode(text: &str) -> Value {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let mut json = String::new();
        GzDecoder::new(&bytes[..])
            .read_to_string(&mut json)
            .unwrap();
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn texts_are_stored_once_and_rows_point_at_them() {
        let models = ["base".to_string(), "iter-1".to_string()];
        let prompts = [BrowserPrompt {
            id: "p1".into(),
            messages: vec![Message::user("Say </script> \"hi\"")],
        }];
        let rows = [
            row("base", "p1", 0, "hello", 0.5),
            row("iter-1", "p1", 0, "hello", 0.7123456),
        ];
        let value = browser_json(&BrowserData {
            models: &models,
            prompts: &prompts,
            rows: &rows,
            judge: "pairrm",
            baseline: "reference",
        })
        .unwrap();
        let encoded = encode(&value);
        assert!(encoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)));
        assert_eq!(encode(&value), encoded, "the same bytes every time");
        let back = decode(&encoded);
        assert_eq!(
            back["strings"],
            json!(["Say </script> \"hi\"", "hello", "the reference"])
        );
        assert_eq!(back["prompts"], json!([["p1", ["user", 0]]]));
        assert_eq!(
            back["rows"][1],
            json!([1, 0, 0, 1, 2, 0.7123, 1, 5, 2, null, null, 0.8123, 0.6123])
        );
    }

    /// Pseudo-random text: words of 2 to 9 letters from a 4096-word vocabulary, chosen by a
    /// fixed linear congruential generator (the same text every run).
    struct Words(u64, Vec<String>);

    impl Words {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn new() -> Self {
            let mut w = Words(7, Vec::new());
            let vocab = (0..4096)
                .map(|_| {
                    let n = 2 + w.next() % 8;
                    (0..n)
                        .map(|_| (b'a' + (w.next() % 26) as u8) as char)
                        .collect()
                })
                .collect();
            w.1 = vocab;
            w
        }
        fn text(&mut self, chars: usize) -> String {
            let mut t = String::new();
            while t.len() < chars {
                let i = (self.next() % 4096) as usize;
                t.push_str(&self.1[i]);
                t.push(if self.next().is_multiple_of(12) {
                    '.'
                } else {
                    ' '
                });
            }
            t
        }
    }

    /// The bound: 500 prompts x K 8 x (4 iterations + the base), ~1000-character
    /// responses, each judged against a baseline model's own sample (4000 more texts), stays
    /// under 20 MB once encoded.
    #[test]
    fn a_report_of_500_prompts_k8_and_4_iterations_stays_under_20_mb() {
        let mut words = Words::new();
        let models: Vec<String> = std::iter::once("base".to_string())
            .chain((1..=4).map(|t| format!("iter-{t}")))
            .collect();
        let prompts: Vec<BrowserPrompt> = (0..500)
            .map(|i| BrowserPrompt {
                id: format!("prompt-{i:04}"),
                messages: vec![Message::user(words.text(200))],
            })
            .collect();
        let baselines: Vec<String> = (0..500 * 8).map(|_| words.text(1000)).collect();
        let mut rows = Vec::new();
        for m in &models {
            for (i, p) in prompts.iter().enumerate() {
                for k in 0..8u32 {
                    let mut r = row(m, &p.id, k, &words.text(1000), (k as f64) / 8.0);
                    r.baseline = baselines[i * 8 + k as usize].clone();
                    rows.push(r);
                }
            }
        }
        let value = browser_json(&BrowserData {
            models: &models,
            prompts: &prompts,
            rows: &rows,
            judge: "pairrm",
            baseline: "other-model",
        })
        .unwrap();
        let raw: usize = rows.iter().map(|r| r.response.len()).sum::<usize>()
            + baselines.iter().map(String::len).sum::<usize>();
        let encoded = encode(&value).len();
        eprintln!("500 prompts x K 8 x 5 models: {raw} bytes of text, {encoded} bytes encoded");
        assert!(encoded < 20_000_000, "{encoded} bytes");
    }

    #[test]
    fn a_row_of_an_unknown_model_is_refused() {
        let models = ["base".to_string()];
        let err = browser_json(&BrowserData {
            models: &models,
            prompts: &[],
            rows: &[row("other", "p1", 0, "x", 0.5)],
            judge: "j",
            baseline: "reference",
        })
        .unwrap_err();
        assert_eq!(err, "eval row of unknown model \"other\"");
    }
}
