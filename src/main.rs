//! The `fgo` command line: parse arguments, run the library, print results, map errors to
//! exit codes (0 success, 2 bad input or failure).
//!
//! Every error is printed as one line with control characters escaped (names read from
//! files cannot drive the terminal). A reader that closes standard output early (`fgo
//! report --json | head -1`) ends the program quietly with status 0, as in other Unix
//! filters.

use std::process::ExitCode;

use clap::Parser;

#[macro_use]
mod cli;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) if !err.use_stderr() => {
            // --help and --version: print and succeed.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // clap adds usage lines after the message; the message alone is the error.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("error: invalid arguments");
            let message = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {}", fgo::error::printable(message));
            return ExitCode::from(2);
        }
    };
    cli::init_logging(args.verbose, args.quiet);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if cli::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", fgo::error::printable(&chain.join(": ")));
            ExitCode::from(2)
        }
    }
}
