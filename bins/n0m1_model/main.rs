//! `n0m1_model`: see n0m1-models.

fn main() -> std::process::ExitCode {
    n0m1_models::tool_main()
}
