//! `mmctl` binary: parse the command line, run the command, exit with the error's code.

use std::process::ExitCode;

use clap::Parser;
use mmctl::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match mmctl::commands::run(&cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
