//! The `spool` command: dev | serve | worker | migrate | bench | token.

mod bench;
mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    // Logging starts once the settings (which choose its format) are resolved: see `cli::run`.
    match cli::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
