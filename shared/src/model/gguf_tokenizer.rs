//! The `tokenizer.json` equivalent to a GGUF file's `tokenizer.ggml.*` metadata, tokenizing as
//! llama.cpp does.
//!
//! - `gpt2` (byte-level BPE: GPT-2, Llama 3, Qwen2, SmolLM2): the vocabulary and ranked merges as
//!   they are, pre-tokenized by the regexes llama.cpp uses for `tokenizer.ggml.pre`, each
//!   applied in turn to the pieces the previous one left (a `Split` per regex, `Isolated`).
//!   transformers' GGUF converter ignores `pre` and always uses the GPT-2 regex; where that
//!   differs (SmolLM2's `smollm` splits every digit off first, so `"12  34"` gives
//!   `1 2 ĠĠ 3 4`, not `1 2 Ġ Ġ 3 4`) we follow llama.cpp, which agrees with the original
//!   Hugging Face tokenizer.
//! - `llama` (SentencePiece BPE with byte fallback: Llama 2, Mistral): llama.cpp merges the
//!   adjacent pair whose concatenation is the highest-scoring token. That is BPE with a merge
//!   for every split of every token, ranked by the token's score; unknown characters fall back
//!   to the `<0xXX>` byte tokens. A space is prepended to every stretch of text between special
//!   tokens (`add_space_prefix`, on by default), as llama.cpp does.
//!
//! Control, unknown and user-defined tokens become added tokens, matched in the text before
//! anything else; control and unknown ones are special (skipped when decoding a response).

use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// What `tokenizer.ggml.*` holds.
pub(super) struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer of a `gpt2` vocabulary.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_space_prefix: Option<bool>,
}

// llama.cpp's token types.
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's pre-tokenizer for `tokenizer.ggml.pre` (llama-vocab.cpp): the regexes, applied
/// in turn, and whether a piece that is a whole token skips the merges (`ignore_merges`).
fn pre_tokenizer(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    Some(match pre {
        "default" => (
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            false,
        ),
        "gpt-2" | "phi-2" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "gigachat" => {
            (vec![GPT2], false)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2], false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => (vec![LLAMA3], true),
        "dbrx" | "smaug-bpe" => (vec![LLAMA3], false),
        "qwen2" | "stablelm2" | "megrez" => (vec![QWEN2], false),
        _ => return None,
    })
}

const SUPPORTED_PRE: &str = "default, gpt-2, phi-2, roberta-bpe, mpt, olmo, jais, gigachat, \
    smollm, starcoder, refact, command-r, codeshell, exaone, minerva-7b, llama3, llama-v3, \
    llama-bpe, falcon3, dbrx, smaug-bpe, qwen2, stablelm2, megrez";

impl GgufVocab {
    /// Whether encoding a text for the model starts it with BOS: the metadata's
    /// `add_bos_token`, else llama.cpp's default (SentencePiece and Llama 3 vocabularies).
    pub fn adds_bos(&self) -> bool {
        self.add_bos.unwrap_or(
            self.model == "llama"
                || matches!(
                    self.pre.as_deref(),
                    Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3")
                ),
        )
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types
            .as_ref()
            .and_then(|t| t.get(id).copied())
            .unwrap_or(1)
    }

    fn text(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }

    fn vocab_map(&self) -> Map<String, Value> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect()
    }

    /// Control, unknown and user-defined tokens, matched in the raw text.
    fn added_tokens(&self) -> Vec<Value> {
        let mut added: Vec<Value> = (0..self.tokens.len())
            .filter_map(|i| {
                let special = match self.token_type(i) {
                    CONTROL | UNKNOWN => true,
                    USER_DEFINED => false,
                    _ => return None,
                };
                Some(json!({
                    "id": i, "content": self.tokens[i], "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special,
                }))
            })
            .collect();
        // Without token types, at least the tokens the metadata names are special.
        if self.token_types.is_none() {
            for id in [self.bos, self.eos, self.unk, self.pad]
                .into_iter()
                .flatten()
            {
                if let Some(t) = self.tokens.get(id as usize) {
                    if !added.iter().any(|a| a["id"] == json!(id)) {
                        added.push(json!({
                            "id": id, "content": t, "single_word": false, "lstrip": false,
                            "rstrip": false, "normalized": false, "special": true,
                        }));
                    }
                }
            }
            added.sort_by_key(|a| a["id"].as_u64());
        }
        added
    }

    /// BOS before the text when the vocabulary asks for it.
    fn post_processor(&self) -> Value {
        match self.text(self.bos).filter(|_| self.adds_bos()) {
            Some(bos) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [self.bos], "tokens": [bos]}},
            }),
            None => Value::Null,
        }
    }

    fn bpe_json(&self) -> Result<Value, String> {
        let merges = self
            .merges
            .as_ref()
            .ok_or("a gpt2 vocabulary needs `tokenizer.ggml.merges`")?;
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(l, r)| json!([l, r]))
                    .ok_or_else(|| format!("merge {m:?} is not two tokens separated by a space"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pre = self.pre.as_deref().unwrap_or("default");
        let (regexes, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
            format!("tokenizer.ggml.pre {pre:?} is not supported (supported: {SUPPORTED_PRE})")
        })?;
        let mut pretokenizers: Vec<Value> = regexes
            .iter()
            .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
            .collect();
        pretokenizers.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretokenizers},
            "post_processor": self.post_processor(),
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": ignore_merges, "vocab": self.vocab_map(), "merges": merges,
            },
        }))
    }

    /// SentencePiece's score-driven merging as ranked BPE merges: every split of every token
    /// into two tokens, the highest-scoring result first.
    fn merges_from_scores(&self) -> Result<Vec<Value>, String> {
        let scores = self
            .scores
            .as_ref()
            .ok_or("a llama vocabulary needs `tokenizer.ggml.scores`")?;
        let ids: HashMap<&str, usize> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
        for (id, token) in self.tokens.iter().enumerate() {
            for (cut, _) in token.char_indices().skip(1) {
                let (l, r) = token.split_at(cut);
                if let (Some(&li), Some(_)) = (ids.get(l), ids.get(r)) {
                    let score = scores.get(id).copied().unwrap_or(0.0);
                    merges.push((score, id, li, l, r));
                }
            }
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        Ok(merges.into_iter().map(|(.., l, r)| json!([l, r])).collect())
    }

    fn sentencepiece_json(&self) -> Result<Value, String> {
        let prefix = self.add_space_prefix.unwrap_or(true);
        let mut normalizers = Vec::new();
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": self.post_processor(),
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": self.text(self.unk),
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": self.vocab_map(),
                "merges": self.merges_from_scores()?,
            },
        }))
    }
}

/// The `tokenizer.json` for a GGUF vocabulary.
pub(super) fn tokenizer_json(vocab: &GgufVocab) -> Result<Value, String> {
    match vocab.model.as_str() {
        "gpt2" => vocab.bpe_json(),
        "llama" => vocab.sentencepiece_json(),
        other => Err(format!(
            "tokenizer.ggml.model {other:?} is not supported (supported: gpt2, llama)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::Tokenizer;

    fn build(vocab: &GgufVocab) -> Tokenizer {
        let json = tokenizer_json(vocab).unwrap();
        Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
    }

    /// The Mistral tokenizer of the fixtures (converted by transformers from the SentencePiece
    /// model) as llama.cpp's converter stores it: pieces in id order, each piece's score the
    /// negated id (SentencePiece BPE orders pieces by score), `<unk>` unknown, `<s>` `</s>`
    /// control, `<0x..>` bytes.
    fn mistral_as_gguf() -> (GgufVocab, Tokenizer) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tiny-llama/tokenizer.json"
        );
        let hf = Tokenizer::from_file(path).unwrap();
        let n = hf.get_vocab_size(true);
        let tokens: Vec<String> = (0..n as u32).map(|i| hf.id_to_token(i).unwrap()).collect();
        let token_types = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match i {
                0 => UNKNOWN,
                1 | 2 => CONTROL,
                _ if t.starts_with("<0x") && t.len() == 6 => 6,
                _ => 1,
            })
            .collect();
        let vocab = GgufVocab {
            model: "llama".into(),
            pre: None,
            scores: Some((0..n).map(|i| -(i as f32)).collect()),
            token_types: Some(token_types),
            merges: None,
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            pad: None,
            add_bos: None,
            add_space_prefix: None,
            tokens,
        };
        (vocab, hf)
    }

    #[test]
    fn sentencepiece_vocabulary_tokenizes_as_the_hugging_face_tokenizer() {
        let (vocab, hf) = mistral_as_gguf();
        let ours = build(&vocab);
        for text in [
            "Hello world",
            "two spaces  and   three inside",
            "What is 1234 + 5678?\nThe answer: 6912.",
            "naïve café — 東京 🙂 \t tab",
            "[INST] Name two primary colors. [/INST]",
        ] {
            let want = hf.encode(text, false).unwrap().get_ids().to_vec();
            let got = ours.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{text:?}");
            assert_eq!(
                ours.decode(&got, true).unwrap(),
                hf.decode(&want, true).unwrap()
            );
        }
        // With BOS added, as llama.cpp adds it to a SentencePiece vocabulary.
        let ids = ours.encode("Hi", true).unwrap().get_ids().to_vec();
        assert_eq!(ids[0], 1);
    }

    #[test]
    fn sentencepiece_prefixes_a_space_as_llama_cpp() {
        // llama.cpp prepends the space to every stretch of text after a special token; the
        // fixture's tokenizer.json (Metaspace, prepend_scheme "first") does so only at the start.
        let (vocab, hf) = mistral_as_gguf();
        let ours = build(&vocab);
        let text = "<s>[INST] Hi [/INST]";
        let got = ours.encode(text, false).unwrap().get_ids().to_vec();
        let plain = hf
            .encode("[INST] Hi [/INST]", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(got[0], 1);
        assert_eq!(&got[1..], &plain[..]);
        let hf_ids = hf.encode(text, false).unwrap().get_ids().to_vec();
        assert_ne!(got, hf_ids, "the two conventions should differ here");
        // Leading spaces: llama.cpp (like SentencePiece) still prepends one; Metaspace does not
        // when the text already starts with a space.
        let ours_2 = ours.encode("  two", false).unwrap().get_ids().to_vec();
        assert_eq!(
            ours_2,
            hf.encode("   two", false).unwrap().get_ids().to_vec()
        );
        assert_ne!(
            ours_2,
            hf.encode("  two", false).unwrap().get_ids().to_vec()
        );
    }

    #[test]
    fn unknown_pre_tokenizer_is_named() {
        let vocab = GgufVocab {
            model: "gpt2".into(),
            pre: Some("tokenizer-of-the-future".into()),
            tokens: vec!["a".into(), "b".into(), "ab".into()],
            scores: None,
            token_types: None,
            merges: Some(vec!["a b".into()]),
            bos: None,
            eos: None,
            unk: None,
            pad: None,
            add_bos: None,
            add_space_prefix: None,
        };
        let e = tokenizer_json(&vocab).unwrap_err();
        assert!(
            e.contains("tokenizer-of-the-future") && e.contains("smollm"),
            "{e}"
        );
    }
}
