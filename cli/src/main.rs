//! `imprint`: the command-line client.
//!
//! Today it carries the offline store tools (`imprint store ...`), which
//! work directly on a store directory with no daemon, like `qemu-img` does
//! on image files. The API commands (`image`, `op`, `host`, `account`)
//! arrive with the daemon.

mod exit;
mod output;
mod progress;
mod store_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// imprint: capture and deploy images of libvirt/KVM guests.
#[derive(Debug, Parser)]
#[command(name = "imprint", version, about, propagate_version = true)]
struct Cli {
    /// Output format.
    #[arg(short = 'o', long = "output-format", global = true, value_enum, default_value_t = output::Format::Table)]
    format: output::Format,
    /// No progress lines on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work directly on a store directory (no daemon needed).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let ctx = output::Ctx {
        format: cli.format,
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Store(cmd) => store_cmd::run(cmd, &ctx),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("imprint: error: {e:#}");
            ExitCode::from(exit::code_for(&e))
        }
    }
}
