//! The `easel` command: the window with no subcommand; `generate` and `replay` headless.

mod cli;
mod cli_models;
mod logging;
mod ui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("easel: {error:#}");
            ExitCode::FAILURE
        }
    }
}
