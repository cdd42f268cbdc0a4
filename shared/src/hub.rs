//! Models named by a Hugging Face Hub id (`org/name`) are downloaded with hf-hub into the usual
//! cache (`HF_HOME`, default ~/.cache/huggingface) and used from there.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Downloads the files a stage needs and returns the snapshot directory.
pub fn download(id: &str) -> Result<PathBuf> {
    if id.split('/').count() != 2 || id.starts_with('.') || id.contains("..") {
        bail!("model {id}: no such directory, and not a Hub id of the form org/name");
    }
    let api = hf_hub::api::sync::Api::new().context("cannot start the Hugging Face Hub client")?;
    let repo = api.model(id.to_string());
    let get = |name: &str| {
        repo.get(name)
            .with_context(|| format!("model {id}: cannot download {name} from the Hub"))
    };
    let config = get("config.json")?;
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        get(name)?;
    }
    // Optional files.
    let _ = repo.get("generation_config.json");
    match repo.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = get("model.safetensors.index.json")?;
            let text = std::fs::read_to_string(&index)?;
            let json: serde_json::Value = serde_json::from_str(&text)?;
            let mut shards: Vec<&str> = json["weight_map"]
                .as_object()
                .context("model.safetensors.index.json has no weight_map")?
                .values()
                .filter_map(|v| v.as_str())
                .collect();
            shards.sort();
            shards.dedup();
            for shard in shards {
                get(shard)?;
            }
        }
    }
    Ok(config
        .parent()
        .context("downloaded file has no folder")?
        .to_path_buf())
}
