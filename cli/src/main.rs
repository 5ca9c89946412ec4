//! `imprint`: the command-line client.
//!
//! - `imprint image|op|host|account ...` call the control daemon's API (endpoint
//!   and token from flags, `IMPRINT_ENDPOINT`/`IMPRINT_TOKEN`, or the
//!   config file, in that order).
//! - `imprint store ...` works directly on a store directory with no
//!   daemon, like `qemu-img` does on image files.
//! - `imprint completions SHELL` and `imprint man` print shell completions
//!   and the man page, generated from the same definitions.

mod api_cmd;
mod client;
mod exit;
mod guest_cmd;
mod output;
mod profile_cmd;
mod progress;
mod store_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
    #[command(flatten)]
    conn: client::Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Images: capture, deploy, list, share, publish, delete...
    #[command(subcommand)]
    Image(api_cmd::ImageCommand),
    /// Operations: list, show, watch, cancel.
    #[command(subcommand)]
    Op(api_cmd::OpCommand),
    /// Hosts and their agents.
    #[command(subcommand)]
    Host(api_cmd::HostCommand),
    /// Hardware profiles (flavors) for deploys and imports.
    #[command(subcommand)]
    Profile(profile_cmd::ProfileCommand),
    /// Guests and the accounts that own them.
    #[command(subcommand)]
    Guest(guest_cmd::GuestCommand),
    /// Accounts and their tokens (admin accounts only).
    #[command(subcommand)]
    Account(api_cmd::AccountCommand),
    /// Work directly on a store directory (no daemon needed).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
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
    let api = |f: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<u8>>>>| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(f))
    };
    let result = match cli.command {
        Command::Store(cmd) => store_cmd::run(cmd, &ctx),
        Command::Image(cmd) => api(Box::pin(api_cmd::image(cmd, &cli.conn, &ctx))),
        Command::Op(cmd) => api(Box::pin(api_cmd::op(cmd, &cli.conn, &ctx))),
        Command::Host(cmd) => api(Box::pin(api_cmd::host(cmd, &cli.conn, &ctx))),
        Command::Account(cmd) => api(Box::pin(api_cmd::account(cmd, &cli.conn, &ctx))),
        Command::Guest(cmd) => api(Box::pin(guest_cmd::run(cmd, &cli.conn, &ctx))),
        Command::Profile(cmd) => api(Box::pin(profile_cmd::run(cmd, &cli.conn, &ctx))),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "imprint",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map(|()| 0)
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("imprint: error: {} ({:?})", s.message(), s.code()),
                None => eprintln!("imprint: error: {e:#}"),
            }
            ExitCode::from(exit::code_for(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (argument ids, conflicts) on every
    /// subcommand.
    #[test]
    fn command_definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
