//! Turning `--model X` into files, with no surprises: a folder or `.gguf` path is used as is;
//! otherwise X names a model in the n0m1 home's `models/` or in the Hugging Face cache. A miss
//! lists every place tried. Nothing here touches the network, so an offline machine fails at
//! once instead of hanging.

use std::path::{Path, PathBuf};

use crate::error::{LlmError, Result};

/// The original's default for each component.
pub const DEFAULT_MAIN_MODEL: &str = "distilgpt2";
pub const DEFAULT_NANO_MODEL: &str = "sshleifer/tiny-gpt2";

/// Where resolution looks, taken from the environment once.
#[derive(Debug, Clone, Default)]
pub struct ModelPlaces {
    /// The n0m1 home's `models/` folder.
    pub home_models: Option<PathBuf>,
    /// Hugging Face hub caches, in precedence order.
    pub hub_caches: Vec<PathBuf>,
    /// Download a cache miss into the first cache (false with `HF_HUB_OFFLINE=1`).
    pub download: bool,
}

impl ModelPlaces {
    /// HF_HUB_CACHE, then HUGGINGFACE_HUB_CACHE, then HF_HOME/hub, then ~/.cache/huggingface/hub.
    pub fn from_env(home_models: Option<PathBuf>) -> ModelPlaces {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut hub_caches = Vec::new();
        hub_caches.extend(var("HF_HUB_CACHE"));
        hub_caches.extend(var("HUGGINGFACE_HUB_CACHE"));
        hub_caches.extend(var("HF_HOME").map(|h| h.join("hub")));
        hub_caches.extend(var("HOME").map(|h| h.join(".cache/huggingface/hub")));
        hub_caches.dedup();
        ModelPlaces {
            home_models,
            hub_caches,
            download: !crate::download::offline(),
        }
    }
}

/// What a model name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    Folder(PathBuf),
    Gguf(PathBuf),
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::Folder(p) | ModelLocation::Gguf(p) => p,
        }
    }
}

fn as_location(path: &Path) -> Option<ModelLocation> {
    if path.is_dir() && path.join("config.json").is_file() {
        return Some(ModelLocation::Folder(path.to_path_buf()));
    }
    if path.is_file() && path.extension().is_some_and(|x| x == "gguf") {
        return Some(ModelLocation::Gguf(path.to_path_buf()));
    }
    None
}

/// A repo id is `name` or `org/name`, made of the characters the hub allows.
fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    !id.is_empty()
        && parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// The snapshot a cache entry's `refs/main` names, else its newest snapshot with a config.
fn cached_snapshot(repo_dir: &Path) -> Option<PathBuf> {
    let snapshots = repo_dir.join("snapshots");
    if let Ok(revision) = std::fs::read_to_string(repo_dir.join("refs/main")) {
        let candidate = snapshots.join(revision.trim());
        if candidate.join("config.json").is_file() {
            return Some(candidate);
        }
    }
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .map(|p| {
            (
                p.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH),
                p,
            )
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p)
}

/// Resolves `spec` (`default` means `default_id`).
pub fn resolve(spec: &str, default_id: &str, places: &ModelPlaces) -> Result<ModelLocation> {
    let id = if spec == "default" { default_id } else { spec };
    let mut tried = Vec::new();
    let direct = Path::new(id);
    if let Some(location) = as_location(direct) {
        return Ok(location);
    }
    tried.push(format!(
        "  - {} (as a folder with config.json, or a .gguf file)",
        direct.display()
    ));
    if is_repo_id(id) {
        if let Some(models) = &places.home_models {
            let flat = id.replace('/', "--");
            for candidate in [models.join(&flat), models.join(format!("{flat}.gguf"))] {
                if let Some(location) = as_location(&candidate) {
                    return Ok(location);
                }
                tried.push(format!("  - {}", candidate.display()));
            }
        }
        let cache_name = format!("models--{}", id.replace('/', "--"));
        for cache in &places.hub_caches {
            let repo_dir = cache.join(&cache_name);
            if let Some(snapshot) = cached_snapshot(&repo_dir) {
                return Ok(ModelLocation::Folder(snapshot));
            }
            tried.push(format!(
                "  - {} (Hugging Face cache)",
                repo_dir.join("snapshots").display()
            ));
        }
        match (places.download, places.hub_caches.first()) {
            (true, Some(cache)) => match crate::download::download(id, cache) {
                Ok(snapshot) => return Ok(ModelLocation::Folder(snapshot)),
                Err(reason) => {
                    tried.push(format!("  - download into {}: {reason}", cache.display()))
                }
            },
            _ => {
                tried.push("  - no download (HF_HUB_OFFLINE is set, or no cache folder)".to_owned())
            }
        }
    }
    Err(LlmError::NotFound {
        model: id.to_owned(),
        tried: tried.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_gguf_files_are_used_as_they_are() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("m");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("config.json"), "{}").unwrap();
        let places = ModelPlaces::default();
        assert_eq!(
            resolve(folder.to_str().unwrap(), "x", &places).unwrap(),
            ModelLocation::Folder(folder.clone())
        );
        let gguf = tmp.path().join("small.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        assert_eq!(
            resolve(gguf.to_str().unwrap(), "x", &places).unwrap(),
            ModelLocation::Gguf(gguf)
        );
    }

    #[test]
    fn hub_ids_are_found_in_the_cache_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("hub");
        let repo = cache.join("models--sshleifer--tiny-gpt2");
        let snapshot = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        let places = ModelPlaces {
            home_models: None,
            hub_caches: vec![tmp.path().join("empty"), cache],
            download: false,
        };
        assert_eq!(
            resolve("default", DEFAULT_NANO_MODEL, &places).unwrap(),
            ModelLocation::Folder(snapshot)
        );
    }

    #[test]
    fn a_miss_lists_every_place_tried_and_is_fast() {
        let tmp = tempfile::tempdir().unwrap();
        let places = ModelPlaces {
            home_models: Some(tmp.path().join("models")),
            hub_caches: vec![tmp.path().join("hub")],
            download: false,
        };
        let started = std::time::Instant::now();
        let message = resolve("default", DEFAULT_MAIN_MODEL, &places)
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(message.contains("distilgpt2"), "{message}");
        assert!(message.contains("models--distilgpt2"), "{message}");
        assert!(
            message.contains(&tmp.path().join("models").display().to_string()),
            "{message}"
        );
        assert!(message.contains("n0m1ctl model fetch smollm2"), "{message}");
        assert!(message.contains("n0m1ctl model pull"), "{message}");
        // Path-like or malformed ids are not looked up in caches.
        assert!(
            resolve("../../etc", "x", &places)
                .unwrap_err()
                .to_string()
                .matches("  - ")
                .count()
                == 1
        );
    }
}
