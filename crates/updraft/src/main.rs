//! The `updraft` binary: command line, configuration, wiring and exit codes.
//! This is the only crate that prints, reads the process environment directly, or
//! uses `anyhow`.

mod cli;
mod commands;
mod config;
mod context;
mod engine;
mod error;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    let overrides = match &cli.command {
        Command::Standalone(args) | Command::Webserver(args) => {
            config::Overrides { host: args.host.clone(), port: args.port }
        }
        _ => config::Overrides { host: None, port: None },
    };
    let service =
        matches!(cli.command, Command::Standalone(_) | Command::Scheduler | Command::Worker | Command::Webserver(_));
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(error) => {
            errln!("error: cannot read the working folder: {error}");
            return ExitCode::from(error::exit::FAILURE);
        }
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = match config::load(cli.config.as_deref(), &cwd, &env, overrides) {
        Ok(config) => config,
        Err(error) => {
            errln!("{}", error::render(&error));
            return ExitCode::from(error::exit::FAILURE);
        }
    };
    init_logging(service, config.log_level.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            errln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(error::exit::FAILURE);
        }
    };
    let ctx = context::Ctx::new(config, cwd);
    let outcome = runtime.block_on(commands::run(&ctx, cli.command));
    // Blocking reads of child pipes must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            errln!("{}", error::render(&error));
            ExitCode::from(error::exit::FAILURE)
        }
    }
}

/// Logs go to stderr. `UPDRAFT_LOG` (or `RUST_LOG`) wins over `logging.level`;
/// services log at `info` by default, one-shot commands only warnings.
fn init_logging(service: bool, configured: Option<&str>) {
    use std::io::IsTerminal;
    let filter = std::env::var("UPDRAFT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .or(configured.map(str::to_string))
        .unwrap_or_else(|| if service { "info" } else { "warn" }.to_string());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false);
    if service {
        builder.init();
    } else {
        builder.without_time().init();
    }
}
