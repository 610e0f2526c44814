//! The seam between the protocol and the model engine: the processor and nano instances ask a
//! `Generator` for text, and work without one (digest or statistics only) when no model loads.

/// Something that completes prompts.
pub trait Generator {
    /// What model this is, for messages.
    fn describe(&self) -> String;
    /// Completes `prompt` (with an optional system instruction).
    fn complete(&mut self, system: Option<&str>, prompt: &str) -> Result<String, GenerateError>;
    /// Called while idle: a generator whose model lives in another process connects to it
    /// again here, so it is ready (and counted by the service) before the next completion.
    fn keep_ready(&mut self) {}
}

/// Why a completion failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The prompt and the tokens asked for do not fit the model's context.
    #[error("the prompt does not fit the model's context of {limit} tokens")]
    ContextFull { limit: usize },
    /// The model service is down or hung; the caller may try again later (the processor
    /// leaves its notification unprocessed, a nano instance writes its statistics alone).
    #[error("{0}")]
    ServiceDown(String),
    /// The engine failed; the source says how.
    #[error("the model failed: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a component runs without a generator.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// `--model none`: the operator asked for no model.
    #[error("--model none")]
    Disabled,
    /// The model could not be found or loaded; the source says which and why (for the
    /// engine, an `n0m1_llm::LlmError`: not found with the places tried, unreadable,
    /// unsupported architecture, bad tensor shape, …).
    #[error(transparent)]
    Load(Box<dyn std::error::Error + Send + Sync>),
}

/// What a model component starts with: a generator, or why it has none.
pub type Loaded = Result<Box<dyn Generator>, Unavailable>;

pub use n0m1_core::text::fnv1a;

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a_known_values() {
        assert_eq!(super::fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(super::fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
