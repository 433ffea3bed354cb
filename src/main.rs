//! The `driftwatch` binary: parse the command line, run, map errors to exit code 2.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = driftwatch::cli::Cli::parse();
    match driftwatch::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // thiserror messages already embed their source; only add causes not yet said.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            let msg = msg.replace('\n', " ");
            eprintln!("driftwatch: error: {msg}");
            ExitCode::from(driftwatch::util::exit::ERROR)
        }
    }
}
