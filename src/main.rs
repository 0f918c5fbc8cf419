//! The `parlor` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "parlor", version, about = "A voice-agent pipeline service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline spec and print what it declares.
    Check {
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { pipeline } => {
            let cwd = std::env::current_dir().unwrap_or_default();
            let spec = match pipeline {
                Some(p) => parlor::spec::PipelineSpec::load(&p, &cwd),
                None => parlor::spec::PipelineSpec::local_default(&cwd),
            };
            match spec {
                Ok(spec) => {
                    println!("{}: {} stages", spec.name, spec.stages.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
