//! The `airlock` binary: parses flags, builds stores, calls the library, renders the result and
//! picks the exit code (0 done, 1 failed, 2 usage error). Everything else lives in the
//! `airlock-*` crates.

mod args;
mod artifact;
mod commands;
mod demo;
mod discover;
mod gate;
mod output;
mod progress;
mod sync;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    init_logging(cli.common.verbose);
    let json = cli.common.output == args::Output::Json;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            output::error(&anyhow::Error::new(error).context("cannot start the async runtime"), None);
            return ExitCode::from(1);
        }
    };
    // The command runs as a task on the workers, not on the main thread: the worker that reads
    // an answer polls the command at once instead of waking another thread for it (a warm sync,
    // ninety small requests, takes ~3% less time).
    let outcome = runtime.block_on(async {
        match tokio::spawn(commands::run(cli)).await {
            Ok(outcome) => outcome,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    });
    commands::save_tag_cache();
    match outcome {
        Ok(code) => code,
        Err(failure) => {
            output::error(&failure.error, failure.hint.as_deref());
            // With `-o json` a failure is a JSON document on stdout too: scripts never parse stderr.
            if json {
                output::json_error(&failure.error, failure.hint.as_deref(), failure.exit_code);
            }
            ExitCode::from(failure.exit_code)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("AIRLOCK_LOG").ok().filter(|f| !f.is_empty()).unwrap_or_else(|| default.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
