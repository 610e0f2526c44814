//! n0m1-models: the model components (`llm_processor`, `nano_instance`) wired to the candle
//! engine or to the model service (`service`, the `n0m1_model_service` binary), and the
//! `n0m1_model` tool (fixtures, listing, one-off generation).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use n0m1_core::Home;
use n0m1_core::exit_code;
use n0m1_llm::LlmError;
use n0m1_llm::generate::{Decoding, GenerationOptions};
use n0m1_llm::model::{LoadOptions, LoadedModel};
use n0m1_llm::resolve::{DEFAULT_MAIN_MODEL, DEFAULT_NANO_MODEL, ModelPlaces, resolve};
use n0m1_protocol::cli::CommonArgs;
use n0m1_protocol::generator::{GenerateError, Generator, Loaded, Unavailable};
use n0m1_protocol::model_service::{ModelSpec, ServiceGenerator};
use n0m1_protocol::nano::NanoOptions;
use n0m1_protocol::runtime::{Runtime, component_id_or};

pub mod service;
pub use service::service_main;

/// The engine as the protocol's `Generator`.
pub struct EngineGenerator {
    model: LoadedModel,
    options: GenerationOptions,
    /// Tokens generated so far, for the evaluation's per-summary figures.
    pub generated_tokens: usize,
}

impl Generator for EngineGenerator {
    fn describe(&self) -> String {
        self.model.description.clone()
    }
    fn complete(&mut self, system: Option<&str>, prompt: &str) -> Result<String, GenerateError> {
        let text = self.model.format_prompt(system, prompt);
        let completion =
            self.model
                .generate(&text, &self.options)
                .map_err(|error| match error {
                    LlmError::ContextFull { limit, .. } => GenerateError::ContextFull { limit },
                    other => GenerateError::Engine(Box::new(other)),
                })?;
        self.generated_tokens += completion.token_ids.len();
        Ok(completion.text)
    }
}

/// Flags of the model and how it runs, shared by the processor, nano instances and the tool.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A model folder, a .gguf file, a Hugging Face id in the cache, `default`, or `none`.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// CPU threads for the model (default: all cores on one or two, else all but one).
    #[arg(long)]
    pub threads: Option<usize>,
    /// `q8_0` quantizes the big matrices at load (faster, smaller).
    #[arg(long, value_parser = ["none", "q8_0"], default_value = "none")]
    pub quantize: String,
    /// A PEFT LoRA adapter folder merged into the weights at load.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Most tokens one completion may have.
    #[arg(
        long = "max_new_tokens",
        alias = "max-new-tokens",
        default_value_t = 48
    )]
    pub max_new_tokens: usize,
}

/// Model threads when `--threads` is not given: every core on one or two, else all but one,
/// so the supervisors and metric daemons always have a core.
pub fn default_threads(cores: usize) -> usize {
    if cores > 2 { cores - 1 } else { cores.max(1) }
}

/// Applies `--threads` (or `default_threads`) before the first tensor operation: candle
/// sizes its thread pool from RAYON_NUM_THREADS when it first runs, and never again.
#[allow(unsafe_code)]
pub fn set_threads(threads: Option<usize>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.filter(|t| *t > 0).or_else(|| {
        std::env::var_os("RAYON_NUM_THREADS")
            .is_none()
            .then(|| default_threads(cores))
    });
    if let Some(threads) = threads {
        // SAFETY: called from main before any other thread of this process exists, so no
        // thread can be reading the environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

/// The model a component names: with `models.shared` (the default) opened in the model
/// service, else resolved and loaded here. `Err` says why there is none (`--model none`, or
/// the engine's `LlmError`, which names the model, the places tried and the fix).
pub fn load_generator(args: &ModelArgs, default_id: &str, home: &Home) -> Loaded {
    if args.model == "none" {
        return Err(Unavailable::Disabled);
    }
    let config = n0m1_core::Config::load(&home.config_path()).unwrap_or_default();
    if config.models.shared {
        // Paths are the component's: the service runs elsewhere and resolves them as given.
        let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let model = if Path::new(&args.model).exists() {
            absolute(Path::new(&args.model))
                .to_string_lossy()
                .into_owned()
        } else {
            args.model.clone()
        };
        let spec = ModelSpec {
            model,
            default_model: default_id.to_owned(),
            lora: args.lora.as_deref().map(absolute),
            quantize: args.quantize == "q8_0",
        };
        let generator = ServiceGenerator::connect(&home.model_socket(), spec, args.max_new_tokens)?;
        let source = ModelSource::choose(
            generator.is_connected(),
            std::env::var_os(n0m1_core::home::ENV_COMPONENT_ID).is_some(),
            service_row_active(home),
        );
        if source == ModelSource::Service {
            if let Some(error) = generator.unreachable() {
                tracing::warn!("{error}; connecting again at the first completion");
            }
            return Ok(Box::new(generator));
        }
        tracing::info!(
            "no model service answers and none is supervised in this home; loading the model here"
        );
    }
    load_engine(args, default_id, home).map(|engine| Box::new(engine) as Box<dyn Generator>)
}

/// Where a model component with `models.shared` gets its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelSource {
    /// The model service's client (waiting for it while it restarts).
    Service,
    /// A copy of its own, as the original did (or digests when it cannot be loaded).
    OwnCopy,
}

impl ModelSource {
    /// A service that answers is always used. One that does not is waited for only by a
    /// component under a manager whose home supervises a service (it is restarting); a
    /// component run by hand, or in a home whose service row is inactive, would wait for
    /// nobody, so it loads the model itself.
    fn choose(service_answers: bool, under_manager: bool, service_row_active: bool) -> Self {
        if service_answers || (under_manager && service_row_active) {
            ModelSource::Service
        } else {
            ModelSource::OwnCopy
        }
    }
}

/// Whether an active `autorun_components` row of this home runs the model service. An
/// unreadable database counts as yes: the component then waits for the service, as before.
fn service_row_active(home: &Home) -> bool {
    let rows = n0m1_core::db::open(&home.db_path())
        .map_err(|error| error.to_string())
        .and_then(|conn| n0m1_core::components::all(&conn).map_err(|error| error.to_string()));
    match rows {
        Ok(rows) => rows.iter().any(|row| {
            row.desired_active && row.base_script_name == n0m1_core::schema::MODEL_SERVICE_SCRIPT
        }),
        Err(error) => {
            tracing::warn!(
                "cannot read the model service's row ({error}); waiting for the service"
            );
            true
        }
    }
}

/// `load_generator` without the box, for callers that read its counters.
pub fn load_engine(
    args: &ModelArgs,
    default_id: &str,
    home: &Home,
) -> Result<EngineGenerator, Unavailable> {
    if args.model == "none" {
        return Err(Unavailable::Disabled);
    }
    let unavailable = |error: LlmError| Unavailable::Load(Box::new(error));
    let config = n0m1_core::Config::load(&home.config_path()).unwrap_or_default();
    // Before the model's thread pool exists (it starts with the first tensor operation), so
    // every model thread inherits the lower priority; the database threads keep theirs.
    if let Err(error) = n0m1_core::process::lower_priority(config.models.nice) {
        tracing::warn!(
            "cannot lower the model's priority to nice {}: {error}",
            config.models.nice
        );
    }
    let path = service::locate(&args.model, default_id, home).map_err(unavailable)?;
    let options = LoadOptions {
        quantize: args.quantize == "q8_0",
        lora: args.lora.clone(),
    };
    let model = LoadedModel::load(&path, &options).map_err(unavailable)?;
    Ok(EngineGenerator {
        model,
        options: GenerationOptions {
            max_new_tokens: args.max_new_tokens,
            ..Default::default()
        },
        generated_tokens: 0,
    })
}

#[cfg(test)]
mod source_tests {
    use super::ModelSource::{self, OwnCopy, Service};

    #[test]
    fn where_a_shared_model_comes_from() {
        // (service answers, under a manager, service row active) -> source
        let table = [
            ((true, false, false), Service),
            ((true, true, false), Service),
            ((true, true, true), Service),
            ((false, true, true), Service),
            ((false, true, false), OwnCopy),
            ((false, false, true), OwnCopy),
            ((false, false, false), OwnCopy),
        ];
        for ((answers, managed, row), expected) in table {
            assert_eq!(
                ModelSource::choose(answers, managed, row),
                expected,
                "answers {answers}, under a manager {managed}, row active {row}"
            );
        }
    }
}

#[derive(Debug, Parser)]
#[command(version, about = "The main model of n0m1, driven by llm_notifications")]
struct ProcessorArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// The llm_io_config row and notifications this processor serves.
    #[arg(long = "llm_id", alias = "llm-id", default_value = n0m1_core::schema::MAIN_LLM_ID)]
    llm_id: String,
}

pub fn processor_main() -> ExitCode {
    let args = ProcessorArgs::parse();
    set_threads(args.model.threads);
    n0m1_core::logging::init("llm_processor", "info");
    exit_code::<anyhow::Error>((|| {
        let home = args.common.home()?;
        let runtime = Runtime::start(
            &home.db_path(),
            &component_id_or(&args.llm_id),
            &args.common.run_type,
        )?;
        let generator = load_generator(&args.model, DEFAULT_MAIN_MODEL, &home);
        n0m1_protocol::processor::run(runtime, &args.llm_id, generator)
    })())
}

#[derive(Debug, Parser)]
#[command(version, about = "A small model summarising one metric table")]
struct NanoArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long = "instance_id", alias = "instance-id", default_value = "default")]
    instance_id: String,
    /// The database file (default: the home's n0m1_agi.db).
    #[arg(long = "db_path", alias = "db-path")]
    db_path: Option<PathBuf>,
    #[arg(long = "metrics_table", alias = "metrics-table", default_value = n0m1_core::schema::SYSTEM_METRICS_LOG)]
    metrics_table: String,
    #[arg(long = "summary_table", alias = "summary-table", default_value = n0m1_core::schema::NANO_OUTPUTS)]
    summary_table: String,
    /// Seconds between pulls of the newest metric row.
    #[arg(long = "pull_interval", alias = "pull-interval", default_value_t = 5.0)]
    pull_interval: f64,
    /// Seconds between window summaries.
    #[arg(
        long = "summary_interval",
        alias = "summary-interval",
        default_value_t = 60.0
    )]
    summary_interval: f64,
    /// A text file with the system prompt, used when nano_prompts has none.
    #[arg(long = "system_prompt", alias = "system-prompt")]
    system_prompt: Option<PathBuf>,
    /// Rows kept in the window.
    #[arg(
        long = "context_window",
        alias = "context-window",
        default_value_t = 10
    )]
    context_window: usize,
    #[arg(long)]
    mode: Option<String>,
    /// Seconds between reminders while a metric stays above its threshold (0: none).
    #[arg(long = "alert_remind", alias = "alert-remind", default_value_t = 300.0)]
    alert_remind: f64,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        value.is_finite() && value > 0.0 && value <= 86_400.0,
        "{flag} must be between 0 and 86400 seconds, got {value}"
    );
    Ok(Duration::from_secs_f64(value))
}

pub fn nano_main() -> ExitCode {
    let args = NanoArgs::parse();
    set_threads(args.model.threads);
    n0m1_core::logging::init("nano_instance", "info");
    exit_code::<anyhow::Error>((|| {
        let home = args.common.home()?;
        let db_path = args.db_path.clone().unwrap_or_else(|| home.db_path());
        let component_id = format!("nano_instance_{}", args.instance_id);
        let runtime = Runtime::start(&db_path, &component_id, &args.common.run_type)?;
        let options = NanoOptions {
            instance_id: args.instance_id.clone(),
            metrics_table: args.metrics_table.clone(),
            summary_table: args.summary_table.clone(),
            pull_interval: seconds(args.pull_interval, "--pull_interval")?,
            summary_interval: seconds(args.summary_interval, "--summary_interval")?,
            context_window: args.context_window,
            system_prompt_file: args.system_prompt.clone(),
            mode: args.mode.clone(),
            alert_remind: {
                anyhow::ensure!(
                    args.alert_remind.is_finite() && args.alert_remind >= 0.0,
                    "--alert_remind must be 0 (no reminders) or a number of seconds, got {}",
                    args.alert_remind
                );
                args.alert_remind
            },
        };
        let generator = load_generator(&args.model, DEFAULT_NANO_MODEL, &home);
        n0m1_protocol::nano::run(runtime, options, generator)
    })())
}

#[derive(Debug, Parser)]
#[command(
    name = "n0m1_model",
    version,
    about = "n0m1's models: test fixtures, what is installed, one-off generation"
)]
struct ToolArgs {
    #[command(flatten)]
    home: n0m1_core::home::HomeArg,
    #[command(subcommand)]
    command: ToolCommand,
}

#[derive(Debug, Subcommand)]
enum ToolCommand {
    /// Write a test model (seeded weights, byte-level BPE tokenizer) into DIR (a .gguf path
    /// for `--arch llama-gguf`).
    Fixture {
        dir: PathBuf,
        #[arg(long, value_parser = ["gpt2", "llama", "llama-gguf"], default_value = "gpt2")]
        arch: String,
        /// `distilgpt2` writes a GPT-2 of distilgpt2's size, for benchmarks.
        #[arg(long, value_parser = ["tiny", "distilgpt2"], default_value = "tiny")]
        shape: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Time loading, prompt processing and greedy decoding; prints one JSON line.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt length in tokens (ids 0.. of the fixture vocabulary, repeated).
        #[arg(long, default_value_t = 64)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Timed runs after one untimed warm-up (as llama-bench does); medians are printed.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        repetitions: u32,
    },
    /// List the models in the home's models/ folder and in the Hugging Face cache.
    List,
    /// Download a model (config, tokenizer, safetensors weights) into the Hugging Face cache.
    Pull { id: String },
    /// Complete a prompt with a model.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        /// Sample with this temperature instead of greedy decoding.
        #[arg(long)]
        temperature: Option<f64>,
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn list(home: &Home) {
    let places = ModelPlaces::from_env(Some(home.models_dir()));
    let mut dirs = vec![home.models_dir()];
    dirs.extend(places.hub_caches.iter().cloned());
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            println!("{}: (none)", dir.display());
            continue;
        };
        println!("{}:", dir.display());
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .map(|n| {
                n.strip_prefix("models--")
                    .map_or(n.clone(), |id| id.replacen("--", "/", 1))
            })
            .collect();
        names.sort();
        for name in names {
            println!("  {name}");
        }
    }
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn bench(
    home: &Home,
    args: &ModelArgs,
    prompt_tokens: usize,
    new_tokens: usize,
    repetitions: u32,
) -> anyhow::Result<()> {
    let places = ModelPlaces::from_env(Some(home.models_dir()));
    let location = resolve(&args.model, DEFAULT_MAIN_MODEL, &places)?;
    let started = std::time::Instant::now();
    let mut model = LoadedModel::load(
        location.path(),
        &LoadOptions {
            quantize: args.quantize == "q8_0",
            lora: args.lora.clone(),
        },
    )?;
    let load_secs = started.elapsed().as_secs_f64();
    // From the process's start (exec) to a loaded model: what a user waits for.
    let ready_secs = n0m1_core::process::ProcStat::read(std::process::id() as i32)
        .zip(n0m1_core::process::uptime_seconds())
        .map_or(0.0, |(stat, uptime)| {
            uptime - stat.start_ticks as f64 / n0m1_core::process::clock_ticks_per_second() as f64
        });
    let prompt: Vec<u32> = (0..prompt_tokens as u32).map(|i| i % 256).collect();
    // One run: the prompt from position 0 (which overwrites the cache), then greedy decoding.
    let mut run = || -> anyhow::Result<(f64, f64, Vec<u32>)> {
        model.clear_cache()?;
        let started = std::time::Instant::now();
        let mut logits = model.forward(&prompt, 0)?;
        let prompt_secs = started.elapsed().as_secs_f64();
        let mut ids = Vec::with_capacity(new_tokens);
        let started = std::time::Instant::now();
        for step in 0..new_tokens {
            let next = n0m1_llm::gpt2::argmax(&logits)?;
            ids.push(next);
            if step + 1 < new_tokens {
                logits = model.forward(&[next], prompt_tokens + step)?;
            }
        }
        let decode_secs = started.elapsed().as_secs_f64();
        Ok((
            prompt_tokens as f64 / prompt_secs.max(1e-9),
            new_tokens.saturating_sub(1) as f64 / decode_secs.max(1e-9),
            ids,
        ))
    };
    let (_, _, ids) = run()?;
    let mut prompt_runs = Vec::new();
    let mut decode_runs = Vec::new();
    for _ in 0..repetitions {
        let (prompt, decode, again) = run()?;
        anyhow::ensure!(
            again == ids,
            "greedy ids changed between runs of the same prompt: {ids:?} then {again:?}"
        );
        prompt_runs.push(prompt);
        decode_runs.push(decode);
    }
    let median = |runs: &mut Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    };
    let list = |runs: &[f64]| {
        runs.iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{{\"load_s\": {load_secs:.3}, \"ready_s\": {ready_secs:.2}, \"prompt_tok_s\": {:.1}, \"decode_tok_s\": {:.1}, \"prompt_runs\": [{}], \"decode_runs\": [{}], \"peak_rss_mib\": {:.0}, \"ids\": {:?}}}",
        median(&mut prompt_runs),
        median(&mut decode_runs),
        list(&prompt_runs),
        list(&decode_runs),
        peak_rss_mib(),
        ids
    );
    Ok(())
}

pub fn tool_main() -> ExitCode {
    let args = ToolArgs::parse();
    if let ToolCommand::Generate { model, .. } | ToolCommand::Bench { model, .. } = &args.command {
        set_threads(model.threads);
    }
    n0m1_core::logging::init("n0m1_model", "warn");
    exit_code::<anyhow::Error>((|| {
        let home = args.home.resolve()?;
        match &args.command {
            ToolCommand::Fixture {
                dir,
                arch,
                shape,
                seed,
            } => {
                match (arch.as_str(), shape.as_str()) {
                    ("gpt2", "distilgpt2") => n0m1_llm::fixture::write_gpt2(
                        dir,
                        &n0m1_llm::fixture::distilgpt2_config(),
                        *seed,
                    )?,
                    ("gpt2", _) => n0m1_llm::fixture::write_tiny_gpt2(dir, *seed)?,
                    ("llama", _) => n0m1_llm::fixture::write_tiny_llama(dir, *seed)?,
                    _ => n0m1_llm::fixture::write_tiny_llama_gguf(dir, *seed)?,
                }
                println!("wrote a {shape} {arch} (seed {seed}) to {}", dir.display());
            }
            ToolCommand::Bench {
                model,
                prompt_tokens,
                new_tokens,
                repetitions,
            } => bench(&home, model, *prompt_tokens, *new_tokens, *repetitions)?,
            ToolCommand::List => list(&home),
            ToolCommand::Pull { id } => {
                let places = ModelPlaces::from_env(Some(home.models_dir()));
                let cache = places.hub_caches.first().ok_or_else(|| {
                    anyhow::anyhow!("no Hugging Face cache folder: set HF_HUB_CACHE or HOME")
                })?;
                let snapshot = n0m1_llm::download::download(id, cache)
                    .map_err(|reason| anyhow::anyhow!("cannot pull {id}: {reason}"))?;
                println!("{id} is in {}", snapshot.display());
            }
            ToolCommand::Generate {
                model,
                prompt,
                temperature,
                top_p,
                seed,
            } => {
                let places = ModelPlaces::from_env(Some(home.models_dir()));
                let location = resolve(&model.model, DEFAULT_MAIN_MODEL, &places)?;
                let options = LoadOptions {
                    quantize: model.quantize == "q8_0",
                    lora: model.lora.clone(),
                };
                let mut loaded = LoadedModel::load(location.path(), &options)?;
                let decoding = match temperature {
                    Some(t) => Decoding::Sample {
                        temperature: *t,
                        top_p: *top_p,
                        seed: *seed,
                    },
                    None => Decoding::Greedy,
                };
                let text = loaded.format_prompt(None, prompt);
                let completion = loaded.generate(
                    &text,
                    &GenerationOptions {
                        max_new_tokens: model.max_new_tokens,
                        decoding,
                        ..Default::default()
                    },
                )?;
                println!("{}", completion.text);
                eprintln!(
                    "{} prompt tokens, {} generated ({:?}); ids {:?}",
                    completion.prompt_tokens,
                    completion.token_ids.len(),
                    completion.stop,
                    completion.token_ids
                );
            }
        }
        Ok(())
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_threads_leave_a_core_free_on_machines_with_more_than_two() {
        assert_eq!([1, 2, 3, 4, 16].map(default_threads), [1, 2, 2, 3, 15]);
    }
}
