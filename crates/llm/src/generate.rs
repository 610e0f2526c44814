//! Prompt in, completion out: greedy or seeded sampling (temperature, top-p), a token limit,
//! stop strings and stop ids, and a prompt longer than the context truncated from the left.

use candle_transformers::generation::{LogitsProcessor, Sampling};

use crate::error::{LlmError, Result};
use crate::model::{ChatTemplate, LoadedModel};

#[derive(Debug, Clone, PartialEq)]
pub enum Decoding {
    Greedy,
    /// Seeded, so the same seed gives the same text.
    Sample {
        temperature: f64,
        top_p: Option<f64>,
        seed: u64,
    },
}

#[derive(Debug, Clone)]
pub struct GenerationOptions {
    pub max_new_tokens: usize,
    pub decoding: Decoding,
    /// Generation ends at the first of these strings (which is cut from the text).
    pub stop_strings: Vec<String>,
    /// Token ids that end generation, besides the model's end-of-sequence ids.
    pub stop_ids: Vec<u32>,
    /// Generation ends before the next token once this is set (the asker is gone).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        GenerationOptions {
            max_new_tokens: 64,
            decoding: Decoding::Greedy,
            stop_strings: Vec::new(),
            stop_ids: Vec::new(),
            cancel: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    EndOfSequence,
    StopString,
    ContextFull,
    /// `cancel` was set: nobody waits for the rest.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    /// How many prompt tokens were dropped from the left to fit the context.
    pub truncated_tokens: usize,
    pub stop: StopReason,
}

impl LoadedModel {
    /// Wraps `user` in the model's chat template when it has one (ChatML instruct models).
    pub fn format_prompt(&self, system: Option<&str>, user: &str) -> String {
        let system = system.filter(|s| !s.is_empty());
        let plain = match system {
            Some(system) => format!("{system}\n\n{user}"),
            None => user.to_owned(),
        };
        match self.chat_template {
            ChatTemplate::Plain => return plain,
            ChatTemplate::Gemma => {
                return format!(
                    "<bos><start_of_turn>user\n{plain}<end_of_turn>\n<start_of_turn>model\n"
                );
            }
            ChatTemplate::ChatMl => {}
        }
        let mut text = String::new();
        if let Some(system) = system {
            text.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
        }
        text.push_str(&format!(
            "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        ));
        text
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| LlmError::Text {
                action: "tokenize the prompt",
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| LlmError::Text {
                action: "decode tokens",
                message: e.to_string(),
            })
    }

    /// Generates a completion of `prompt` (already formatted).
    pub fn generate(&mut self, prompt: &str, options: &GenerationOptions) -> Result<Completion> {
        let mut prompt_ids = self.encode(prompt)?;
        if prompt_ids.is_empty() {
            return Err(LlmError::EmptyPrompt);
        }
        let room_for_prompt = self
            .context_length
            .saturating_sub(options.max_new_tokens.min(self.context_length / 2))
            .max(1);
        let truncated_tokens = prompt_ids.len().saturating_sub(room_for_prompt);
        if truncated_tokens > 0 {
            tracing::warn!(
                dropped = truncated_tokens,
                context = self.context_length,
                "prompt longer than the context; keeping its end"
            );
            prompt_ids.drain(..truncated_tokens);
        }
        let mut sampler = match &options.decoding {
            Decoding::Greedy => LogitsProcessor::from_sampling(0, Sampling::ArgMax),
            Decoding::Sample {
                temperature,
                top_p,
                seed,
            } => LogitsProcessor::from_sampling(
                *seed,
                match top_p {
                    Some(p) => Sampling::TopP {
                        p: *p,
                        temperature: *temperature,
                    },
                    None => Sampling::All {
                        temperature: *temperature,
                    },
                },
            ),
        };
        self.clear_cache()?;
        let mut logits = self.forward(&prompt_ids, 0)?;
        let mut position = prompt_ids.len();
        let mut generated: Vec<u32> = Vec::new();
        let mut text = String::new();
        let stop = loop {
            if generated.len() >= options.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if options
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            {
                break StopReason::Cancelled;
            }
            let next = sampler.sample(&logits)?;
            if self.eos_ids.contains(&next) || options.stop_ids.contains(&next) {
                break StopReason::EndOfSequence;
            }
            generated.push(next);
            text = self.decode(&generated)?;
            if let Some(cut) = options
                .stop_strings
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(cut);
                break StopReason::StopString;
            }
            if position >= self.context_length {
                break StopReason::ContextFull;
            }
            logits = self.forward(&[next], position)?;
            position += 1;
        };
        Ok(Completion {
            text,
            token_ids: generated,
            prompt_tokens: prompt_ids.len(),
            truncated_tokens,
            stop,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LoadOptions;

    fn fixture_model(quantize: bool) -> (tempfile::TempDir, LoadedModel) {
        let tmp = tempfile::tempdir().unwrap();
        crate::fixture::write_tiny_gpt2(tmp.path(), 42).unwrap();
        let model = LoadedModel::load(
            tmp.path(),
            &LoadOptions {
                quantize,
                lora: None,
            },
        )
        .unwrap();
        (tmp, model)
    }

    #[test]
    fn a_cancelled_generation_stops_before_its_next_token() {
        let (_tmp, mut model) = fixture_model(false);
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let options = GenerationOptions {
            max_new_tokens: 50,
            cancel: Some(cancel.clone()),
            ..Default::default()
        };
        let stopped = model.generate("hello", &options).unwrap();
        assert_eq!(stopped.stop, StopReason::Cancelled);
        assert!(stopped.token_ids.is_empty());
        cancel.store(false, std::sync::atomic::Ordering::Relaxed);
        let whole = model.generate("hello", &options).unwrap();
        assert_ne!(whole.stop, StopReason::Cancelled);
        assert!(!whole.token_ids.is_empty());
    }

    #[test]
    fn greedy_generation_is_deterministic_and_respects_the_limit() {
        let (_tmp, mut model) = fixture_model(false);
        let options = GenerationOptions {
            max_new_tokens: 12,
            ..Default::default()
        };
        let first = model.generate("the CPU usage is 95%", &options).unwrap();
        let second = model.generate("the CPU usage is 95%", &options).unwrap();
        assert_eq!(first.token_ids, second.token_ids);
        assert!(first.token_ids.len() <= 12);
        assert!(matches!(
            first.stop,
            StopReason::MaxTokens | StopReason::EndOfSequence
        ));
        assert_eq!(first.truncated_tokens, 0);
    }

    #[test]
    fn seeded_sampling_repeats_with_the_seed_and_varies_without_it() {
        let (_tmp, mut model) = fixture_model(false);
        let sample = |seed| GenerationOptions {
            max_new_tokens: 16,
            decoding: Decoding::Sample {
                temperature: 1.5,
                top_p: Some(0.95),
                seed,
            },
            ..Default::default()
        };
        let a = model.generate("memory", &sample(1)).unwrap();
        let b = model.generate("memory", &sample(1)).unwrap();
        assert_eq!(a.token_ids, b.token_ids);
        let others: Vec<Vec<u32>> = (2..6)
            .map(|s| model.generate("memory", &sample(s)).unwrap().token_ids)
            .collect();
        assert!(
            others.iter().any(|ids| *ids != a.token_ids),
            "different seeds give different samples"
        );
    }

    #[test]
    fn long_prompts_are_truncated_from_the_left_and_stop_strings_cut() {
        let (_tmp, mut model) = fixture_model(false);
        let long = "the ".repeat(300);
        let options = GenerationOptions {
            max_new_tokens: 4,
            ..Default::default()
        };
        let completion = model.generate(&long, &options).unwrap();
        assert!(completion.truncated_tokens > 0);
        assert!(completion.prompt_tokens + 4 <= model.context_length);
        // A stop string made of the greedy output's first character ends it at once.
        let free = model
            .generate(
                "memory",
                &GenerationOptions {
                    max_new_tokens: 8,
                    ..Default::default()
                },
            )
            .unwrap();
        if let Some(first) = free.text.chars().next() {
            let cut = model
                .generate(
                    "memory",
                    &GenerationOptions {
                        max_new_tokens: 8,
                        stop_strings: vec![first.to_string()],
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(cut.stop, StopReason::StopString);
            assert_eq!(cut.text, "");
        }
    }

    #[test]
    fn llama_safetensors_and_gguf_fixtures_load_and_generate() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("llama");
        crate::fixture::write_tiny_llama(&folder, 3).unwrap();
        let gguf = tmp.path().join("llama.gguf");
        crate::fixture::write_tiny_llama_gguf(&gguf, 3).unwrap();
        let options = GenerationOptions {
            max_new_tokens: 6,
            ..Default::default()
        };
        for path in [&folder, &gguf] {
            let mut model = LoadedModel::load(path, &LoadOptions::default()).unwrap();
            let a = model.generate("the memory usage", &options).unwrap();
            let b = model.generate("the memory usage", &options).unwrap();
            assert_eq!(a.token_ids, b.token_ids, "{}", path.display());
            assert!(!a.token_ids.is_empty() || a.stop == StopReason::EndOfSequence);
        }
        // The tokenizer rebuilt from GGUF metadata encodes like the original one.
        let model = LoadedModel::load(&gguf, &LoadOptions::default()).unwrap();
        let reference = crate::fixture::tiny_tokenizer().unwrap();
        let text = "the CPU usage is high <|endoftext|>";
        assert_eq!(
            model.encode(text).unwrap(),
            reference.encode(text, true).unwrap().get_ids()
        );
    }

    #[test]
    fn q8_0_greedy_matches_f32_on_the_fixture() {
        let (_a, mut dense) = fixture_model(false);
        let (_b, mut quantized) = fixture_model(true);
        let options = GenerationOptions {
            max_new_tokens: 6,
            ..Default::default()
        };
        let x = dense.generate("the CPU", &options).unwrap();
        let y = quantized.generate("the CPU", &options).unwrap();
        assert_eq!(x.token_ids.first(), y.token_ids.first());
    }
}
