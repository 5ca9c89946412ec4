//! `imprint`: the command-line client.
//!
//! - `imprint image|op|host|account ...` call the control daemon's API (endpoint
//!   and token from flags, `IMPRINT_ENDPOINT`/`IMPRINT_TOKEN`, or the
//!   config file, in that order).
//! - `imprint store ...` works directly on a store directory with no
//!   daemon, like `qemu-img` does on image files.
//! - `imprint completions SHELL` and `imprint man` print shell completions
//!   and the man page, generated from the same definitions.

mod client;
mod cmd;
mod enum_names;
mod exit;
mod follow;
mod output;
mod parse;
mod progress;

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
    Image(cmd::image::ImageCommand),
    /// Operations: list, show, watch, cancel.
    #[command(subcommand)]
    Op(cmd::op::OpCommand),
    /// Hosts and their agents.
    #[command(subcommand)]
    Host(cmd::host::HostCommand),
    /// Hardware profiles (flavors) for deploys and imports.
    #[command(subcommand)]
    Profile(cmd::profile::ProfileCommand),
    /// Guests and the accounts that own them.
    #[command(subcommand)]
    Guest(cmd::guest::GuestCommand),
    /// Accounts and their tokens (admin accounts only).
    #[command(subcommand)]
    Account(cmd::account::AccountCommand),
    /// Work directly on a store directory (no daemon needed).
    #[command(subcommand)]
    Store(cmd::store::StoreCommand),
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
    let conn = &cli.conn;
    let ctx = &ctx;
    let result = match cli.command {
        Command::Store(c) => cmd::store::run(c, ctx),
        Command::Image(c) => daemon(conn, async |api| cmd::image::run(c, api, ctx).await),
        Command::Op(c) => daemon(conn, async |api| cmd::op::run(c, api, ctx).await),
        Command::Host(c) => daemon(conn, async |api| cmd::host::run(c, api, ctx).await),
        Command::Account(c) => daemon(conn, async |api| cmd::account::run(c, api, ctx).await),
        Command::Guest(c) => daemon(conn, async |api| cmd::guest::run(c, api, ctx).await),
        Command::Profile(c) => daemon(conn, async |api| cmd::profile::run(c, api, ctx).await),
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

/// Run an API command on a one-thread runtime.
fn daemon(
    conn: &client::Conn,
    f: impl AsyncFnOnce(&mut client::Api) -> anyhow::Result<u8>,
) -> anyhow::Result<u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(conn.call(f)))
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
