//! Models named by a Hugging Face Hub id (`org/name`) resolve to a snapshot folder of the Hub
//! cache, found and fetched as the Hugging Face libraries do: the cache is `HF_HUB_CACHE`, else
//! `$HF_HOME/hub` (default `~/.cache/huggingface/hub`); `HF_HUB_OFFLINE=1` uses that cache only
//! and never the network; `HF_ENDPOINT` replaces https://huggingface.co; `HF_TOKEN` (else the
//! token file `huggingface-cli login` writes) authorizes gated models.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::Cache;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The Hub settings of the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct HubEnv {
    /// The folder holding `models--org--name/{refs,snapshots,blobs}`.
    pub cache: PathBuf,
    /// The Hub's base URL, without a trailing `/`.
    pub endpoint: String,
    pub token: Option<String>,
    /// Use the cache only.
    pub offline: bool,
}

impl HubEnv {
    /// The settings from this process's environment variables.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// The settings from the variables `var` gives, with huggingface_hub's names and defaults
    /// (empty values count as unset). The token file is read only when `HF_TOKEN` is unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Self {
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        let home_dir = var("HOME").map(PathBuf::from);
        let path = |value: OsString| expand_home(PathBuf::from(value), home_dir.as_deref());
        let hf_home = var("HF_HOME").map(path).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME").map(path).unwrap_or_else(|| {
                home_dir
                    .clone()
                    .unwrap_or_else(std::env::temp_dir)
                    .join(".cache")
            });
            cache.join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(path)
            .unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = var("HF_ENDPOINT")
            .map(|url| url.to_string_lossy().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token_file = var("HF_TOKEN_PATH")
            .map(path)
            .unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .map(|token| token.to_string_lossy().into_owned())
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty());
        let is_true = |name: &str| {
            var(name).is_some_and(|value| {
                let value = value.to_string_lossy().to_ascii_uppercase();
                ["1", "ON", "YES", "TRUE"].contains(&value.as_str())
            })
        };
        HubEnv {
            cache,
            endpoint,
            token,
            offline: is_true("HF_HUB_OFFLINE") || is_true("TRANSFORMERS_OFFLINE"),
        }
    }
}

/// `~/x` as Python's `os.path.expanduser` reads it.
fn expand_home(path: PathBuf, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path,
    }
}

/// The files a stage needs, from the cache or the Hub.
trait Files {
    /// The local path of `name`; an error names the model and the file.
    fn get(&self, name: &str) -> Result<PathBuf>;
    /// The local path of `name`, or None when it cannot be had.
    fn optional(&self, name: &str) -> Option<PathBuf>;
}

/// The cache alone (`HF_HUB_OFFLINE`).
struct Offline<'a> {
    id: &'a str,
    env: &'a HubEnv,
}

impl Offline<'_> {
    /// The snapshot folder `refs/main` names, or a message saying what is missing.
    fn snapshot(&self) -> Result<PathBuf> {
        let repo_dir = self
            .env
            .cache
            .join(format!("models--{}", self.id.replace('/', "--")));
        let main = repo_dir.join("refs").join("main");
        let revision = std::fs::read_to_string(&main).map_err(|_| {
            anyhow::anyhow!(
                "model {}: not in the Hugging Face cache ({} not found) and HF_HUB_OFFLINE is \
                 set, so nothing is downloaded. Download it on a machine with network access \
                 (`huggingface-cli download {}`) into this cache ({}; set by HF_HUB_CACHE or \
                 HF_HOME), or unset HF_HUB_OFFLINE",
                self.id,
                main.display(),
                self.id,
                self.env.cache.display()
            )
        })?;
        Ok(repo_dir.join("snapshots").join(revision.trim()))
    }
}

impl Files for Offline<'_> {
    fn get(&self, name: &str) -> Result<PathBuf> {
        let path = self.snapshot()?.join(name);
        // `exists` follows the snapshot's symlinks into blobs/.
        if path.exists() {
            return Ok(path);
        }
        bail!(
            "model {}: {} is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so \
             nothing is downloaded. Download the whole model on a machine with network access \
             (`huggingface-cli download {}`) into this cache ({}), or unset HF_HUB_OFFLINE",
            self.id,
            path.display(),
            self.id,
            self.env.cache.display()
        )
    }

    fn optional(&self, name: &str) -> Option<PathBuf> {
        self.get(name).ok()
    }
}

/// The cache, then the Hub for what it lacks.
struct Online<'a> {
    id: &'a str,
    env: &'a HubEnv,
    repo: ApiRepo,
}

impl Files for Online<'_> {
    fn get(&self, name: &str) -> Result<PathBuf> {
        self.repo.get(name).with_context(|| {
            let hint = if self.env.token.is_some() {
                ""
            } else {
                " (gated models such as Llama need a token: set HF_TOKEN or run \
                 `huggingface-cli login`)"
            };
            format!(
                "model {}: cannot download {name} from {}{hint}",
                self.id, self.env.endpoint
            )
        })
    }

    fn optional(&self, name: &str) -> Option<PathBuf> {
        self.repo.get(name).ok()
    }
}

/// Downloads (or finds in the cache) the files a stage needs and returns the snapshot folder,
/// with the settings of this process's environment.
pub fn download(id: &str) -> Result<PathBuf> {
    resolve(id, &HubEnv::from_env())
}

/// [`download`] with the given settings.
pub fn resolve(id: &str, env: &HubEnv) -> Result<PathBuf> {
    if id.split('/').count() != 2 || id.starts_with('.') || id.contains("..") {
        bail!("model {id}: no such directory, and not a Hub id of the form org/name");
    }
    if env.offline {
        return fetch(&Offline { id, env });
    }
    let api = ApiBuilder::from_cache(Cache::new(env.cache.clone()))
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .build()
        .context("cannot start the Hugging Face Hub client")?;
    let repo = api.model(id.to_string());
    fetch(&Online { id, env, repo })
}

/// The model's files: config, tokenizer, the optional generation config and chat template, and
/// the weights (one file, or the shards its index names).
fn fetch(files: &dyn Files) -> Result<PathBuf> {
    let config = files.get("config.json")?;
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        files.get(name)?;
    }
    for name in ["generation_config.json", "chat_template.jinja"] {
        files.optional(name);
    }
    if files.optional("model.safetensors").is_none() {
        let index = files.get("model.safetensors.index.json")?;
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let mut shards: Vec<&str> = json["weight_map"]
            .as_object()
            .with_context(|| format!("{}: no weight_map", index.display()))?
            .values()
            .filter_map(|v| v.as_str())
            .collect();
        shards.sort();
        shards.dedup();
        for shard in shards {
            files.get(shard)?;
        }
    }
    Ok(config
        .parent()
        .context("downloaded file has no folder")?
        .to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testing::TempDir;
    use std::fs;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn settings_follow_huggingface_hub() {
        let tmp = TempDir::new();
        let home = tmp.path().join("home");
        let hf_home = tmp.path().join("hf");
        fs::create_dir_all(&hf_home).expect("mkdir");
        fs::write(hf_home.join("token"), "hf_from_file\n").expect("token file");
        let h = home.to_str().expect("utf-8");
        let hf = hf_home.to_str().expect("utf-8");

        let env = HubEnv::from_vars(vars(&[("HOME", h)]));
        assert_eq!(env.cache, home.join(".cache/huggingface/hub"));
        assert_eq!(env.endpoint, "https://huggingface.co");
        assert_eq!(env.token, None);
        assert!(!env.offline);

        let env = HubEnv::from_vars(vars(&[("HOME", h), ("XDG_CACHE_HOME", "/x")]));
        assert_eq!(env.cache, PathBuf::from("/x/huggingface/hub"));

        let env = HubEnv::from_vars(vars(&[
            ("HOME", h),
            ("HF_HOME", hf),
            ("HF_ENDPOINT", "http://mirror.local/"),
            ("HF_HUB_OFFLINE", "1"),
        ]));
        assert_eq!(env.cache, hf_home.join("hub"));
        assert_eq!(env.endpoint, "http://mirror.local");
        assert_eq!(env.token.as_deref(), Some("hf_from_file"));
        assert!(env.offline);

        let env = HubEnv::from_vars(vars(&[
            ("HOME", h),
            ("HF_HOME", hf),
            ("HF_HUB_CACHE", "~/shared/hub"),
            ("HF_TOKEN", "hf_from_env"),
            ("HF_HUB_OFFLINE", "0"),
            ("TRANSFORMERS_OFFLINE", "yes"),
        ]));
        assert_eq!(env.cache, home.join("shared/hub"));
        assert_eq!(env.token.as_deref(), Some("hf_from_env"));
        assert!(env.offline, "TRANSFORMERS_OFFLINE counts too");

        for (value, offline) in [("true", true), ("ON", true), ("0", false), ("", false)] {
            let env = HubEnv::from_vars(vars(&[("HOME", h), ("HF_HUB_OFFLINE", value)]));
            assert_eq!(env.offline, offline, "HF_HUB_OFFLINE={value}");
        }
    }

    /// Lays `files` out as the Hub client does: content in `blobs/<hash>`, and
    /// `snapshots/<revision>/<name>` a relative symlink to it; `refs/main` names the revision.
    fn hub_cache(cache: &Path, id: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let repo = cache.join(format!("models--{}", id.replace('/', "--")));
        let revision = "0123456789abcdef0123456789abcdef01234567";
        let snapshot = repo.join("snapshots").join(revision);
        fs::create_dir_all(repo.join("blobs")).expect("mkdir");
        fs::create_dir_all(repo.join("refs")).expect("mkdir");
        fs::create_dir_all(&snapshot).expect("mkdir");
        fs::write(repo.join("refs/main"), revision).expect("ref");
        for (name, bytes) in files {
            let blob = blake3::hash(bytes).to_hex().to_string();
            fs::write(repo.join("blobs").join(&blob), bytes).expect("blob");
            let link = snapshot.join(name);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("../../blobs/{blob}"), link).expect("symlink");
        }
        snapshot
    }

    const MODEL: &[(&str, &[u8])] = &[
        ("config.json", b"{}"),
        ("tokenizer.json", b"{\"t\": 1}"),
        ("tokenizer_config.json", b"{\"c\": 1}"),
        ("model.safetensors", b"weights"),
    ];

    /// Offline settings whose endpoint would refuse any connection.
    fn offline(cache: &Path) -> HubEnv {
        HubEnv {
            cache: cache.to_path_buf(),
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            offline: true,
        }
    }

    #[test]
    fn offline_ids_resolve_from_the_cache_alone() {
        let tmp = TempDir::new();
        let cache = tmp.path().join("hf/hub");
        let snapshot = hub_cache(&cache, "org/tiny", MODEL);
        assert_eq!(
            resolve("org/tiny", &offline(&cache)).expect("offline"),
            snapshot
        );

        // Sharded weights: the index and every shard it names.
        let index = br#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}"#;
        let mut files = MODEL[..3].to_vec();
        files.push(("model.safetensors.index.json", index));
        files.push(("m-1.safetensors", b"1"));
        let sharded = hub_cache(&cache, "org/sharded", &files);
        let error = resolve("org/sharded", &offline(&cache)).expect_err("missing shard");
        let message = format!("{error:#}");
        assert!(
            message.starts_with(&format!(
                "model org/sharded: {} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                sharded.join("m-2.safetensors").display()
            )),
            "{message}"
        );
        assert!(
            message.contains("huggingface-cli download org/sharded"),
            "{message}"
        );
        files.push(("m-2.safetensors", b"2"));
        hub_cache(&cache, "org/sharded", &files);
        assert_eq!(
            resolve("org/sharded", &offline(&cache)).expect("offline"),
            sharded
        );

        // A dangling link (the blob was never downloaded) is a missing file.
        let blob = blake3::hash(b"{\"t\": 1}").to_hex().to_string();
        fs::remove_file(cache.join("models--org--tiny/blobs").join(blob)).expect("rm");
        let message = format!(
            "{:#}",
            resolve("org/tiny", &offline(&cache)).expect_err("gone")
        );
        assert!(
            message.contains(&format!(
                "{} is not in",
                snapshot.join("tokenizer.json").display()
            )),
            "{message}"
        );

        let message = format!(
            "{:#}",
            resolve("org/absent", &offline(&cache)).expect_err("absent")
        );
        assert!(
            message.starts_with(&format!(
                "model org/absent: not in the Hugging Face cache ({} not found) and \
                 HF_HUB_OFFLINE is set",
                cache.join("models--org--absent/refs/main").display()
            )),
            "{message}"
        );
    }

    /// A stand-in Hub at 127.0.0.1 serving `files` of one revision of any repo as the Hub's
    /// resolve endpoint does (commit and etag headers, byte ranges), only to `Bearer <token>`.
    /// Returns its URL and the paths requested.
    fn serve(
        files: &'static [(&'static str, &'static [u8])],
        token: &'static str,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requested = Arc::new(Mutex::new(Vec::new()));
        let log = requested.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                reader.read_line(&mut line).expect("request line");
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                let (mut auth, mut range) = (String::new(), (0usize, None::<usize>));
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).expect("header");
                    if header.trim().is_empty() {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap_or_default();
                    match name.to_ascii_lowercase().as_str() {
                        "authorization" => auth = value.trim().to_string(),
                        "range" => {
                            let spec = value.trim().trim_start_matches("bytes=");
                            let (from, to) = spec.split_once('-').unwrap_or(("0", ""));
                            range = (from.parse().unwrap_or(0), to.parse().ok());
                        }
                        _ => {}
                    }
                }
                log.lock().expect("log").push(path.clone());
                let name = path.rsplit_once("/resolve/main/").map(|(_, name)| name);
                let file = files.iter().find(|(n, _)| Some(*n) == name);
                let response = match file {
                    _ if auth != format!("Bearer {token}") => {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .as_bytes()
                            .to_vec()
                    }
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .as_bytes()
                        .to_vec(),
                    Some((_, bytes)) => {
                        let start = range.0.min(bytes.len());
                        let end = range.1.map_or(bytes.len(), |last| (last + 1).min(bytes.len()));
                        let body = &bytes[start..end];
                        let mut head = format!(
                            "HTTP/1.1 206 Partial Content\r\nx-repo-commit: \
                             0123456789abcdef0123456789abcdef01234567\r\netag: \"{}\"\r\n\
                             Content-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n",
                            blake3::hash(bytes).to_hex(),
                            end.saturating_sub(1),
                            bytes.len(),
                            body.len()
                        )
                        .into_bytes();
                        head.extend_from_slice(body);
                        head
                    }
                };
                let _ = stream.write_all(&response);
            }
        });
        (url, requested)
    }

    #[test]
    fn ids_download_from_hf_endpoint_with_hf_token_and_then_resolve_offline() {
        let (url, requested) = serve(MODEL, "hf_secret");
        let tmp = TempDir::new();
        let mut env = HubEnv {
            cache: tmp.path().join("hub"),
            endpoint: url.clone(),
            token: None,
            offline: false,
        };
        let message = format!("{:#}", resolve("org/gated", &env).expect_err("no token"));
        assert!(
            message.starts_with(&format!(
                "model org/gated: cannot download config.json from {url} (gated models such as \
                 Llama need a token: set HF_TOKEN"
            )),
            "{message}"
        );

        env.token = Some("hf_secret".into());
        let snapshot = resolve("org/gated", &env).expect("download");
        for (name, bytes) in MODEL {
            assert_eq!(
                fs::read(snapshot.join(name)).expect("file"),
                *bytes,
                "{name}"
            );
        }
        let seen = requested.lock().expect("log").clone();
        assert!(
            seen.contains(&"/org/gated/resolve/main/model.safetensors".to_string()),
            "{seen:?}"
        );

        // What the client cached is a complete snapshot for offline use, with no request.
        let count = seen.len();
        env.offline = true;
        assert_eq!(resolve("org/gated", &env).expect("offline"), snapshot);
        assert_eq!(requested.lock().expect("log").len(), count);
    }
}
