//! Downloading a model into the Hugging Face cache with hf-hub (rustls, progress bar). Only
//! when the hub answers: an unreachable hub (DNS failure, refused or silent connection) fails
//! within half a second instead of hanging, and `HF_HUB_OFFLINE=1` never tries at all.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::ApiBuilder;

/// Why a model was not downloaded.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("HF_HUB_OFFLINE is set, so nothing is downloaded")]
    Offline,
    #[error("the hub is unreachable ({reason})")]
    Unreachable { reason: String },
    #[error("cannot set up the download into {cache}: {message}")]
    Setup { cache: PathBuf, message: String },
    #[error("cannot fetch {model}/{file}: {message}")]
    File {
        model: String,
        file: String,
        message: String,
    },
    #[error("{model} has neither model.safetensors nor an index of shards: {message}")]
    NoWeights { model: String, message: String },
    #[error("cannot read the shard index {path}: {message}")]
    Index { path: PathBuf, message: String },
}

fn unreachable(reason: String) -> DownloadError {
    DownloadError::Unreachable { reason }
}

/// How long the reachability check may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
}

/// The hub's host and port, from `HF_ENDPOINT` or the default.
fn endpoint() -> (String, u16) {
    endpoint_of(
        &std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_owned()),
    )
}

fn endpoint_of(url: &str) -> (String, u16) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let host_port = rest.split('/').next().unwrap_or(rest);
    let default_port = if scheme == "http" { 80 } else { 443 };
    match host_port.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().unwrap_or(default_port)),
        None => (host_port.to_owned(), default_port),
    }
}

/// Fails fast, with the reason, when the hub cannot be reached.
pub fn check_reachable() -> Result<(), DownloadError> {
    let (host, port) = endpoint();
    reachable(&host, port)
}

fn reachable(host: &str, port: u16) -> Result<(), DownloadError> {
    let addresses = (host, port)
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve {host}: {e}")))?;
    let mut last = format!("{host} has no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(error) => last = format!("cannot connect to {host} ({address}): {error}"),
        }
    }
    Err(unreachable(last))
}

/// Downloads `config.json`, `tokenizer.json` and the safetensors weights of `id` into
/// `cache` (the standard `models--org--name/snapshots/<rev>/` layout); returns the snapshot.
pub fn download(id: &str, cache: &Path) -> Result<PathBuf, DownloadError> {
    if offline() {
        return Err(DownloadError::Offline);
    }
    check_reachable()?;
    let api = ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(true)
        .build()
        .map_err(|e| DownloadError::Setup {
            cache: cache.to_path_buf(),
            message: e.to_string(),
        })?;
    let repo = api.model(id.to_owned());
    let fetch = |file: &str| {
        repo.get(file).map_err(|e| DownloadError::File {
            model: id.to_owned(),
            file: file.to_owned(),
            message: e.to_string(),
        })
    };
    let config = fetch("config.json")?;
    fetch("tokenizer.json")?;
    if repo.get("model.safetensors").is_err() {
        // Sharded checkpoints list their files in an index.
        let index =
            repo.get("model.safetensors.index.json")
                .map_err(|e| DownloadError::NoWeights {
                    model: id.to_owned(),
                    message: e.to_string(),
                })?;
        let bad_index = |message: String| DownloadError::Index {
            path: index.clone(),
            message,
        };
        let text = std::fs::read_to_string(&index).map_err(|e| bad_index(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad_index(e.to_string()))?;
        let mut shards: Vec<String> = json["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for shard in shards {
            fetch(&shard)?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| DownloadError::File {
            model: id.to_owned(),
            file: "config.json".to_owned(),
            message: "the downloaded file has no folder".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_hub_fails_fast_with_the_reason() {
        let started = std::time::Instant::now();
        let error = reachable("n0m1-no-such-host.invalid", 443).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        assert!(matches!(error, DownloadError::Unreachable { .. }));
        let error = error.to_string();
        assert!(error.contains("n0m1-no-such-host.invalid"), "{error}");
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            endpoint_of("https://huggingface.co"),
            ("huggingface.co".to_owned(), 443)
        );
        assert_eq!(
            endpoint_of("http://mirror.local:8080/hub"),
            ("mirror.local".to_owned(), 8080)
        );
        assert_eq!(endpoint_of("hub.example"), ("hub.example".to_owned(), 443));
    }
}
