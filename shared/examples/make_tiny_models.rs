//! Builds the embedded default's two models in `data/models/` from the random fixtures in
//! `tests/fixtures/`: a tiny policy with something to learn and a tiny reward model that knows
//! what it wants.
//!
//!   cargo run --release -p rspo --example make_tiny_models [-- OUT_DIR]
//!
//! The reward model (`tiny-rm`, a LlamaForSequenceClassification) is written by hand so that its
//! preference is known: it scores the share of *word tokens* (`▁` followed by lowercase ASCII
//! letters, 31% of the vocabulary) among all tokens of the conversation. Layer 0 attends
//! uniformly (q = k = 0) and copies a per-token "is a word" feature into the residual stream, so
//! the last position holds the mean of that feature; every other block is zero and the score head
//! reads it out. Within a prompt, more word tokens in the response means a higher score, by about
//! `SCORE_PER_TOKEN` for each extra word token in a 40-token conversation.
//!
//! The policy (`tiny-policy`) is the random tiny-llama with one change: word tokens share a
//! common direction in its (tied) embedding, the way a pretrained model's embedding groups
//! similar tokens. A fully random embedding gives the policy no shared handle on "word tokens",
//! so no amount of preference data could move 10,000 unrelated rows within a few minutes; with
//! the shared direction, RSPO can learn the preference through the hidden state.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rspo::model::save_safetensors;

/// The fixtures' vocabulary (the Mistral tokenizer).
const VOCAB_SIZE: usize = 32000;
/// Size of the shared "word token" direction added to the policy's embedding rows (each row has
/// norm ~1.1 from the fixture's N(0, 0.2) init).
const WORD_DIRECTION: f32 = 1.0;
/// Score gained per extra word token in a conversation of `TYPICAL_TOKENS` tokens.
const SCORE_PER_TOKEN: f32 = 1.0;
const TYPICAL_TOKENS: f32 = 40.0;
/// The constant feature every RM embedding row carries; large, so that the RMS norms barely
/// depend on the token and the score stays linear in the share of word tokens.
const BIAS_FEATURE: f32 = 10.0;

fn is_word_token(piece: &str) -> bool {
    piece
        .strip_prefix('▁')
        .is_some_and(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

/// One flag per vocabulary id: 1.0 for word tokens.
fn word_flags(tokenizer: &Path, vocab_size: usize) -> Result<Vec<f32>> {
    let tok = tokenizers::Tokenizer::from_file(tokenizer)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer.display()))?;
    let mut flags = vec![0f32; vocab_size];
    for (piece, id) in tok.get_vocab(false) {
        if is_word_token(&piece) {
            flags[id as usize] = 1.0;
        }
    }
    Ok(flags)
}

fn copy_files(from: &Path, to: &Path, names: &[&str]) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for name in names {
        std::fs::copy(from.join(name), to.join(name))
            .with_context(|| format!("copying {name} from {}", from.display()))?;
    }
    Ok(())
}

fn load(dir: &Path) -> Result<BTreeMap<String, Tensor>> {
    let path = dir.join("model.safetensors");
    let map = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(map.into_iter().collect())
}

fn make_policy(fixture: &Path, out: &Path, flags: &[f32]) -> Result<()> {
    let mut w = load(fixture)?;
    let embed = w["model.embed_tokens.weight"].clone();
    let (vocab, hidden) = embed.dims2()?;
    anyhow::ensure!(
        vocab == flags.len(),
        "policy vocabulary {vocab} != {}",
        flags.len()
    );
    // Direction: a fixed unit vector spread over all dimensions (not one axis, so no single
    // weight carries it).
    let dir: Vec<f32> = (0..hidden)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 } / (hidden as f32).sqrt())
        .collect();
    let mut shift = vec![0f32; vocab * hidden];
    for (v, &f) in flags.iter().enumerate() {
        for (i, d) in dir.iter().enumerate() {
            shift[v * hidden + i] = WORD_DIRECTION * f * d;
        }
    }
    let shift = Tensor::from_vec(shift, (vocab, hidden), &Device::Cpu)?;
    w.insert("model.embed_tokens.weight".into(), (embed + shift)?);
    copy_files(
        fixture,
        out,
        &[
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ],
    )?;
    save_safetensors(&w, &out.join("model.safetensors"))?;
    Ok(())
}

fn make_reward_model(fixture: &Path, out: &Path, flags: &[f32]) -> Result<()> {
    let mut w = load(fixture)?;
    // Everything not set below is zero: attention and MLP blocks add nothing.
    for t in w.values_mut() {
        *t = t.zeros_like()?;
    }
    let (vocab, hidden) = w["model.embed_tokens.weight"].dims2()?;
    anyhow::ensure!(
        vocab == flags.len(),
        "reward model vocabulary {vocab} != {}",
        flags.len()
    );
    let set = |t: &Tensor, entries: &[(usize, usize, f32)]| -> Result<Tensor> {
        let (r, c) = t.dims2()?;
        let mut v = vec![0f32; r * c];
        for &(i, j, x) in entries {
            v[i * c + j] = x;
        }
        Ok(Tensor::from_vec(v, (r, c), &Device::Cpu)?)
    };
    // Embedding row: [BIAS_FEATURE, is_word, 0, ...].
    let mut embed = vec![0f32; vocab * hidden];
    for (v, &f) in flags.iter().enumerate() {
        embed[v * hidden] = BIAS_FEATURE;
        embed[v * hidden + 1] = f;
    }
    w.insert(
        "model.embed_tokens.weight".into(),
        Tensor::from_vec(embed, (vocab, hidden), &Device::Cpu)?,
    );
    for name in w.keys().cloned().collect::<Vec<_>>() {
        if name.ends_with("norm.weight") {
            w.insert(
                name.clone(),
                Tensor::ones(hidden, DType::F32, &Device::Cpu)?,
            );
        }
    }
    // After the input RMS norm a word token's feature is 1 / rms(BIAS, 1); v undoes that, so
    // value channel 0 of kv head 0 is exactly is_word, and uniform attention averages it.
    let word_rms = ((BIAS_FEATURE * BIAS_FEATURE + 1.0) / hidden as f32).sqrt();
    let v = &w["model.layers.0.self_attn.v_proj.weight"];
    let v = set(v, &[(0, 1, word_rms)])?;
    // o_proj writes head 0's channel 0 (the mean) into residual dimension 2.
    let o = &w["model.layers.0.self_attn.o_proj.weight"];
    let o = set(o, &[(2, 0, 1.0)])?;
    w.insert("model.layers.0.self_attn.v_proj.weight".into(), v);
    w.insert("model.layers.0.self_attn.o_proj.weight".into(), o);
    // The final norm divides by rms ~ BIAS / sqrt(hidden); the head scales the mean so one word
    // token in TYPICAL_TOKENS is worth SCORE_PER_TOKEN.
    let final_rms = BIAS_FEATURE / (hidden as f32).sqrt();
    let head = SCORE_PER_TOKEN * TYPICAL_TOKENS * final_rms;
    let score = set(&w["score.weight"], &[(0, 2, head)])?;
    w.insert("score.weight".into(), score);
    copy_files(
        fixture,
        out,
        &["config.json", "tokenizer.json", "tokenizer_config.json"],
    )?;
    save_safetensors(&w, &out.join("model.safetensors"))?;
    Ok(())
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace root")?
        .to_path_buf();
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("data/models"));
    let fixtures = root.join("tests/fixtures");
    let flags = word_flags(&fixtures.join("tiny-llama/tokenizer.json"), VOCAB_SIZE)?;
    make_policy(
        &fixtures.join("tiny-llama"),
        &out.join("tiny-policy"),
        &flags,
    )?;
    make_reward_model(
        &fixtures.join("tiny-llama-rm"),
        &out.join("tiny-rm"),
        &flags,
    )?;
    let words = flags.iter().filter(|&&f| f > 0.0).count();
    println!(
        "wrote {} and {} ({words} word tokens of {})",
        out.join("tiny-policy").display(),
        out.join("tiny-rm").display(),
        flags.len()
    );
    Ok(())
}
