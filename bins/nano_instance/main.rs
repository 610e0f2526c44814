//! `nano_instance`: see n0m1-models.

fn main() -> std::process::ExitCode {
    n0m1_models::nano_main()
}
