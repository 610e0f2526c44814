//! `n0m1_model_service`: see n0m1-models' `service`.

fn main() -> std::process::ExitCode {
    n0m1_models::service_main()
}
