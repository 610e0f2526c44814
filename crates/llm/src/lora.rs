//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), merged into the
//! base weights at load: Linear `W += s·B·A`, GPT-2 Conv1D `W += (s·B·A)ᵀ`, with `s = α/r`
//! (`α/√r` with rslora) and `rank_pattern` / `alpha_pattern` honoured per module.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{LlmError, Result, io};

#[derive(Debug, Clone, Deserialize)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub rank_pattern: HashMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, f64>,
}

fn default_bias() -> String {
    "none".to_owned()
}

pub struct LoraAdapter {
    path: PathBuf,
    config: AdapterConfig,
    tensors: HashMap<String, Tensor>,
}

/// A pattern of `rank_pattern`/`alpha_pattern` names a module by its full name or a suffix
/// that starts at a `.` boundary, as PEFT matches them.
fn pattern_matches(pattern: &str, module: &str) -> bool {
    module == pattern || module.ends_with(&format!(".{pattern}"))
}

/// Module names without the wrappers PEFT and transformers put in front.
fn normalise(name: &str) -> &str {
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    name.strip_prefix("transformer.").unwrap_or(name)
}

impl LoraAdapter {
    pub fn load(dir: &Path) -> Result<LoraAdapter> {
        let lora_error = |message: String| LlmError::Lora {
            path: dir.to_path_buf(),
            message,
        };
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| lora_error(format!("adapter_config.json: {e}")))?;
        if config.use_dora {
            return Err(lora_error(
                "use_dora is not supported: merge DoRA adapters with PEFT first".into(),
            ));
        }
        if config.bias != "none" {
            return Err(lora_error(format!(
                "bias {:?} is not supported: only \"none\"",
                config.bias
            )));
        }
        if config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_empty())
        {
            return Err(lora_error(
                "modules_to_save is not supported: the adapter replaces whole modules".into(),
            ));
        }
        if config.r == 0 {
            return Err(lora_error("r must be at least 1".into()));
        }
        let weights_path = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(|e| lora_error(format!("adapter_model.safetensors: {e}")))?;
        Ok(LoraAdapter {
            path: dir.to_path_buf(),
            config,
            tensors,
        })
    }

    fn scale(&self, module: &str, rank: usize) -> f64 {
        let alpha = self
            .config
            .alpha_pattern
            .iter()
            .find(|(pattern, _)| pattern_matches(pattern, module))
            .map_or(self.config.lora_alpha, |(_, alpha)| *alpha);
        if self.config.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }

    /// Adds every adapter delta to `weights` (names as the model uses them). `conv1d` says the
    /// base stores weights [in, out] (GPT-2) rather than [out, in].
    pub fn merge_into(&self, weights: &mut HashMap<String, Tensor>, conv1d: bool) -> Result<usize> {
        let lora_error = |message: String| LlmError::Lora {
            path: self.path.clone(),
            message,
        };
        let mut modules: Vec<&str> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_suffix(".lora_A.weight"))
            .collect();
        modules.sort_unstable();
        if modules.is_empty() {
            return Err(lora_error(
                "no lora_A weights in adapter_model.safetensors".into(),
            ));
        }
        for module in &modules {
            let a = self.tensors[&format!("{module}.lora_A.weight")].to_dtype(DType::F32)?;
            let b = self
                .tensors
                .get(&format!("{module}.lora_B.weight"))
                .ok_or_else(|| lora_error(format!("{module} has lora_A but no lora_B")))?
                .to_dtype(DType::F32)?;
            let name = normalise(module);
            let (a_rank, a_in) = a.dims2()?;
            let (b_out, b_rank) = b.dims2()?;
            if a_rank != b_rank {
                return Err(lora_error(format!(
                    "{name}: lora_A has rank {a_rank}, lora_B has rank {b_rank}"
                )));
            }
            let expected_rank = self
                .config
                .rank_pattern
                .iter()
                .find(|(pattern, _)| pattern_matches(pattern, name))
                .map_or(self.config.r, |(_, r)| *r);
            if a_rank != expected_rank {
                return Err(lora_error(format!(
                    "{name}: rank {a_rank} in the weights, {expected_rank} in the config"
                )));
            }
            let base_name = weights
                .keys()
                .find(|k| normalise(k) == format!("{name}.weight"))
                .cloned()
                .ok_or_else(|| lora_error(format!("the base model has no {name}.weight")))?;
            let base = &weights[&base_name];
            let (out_dim, in_dim) = if conv1d {
                let (i, o) = base.dims2()?;
                (o, i)
            } else {
                base.dims2()?
            };
            if (b_out, a_in) != (out_dim, in_dim) {
                return Err(lora_error(format!(
                    "{name}: adapter is [{b_out} x {a_in}] but the base weight is [{out_dim} x {in_dim}]"
                )));
            }
            let delta = (b.matmul(&a)? * self.scale(name, a_rank))?;
            let delta = if conv1d {
                delta.t()?.contiguous()?
            } else {
                delta
            };
            let merged = (base.to_dtype(DType::F32)? + delta)?.to_dtype(base.dtype())?;
            weights.insert(base_name, merged);
        }
        Ok(modules.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_adapter(dir: &Path, config: &str, tensors: &[(&str, Tensor)]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), config).unwrap();
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        candle_core::safetensors::save(&map, dir.join("adapter_model.safetensors")).unwrap();
    }

    fn t(values: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn linear_and_conv1d_merges_follow_the_formula() {
        let tmp = tempfile::tempdir().unwrap();
        let a = t(&[1.0, 2.0, 3.0], (1, 3)); // [r=1, in=3]
        let b = t(&[1.0, -1.0], (2, 1)); // [out=2, r=1]
        write_adapter(
            tmp.path(),
            r#"{"r": 1, "lora_alpha": 2, "target_modules": ["q_proj"]}"#,
            &[
                (
                    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                    a.clone(),
                ),
                (
                    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                    b.clone(),
                ),
            ],
        );
        let adapter = LoraAdapter::load(tmp.path()).unwrap();
        // Linear: W [out=2, in=3] += 2·B·A.
        let mut linear = HashMap::from([(
            "model.layers.0.self_attn.q_proj.weight".to_owned(),
            Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
        )]);
        assert_eq!(adapter.merge_into(&mut linear, false).unwrap(), 1);
        let merged: Vec<Vec<f32>> = linear["model.layers.0.self_attn.q_proj.weight"]
            .to_vec2()
            .unwrap();
        assert_eq!(merged, vec![vec![2.0, 4.0, 6.0], vec![-2.0, -4.0, -6.0]]);
        // Conv1D: W [in=3, out=2] += (2·B·A)ᵀ.
        let mut conv = HashMap::from([(
            "model.layers.0.self_attn.q_proj.weight".to_owned(),
            Tensor::ones((3, 2), DType::F32, &Device::Cpu).unwrap(),
        )]);
        adapter.merge_into(&mut conv, true).unwrap();
        let merged: Vec<Vec<f32>> = conv["model.layers.0.self_attn.q_proj.weight"]
            .to_vec2()
            .unwrap();
        assert_eq!(
            merged,
            vec![vec![3.0, -1.0], vec![5.0, -3.0], vec![7.0, -5.0]]
        );
    }

    #[test]
    fn rslora_and_patterns_change_the_scale() {
        let tmp = tempfile::tempdir().unwrap();
        let a = t(&[1.0, 0.0, 0.0, 1.0], (2, 2));
        let b = t(&[1.0, 0.0, 0.0, 1.0], (2, 2));
        write_adapter(
            tmp.path(),
            r#"{"r": 4, "lora_alpha": 8, "use_rslora": true, "rank_pattern": {"c_attn": 2}, "alpha_pattern": {"h.0.attn.c_attn": 4}}"#,
            &[
                (
                    "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight",
                    a,
                ),
                (
                    "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight",
                    b,
                ),
            ],
        );
        let adapter = LoraAdapter::load(tmp.path()).unwrap();
        let mut weights = HashMap::from([(
            "h.0.attn.c_attn.weight".to_owned(),
            Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
        )]);
        adapter.merge_into(&mut weights, true).unwrap();
        let merged: Vec<Vec<f32>> = weights["h.0.attn.c_attn.weight"].to_vec2().unwrap();
        let s = 4.0 / 2f32.sqrt();
        assert!(
            (merged[0][0] - s).abs() < 1e-6 && merged[0][1] == 0.0,
            "{merged:?}"
        );
    }

    #[test]
    fn wrong_shapes_and_unsupported_options_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let a = t(&[1.0, 2.0, 3.0], (1, 3));
        let b = t(&[1.0, -1.0], (2, 1));
        write_adapter(
            &tmp.path().join("ok"),
            r#"{"r": 1, "lora_alpha": 1}"#,
            &[
                ("m.lora_A.weight", a.clone()),
                ("m.lora_B.weight", b.clone()),
            ],
        );
        let adapter = LoraAdapter::load(&tmp.path().join("ok")).unwrap();
        let mut wrong = HashMap::from([(
            "m.weight".to_owned(),
            Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
        )]);
        let message = adapter
            .merge_into(&mut wrong, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.contains("adapter is [2 x 3] but the base weight is [4 x 4]"),
            "{message}"
        );
        let mut missing = HashMap::new();
        assert!(adapter.merge_into(&mut missing, false).is_err());
        for (name, config) in [
            ("dora", r#"{"r": 1, "lora_alpha": 1, "use_dora": true}"#),
            ("bias", r#"{"r": 1, "lora_alpha": 1, "bias": "all"}"#),
            (
                "save",
                r#"{"r": 1, "lora_alpha": 1, "modules_to_save": ["lm_head"]}"#,
            ),
        ] {
            let dir = tmp.path().join(name);
            write_adapter(
                &dir,
                config,
                &[
                    ("m.lora_A.weight", a.clone()),
                    ("m.lora_B.weight", b.clone()),
                ],
            );
            assert!(LoraAdapter::load(&dir).is_err(), "{name}");
        }
    }
}
