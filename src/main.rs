//! The `easel` command: the window with no subcommand; `generate` and `replay` headless.

mod cli;
mod cli_checks;
mod cli_models;
mod console;
mod logging;
mod progress;
mod ui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    easel_engine::engine::memory::limit_heap_arenas();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            console::note_line(format_args!("easel: {error:#}"));
            if error.downcast_ref::<cli::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
