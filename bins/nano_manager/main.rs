//! `nano_manager`: the generic manager for the rows whose `manager_affinity` is `nano_manager`.

fn main() -> std::process::ExitCode {
    n0m1_supervisor::cli::manager_main(n0m1_core::schema::NANO_MANAGER)
}
