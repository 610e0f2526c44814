//! `llm_processor`: see n0m1-models.

fn main() -> std::process::ExitCode {
    n0m1_models::processor_main()
}
