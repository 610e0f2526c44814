//! Tokenizers built from a GGUF file's metadata: byte-level BPE (`gpt2`) and SentencePiece
//! (`llama`: merges ranked by the pieces' scores, byte fallback), with the file's control
//! tokens added.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

/// What is wrong with the tokenizer a GGUF file describes.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    #[error("no {key} in the GGUF metadata: the file carries no tokenizer")]
    Missing { key: &'static str },
    #[error("GGUF metadata {key} is malformed: {problem}")]
    Malformed { key: &'static str, problem: String },
    #[error(
        "tokenizer.ggml.model {model:?} is not supported (byte-level BPE \"gpt2\" and SentencePiece \"llama\" are)"
    )]
    UnsupportedModel { model: String },
}

/// Builds the byte-level BPE tokenizer a GGUF file describes in its metadata.
pub fn tokenizer_from_gguf(
    content: &gguf_file::Content,
) -> std::result::Result<Tokenizer, GgufTokenizerError> {
    let get = |key: &'static str| {
        content
            .metadata
            .get(key)
            .ok_or(GgufTokenizerError::Missing { key })
    };
    let malformed = |key: &'static str| {
        move |e: candle_core::Error| GgufTokenizerError::Malformed {
            key,
            problem: e.to_string(),
        }
    };
    const MODEL: &str = "tokenizer.ggml.model";
    const TOKENS: &str = "tokenizer.ggml.tokens";
    const MERGES: &str = "tokenizer.ggml.merges";
    let model = get(MODEL)?.to_string().map_err(malformed(MODEL))?;
    let tokens: Vec<String> = get(TOKENS)?
        .to_vec()
        .map_err(malformed(TOKENS))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(malformed(TOKENS)))
        .collect::<std::result::Result<_, _>>()?;
    let token_types: Vec<i32> = content
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|values| values.iter().map(|v| v.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    match model.as_str() {
        "gpt2" => {}
        "llama" => return sentencepiece_from_gguf(content, tokens, &token_types),
        _ => {
            return Err(GgufTokenizerError::UnsupportedModel {
                model: model.clone(),
            });
        }
    }
    let merges: Vec<(String, String)> = get(MERGES)?
        .to_vec()
        .map_err(malformed(MERGES))?
        .iter()
        .map(|v| {
            let text = v.to_string().map_err(malformed(MERGES))?;
            let (a, b) = text
                .split_once(' ')
                .ok_or_else(|| GgufTokenizerError::Malformed {
                    key: MERGES,
                    problem: format!("merge {text:?} is not two tokens"),
                })?;
            Ok((a.to_owned(), b.to_owned()))
        })
        .collect::<std::result::Result<_, GgufTokenizerError>>()?;
    let vocab = vocabulary(&tokens);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| GgufTokenizerError::Malformed {
            key: MERGES,
            problem: e.to_string(),
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    // Digits one by one, then byte-level without a prefix space: what SmolLM-style ("smollm")
    // and GPT-2-style files expect. A prefix space would change every prompt's first token.
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::default().add_prefix_space(false)),
    ]))));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    add_control_tokens(&mut tokenizer, &tokens, &token_types);
    Ok(tokenizer)
}

/// Each piece's id is its place in the GGUF list.
fn vocabulary(tokens: &[String]) -> tokenizers::models::bpe::Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// Control tokens (type 3) are special: never split, skipped when decoding.
fn add_control_tokens(tokenizer: &mut Tokenizer, tokens: &[String], token_types: &[i32]) {
    let special: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| token_types.get(*i) == Some(&TOKEN_CONTROL))
        .map(|(_, t)| AddedToken::from(t.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&special);
}

/// The merges of a SentencePiece BPE vocabulary, which GGUF stores as pieces and scores
/// only: every split of a normal piece into two pieces of the vocabulary is a merge, ranked
/// by the merged piece's score (highest first), as SentencePiece merges the best-scoring
/// adjacent pair first.
pub fn merges_from_scores(
    tokens: &[String],
    scores: &[f32],
    token_types: &[i32],
) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut ranked: Vec<(f32, usize, usize, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if token_types.get(id).is_some_and(|t| *t != TOKEN_NORMAL) {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                ranked.push((score, id, l.max(r), left.to_owned(), right.to_owned()));
            }
        }
    }
    // Best score first; ties by the merged piece's id, then by the later of the two parts.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}

/// A SentencePiece BPE tokenizer (`tokenizer.ggml.model` "llama": Gemma, Llama 2) from the
/// pieces and scores of a GGUF file: spaces become `▁`, unknown characters fall back to
/// `<0xNN>` byte pieces, and decoding reverses both.
fn sentencepiece_from_gguf(
    content: &gguf_file::Content,
    tokens: Vec<String>,
    token_types: &[i32],
) -> std::result::Result<Tokenizer, GgufTokenizerError> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as Decoders;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::{Prepend, Replace, Sequence as Normalizers};
    use tokenizers::{DecoderWrapper, NormalizerWrapper};
    const SCORES: &str = "tokenizer.ggml.scores";
    let malformed = |key: &'static str| {
        move |e: candle_core::Error| GgufTokenizerError::Malformed {
            key,
            problem: e.to_string(),
        }
    };
    let scores: Vec<f32> = content
        .metadata
        .get(SCORES)
        .ok_or(GgufTokenizerError::Missing { key: SCORES })?
        .to_vec()
        .map_err(malformed(SCORES))?
        .iter()
        .map(|v| v.to_f32().map_err(malformed(SCORES)))
        .collect::<std::result::Result<_, _>>()?;
    let flag = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false)
    };
    let space_prefix = flag("tokenizer.ggml.add_space_prefix");
    let merges = merges_from_scores(&tokens, &scores, token_types);
    let unknown = content
        .metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|id| tokens.get(id as usize).cloned())
        .unwrap_or_else(|| "<unk>".into());
    let vocab = vocabulary(&tokens);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unknown)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| GgufTokenizerError::Malformed {
            key: SCORES,
            problem: e.to_string(),
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    let spaces = Replace::new(" ", "▁").map_err(|e| GgufTokenizerError::Malformed {
        key: SCORES,
        problem: e.to_string(),
    })?;
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new("▁".into())));
    }
    normalizers.push(NormalizerWrapper::Replace(spaces));
    tokenizer.with_normalizer(Some(Normalizers::new(normalizers)));
    let unspace = Replace::new("▁", " ").map_err(|e| GgufTokenizerError::Malformed {
        key: SCORES,
        problem: e.to_string(),
    })?;
    let mut decoders = vec![
        DecoderWrapper::Replace(unspace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tokenizer.with_decoder(Some(Decoders::new(decoders)));
    add_control_tokens(&mut tokenizer, &tokens, token_types);
    // User-defined pieces (Gemma's <start_of_turn>, …) are matched whole too.
    let user: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| token_types.get(*i) == Some(&TOKEN_USER_DEFINED))
        .map(|(_, t)| AddedToken::from(t.clone(), false))
        .collect();
    tokenizer.add_tokens(&user);
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;
    use std::io::Cursor;

    /// A GGUF file's metadata alone, read back as the loader reads it.
    fn metadata_only(metadata: Vec<(&str, Value)>) -> gguf_file::Content {
        let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let mut out = Cursor::new(Vec::new());
        gguf_file::write(&mut out, &refs, &[]).unwrap();
        gguf_file::Content::read(&mut Cursor::new(out.into_inner())).unwrap()
    }

    #[test]
    fn a_sentencepiece_vocabulary_merges_by_score_and_falls_back_to_bytes() {
        let pieces = [
            ("<unk>", 2, 0.0),
            ("<bos>", 3, 0.0),
            ("<0xC3>", 6, 0.0),
            ("<0xA9>", 6, 0.0),
            ("▁", 1, -1.0),
            ("a", 1, -2.0),
            ("b", 1, -3.0),
            ("c", 1, -4.0),
            ("ab", 1, -5.0),
            ("▁a", 1, -6.0),
            ("▁ab", 1, -7.0),
            ("<start_of_turn>", 4, 0.0),
        ];
        let strings = |f: fn(&(&str, i32, f32)) -> Value| pieces.iter().map(f).collect();
        let content = metadata_only(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                Value::Array(strings(|p| Value::String(p.0.into()))),
            ),
            (
                "tokenizer.ggml.token_type",
                Value::Array(strings(|p| Value::I32(p.1))),
            ),
            (
                "tokenizer.ggml.scores",
                Value::Array(strings(|p| Value::F32(p.2))),
            ),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ]);
        let tokenizer = tokenizer_from_gguf(&content).unwrap();
        let text = "<bos>ab ab c é<start_of_turn>";
        let encoding = tokenizer.encode(text, true).unwrap();
        assert_eq!(
            encoding.get_tokens(),
            [
                "<bos>",
                "ab",
                "▁ab",
                "▁",
                "c",
                "▁",
                "<0xC3>",
                "<0xA9>",
                "<start_of_turn>"
            ]
        );
        assert_eq!(
            tokenizer.decode(encoding.get_ids(), true).unwrap(),
            "ab ab c é<start_of_turn>",
            "control pieces are skipped, user-defined ones kept, bytes joined"
        );
        // "ab" (score -5) merges before "▁a" (-6): the better-scored piece first.
        let types: Vec<i32> = pieces.iter().map(|p| p.1).collect();
        let scores: Vec<f32> = pieces.iter().map(|p| p.2).collect();
        let tokens: Vec<String> = pieces.iter().map(|p| p.0.to_owned()).collect();
        let merges = merges_from_scores(&tokens, &scores, &types);
        assert_eq!(
            merges,
            [
                ("a".to_owned(), "b".to_owned()),
                ("▁".to_owned(), "a".to_owned()),
                ("▁".to_owned(), "ab".to_owned()),
                ("▁a".to_owned(), "b".to_owned()),
            ]
        );
    }
}
