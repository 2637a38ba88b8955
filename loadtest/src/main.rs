//! `sluice-loadtest`: see `lib.rs` and `README.md`.

fn main() -> std::process::ExitCode {
    sluice_loadtest::main()
}
