//! The chat template of `tokenizer_config.json`, rendered with minijinja the way transformers'
//! `apply_chat_template` renders it with jinja2 (trim_blocks, lstrip_blocks, `raise_exception`,
//! the special tokens and `add_generation_prompt` in scope).

use minijinja::{Environment, ErrorKind};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

use super::{ModelError, Result};

pub struct ChatTemplate {
    env: Environment<'static>,
    path: PathBuf,
    bos_token: String,
    eos_token: String,
    unk_token: String,
    pad_token: String,
}

/// A special token in tokenizer_config.json is a string or an AddedToken object.
fn token_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Reads the template from `tokenizer_config.json` (or a `chat_template.jinja` beside it,
    /// which newer checkpoints use). Ok(None) when the model has no template.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let cfg: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let jinja_file = path.with_file_name("chat_template.jinja");
        let source = match cfg.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            // A list of named templates: take the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_default(),
            _ if jinja_file.is_file() => {
                std::fs::read_to_string(&jinja_file).map_err(|e| ModelError::io(&jinja_file, e))?
            }
            _ => return Ok(None),
        };
        if source.is_empty() {
            return Ok(None);
        }
        Self::new(
            &source,
            path,
            token_text(cfg.get("bos_token")),
            token_text(cfg.get("eos_token")),
            token_text(cfg.get("unk_token")),
            token_text(cfg.get("pad_token")),
        )
        .map(Some)
    }

    pub fn new(
        source: &str,
        path: &Path,
        bos_token: String,
        eos_token: String,
        unk_token: String,
        pad_token: String,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python string methods (`.strip()`, `.startswith()`, ...) that templates use.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::ChatTemplate {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(ChatTemplate {
            env,
            path: path.to_path_buf(),
            bos_token,
            eos_token,
            unk_token,
            pad_token,
        })
    }

    /// Renders a conversation (a list of `{role, content}`), ending with the assistant's turn
    /// opening when `add_generation_prompt` is set.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| self.error(e))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            unk_token => &self.unk_token,
            pad_token => &self.pad_token,
        })
        .map_err(|e| self.error(e))
    }

    fn error(&self, e: minijinja::Error) -> ModelError {
        // The template's own message (from raise_exception) comes first, then where it happened.
        let message = match e.detail() {
            Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
            _ => e.to_string(),
        };
        ModelError::ChatTemplate {
            path: self.path.clone(),
            message,
        }
    }
}
