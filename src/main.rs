//! The `driftwatch` binary: parse the command line, run, map errors to exit code 2.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = driftwatch::cli::Cli::parse();
    match driftwatch::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("driftwatch: error: {msg}");
            ExitCode::from(driftwatch::exit::ERROR)
        }
    }
}
