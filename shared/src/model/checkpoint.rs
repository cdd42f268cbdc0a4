//! A Hugging Face model directory: config, weights, tokenizer and chat template together.

use candle_core::{DType, Device};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

use super::chat_template::ChatTemplate;
use super::config::ModelConfig;
use super::gguf::{gguf_file, GgufModel};
use super::peft::{is_adapter_dir, PeftAdapter};
use super::transformer::Transformer;
use super::weights::{weight_files, Weights};
use super::{ModelError, Result};

pub struct Checkpoint {
    /// The model directory, or the GGUF file.
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end a response: the config's and generation config's EOS ids, and the
    /// tokenizer's EOS token.
    pub stop_tokens: Vec<u32>,
}

/// The `eos_token_id` of a generation config: a number or a list.
fn eos_ids(gen: &Value) -> Vec<u32> {
    match gen.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => vec![],
    }
}

fn require(dir: &Path, name: &str, expected: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(ModelError::MissingFile {
            dir: dir.to_path_buf(),
            what: name.into(),
            expected: expected.into(),
        })
    }
}

impl Checkpoint {
    /// Opens a model directory, checking that every file a stage needs is there (weights are
    /// read later, by `load_model`). A `.gguf` file, or a folder holding one, opens as the
    /// equivalent Hugging Face model; a PEFT adapter folder as its base model (config,
    /// tokenizer, chat template), whose weights `load_model` reads with the adapter merged in.
    pub fn open(dir: &Path) -> Result<Self> {
        if is_adapter_dir(dir) {
            let mut base = Self::open(&PeftAdapter::open(dir)?.base_dir()?)?;
            base.dir = dir.to_path_buf();
            return Ok(base);
        }
        if let Some(file) = gguf_file(dir)? {
            return Self::open_gguf(&file);
        }
        if !dir.is_dir() {
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                what: "model directory".into(),
                expected: "a Hugging Face model directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) or a .gguf file".into(),
            });
        }
        let config = ModelConfig::from_file(&require(dir, "config.json", "the model config")?)?;
        weight_files(dir)?;
        let tok_path = require(dir, "tokenizer.json", "a `tokenizers` tokenizer")?;
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
            path: tok_path.clone(),
            message: e.to_string(),
        })?;
        let tc_path = dir.join("tokenizer_config.json");
        let chat_template = if tc_path.is_file() {
            ChatTemplate::from_tokenizer_config(&tc_path)?
        } else {
            None
        };

        let mut stop_tokens = config.eos_token_ids.clone();
        let gen_path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen_path) {
            let gen: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: gen_path.clone(),
                message: e.to_string(),
            })?;
            stop_tokens.extend(eos_ids(&gen));
        }
        if let Ok(text) = std::fs::read_to_string(&tc_path) {
            if let Ok(tc) = serde_json::from_str::<Value>(&text) {
                let eos = match tc.get("eos_token") {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Object(o)) => {
                        o.get("content").and_then(Value::as_str).map(String::from)
                    }
                    _ => None,
                };
                if let Some(id) = eos.and_then(|t| tokenizer.token_to_id(&t)) {
                    stop_tokens.push(id);
                }
            }
        }
        stop_tokens.sort_unstable();
        stop_tokens.dedup();

        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            chat_template,
            stop_tokens,
        })
    }

    /// A GGUF file as the Hugging Face model its metadata describes (see `gguf.rs`).
    fn open_gguf(file: &Path) -> Result<Self> {
        let gguf = GgufModel::open(file)?;
        let at_file = |e: ModelError| match e {
            ModelError::Config { message, .. } => ModelError::Config {
                path: file.to_path_buf(),
                message,
            },
            other => other,
        };
        let config = ModelConfig::from_json(&gguf.config_json()?.to_string()).map_err(at_file)?;
        let tokenizer_json = serde_json::to_vec(&gguf.tokenizer_json()?).unwrap_or_default();
        let tokenizer =
            Tokenizer::from_bytes(tokenizer_json).map_err(|e| ModelError::Tokenizer {
                path: file.to_path_buf(),
                message: format!("the tokenizer built from tokenizer.ggml.*: {e}"),
            })?;
        let tc = gguf.tokenizer_config_json()?;
        let token = |k: &str| tc[k].as_str().unwrap_or_default().to_string();
        let chat_template = match gguf.chat_template() {
            Some(source) => Some(ChatTemplate::new(
                &source,
                file,
                token("bos_token"),
                token("eos_token"),
                token("unk_token"),
                token("pad_token"),
            )?),
            None => None,
        };
        let mut stop_tokens = config.eos_token_ids.clone();
        stop_tokens.extend(eos_ids(&gguf.generation_config_json()));
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        Ok(Checkpoint {
            dir: file.to_path_buf(),
            config,
            tokenizer,
            chat_template,
            stop_tokens,
        })
    }

    /// Reads the weights and builds the transformer.
    pub fn load_model(&self, dtype: DType, device: &Device) -> Result<Transformer> {
        let weights = Weights::load(&self.dir, dtype, device)?;
        Transformer::new(self.config.clone(), &weights)
    }

    /// Renders a conversation with the chat template (or, without one, joins the turns' text).
    pub fn render_chat<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let config_file = self.dir.join("tokenizer_config.json");
        match &self.chat_template {
            Some(t) => t.render(messages, add_generation_prompt),
            None if self.dir.is_dir() && !config_file.is_file() => Err(ModelError::MissingFile {
                dir: self.dir.clone(),
                what: "tokenizer_config.json".into(),
                expected: "the file that holds the model's chat_template".into(),
            }),
            None => Err(ModelError::ChatTemplate {
                path: config_file,
                message: "the model has no chat_template".into(),
            }),
        }
    }

    /// Token ids of text that already contains its special tokens (a rendered template):
    /// nothing is added, as `apply_chat_template(tokenize=True)` does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                path: self.dir.join("tokenizer.json"),
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of response tokens, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.dir.join("tokenizer.json"),
                message: e.to_string(),
            })
    }
}
