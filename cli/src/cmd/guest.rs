//! `imprint guest ...`: guests and the accounts that own them.
//!
//! Capturing or deleting a guest needs to own it. Guests deployed through imprint
//! belong to the deploying account; an admin assigns the others (one by
//! one, or every unowned guest of a host with `--all-unowned`).

use anyhow::Result;
use clap::Subcommand;
use imprint_proto::v1 as pb;
use serde_json::{Value, json};

use crate::{
    client::Api,
    follow::op_result,
    output::{self, Ctx},
};

/// `imprint guest ...`.
#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Your guests on a host (admins: every guest, with its owner).
    List {
        /// The host.
        #[arg(long)]
        host: String,
    },
    /// Give guests of HOST to ACCOUNT (admins).
    Assign {
        host: String,
        /// Guest names or UUIDs.
        guests: Vec<String>,
        /// The account that will own them.
        #[arg(long)]
        account: String,
        /// Also every guest of the host that nobody owns (adopt a fleet).
        #[arg(long)]
        all_unowned: bool,
    },
    /// Take a guest of HOST from its owner (admins).
    Unassign { host: String, guest: String },
    /// Delete a guest of HOST you own (admins: any): forced off if it
    /// runs, its pool volumes deleted, undefined. Disks outside storage
    /// pools are left (the result names them).
    Delete {
        host: String,
        /// Guest name or UUID.
        guest: String,
        /// Idempotency key.
        #[arg(long)]
        request_id: Option<String>,
        /// Wait until done, with progress; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
    },
}

fn power_name(p: i32) -> &'static str {
    match pb::PowerState::try_from(p) {
        Ok(pb::PowerState::Running) => "running",
        Ok(pb::PowerState::ShutOff) => "shut off",
        Ok(pb::PowerState::Paused) => "paused",
        Ok(pb::PowerState::Other) => "other",
        Ok(pb::PowerState::Unspecified) | Err(_) => "",
    }
}

fn guest_json(g: &pb::HostGuest) -> Value {
    json!({
        "host": g.host, "name": g.name, "uuid": g.uuid,
        "power_state": power_name(g.power_state), "owner": g.owner,
    })
}

fn emit(ctx: &Ctx, guests: &[pb::HostGuest]) -> Result<u8> {
    let doc = json!({ "guests": guests.iter().map(guest_json).collect::<Vec<_>>() });
    ctx.emit(&doc, || {
        let rows: Vec<Vec<String>> = guests
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    power_name(g.power_state).into(),
                    if g.owner.is_empty() {
                        "-".into()
                    } else {
                        g.owner.clone()
                    },
                    g.uuid.clone(),
                ]
            })
            .collect();
        output::table(&["NAME", "POWER", "OWNER", "UUID"], &rows)
    })?;
    Ok(0)
}

/// Run a guest command.
pub async fn run(cmd: GuestCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    match cmd {
        GuestCommand::List { host } => {
            let guests = api
                .guests
                .list_guests(pb::ListHostGuestsRequest { host })
                .await?
                .into_inner()
                .guests;
            emit(ctx, &guests)
        }
        GuestCommand::Assign {
            host,
            guests,
            account,
            all_unowned,
        } => {
            let guests = api
                .guests
                .assign_guests(pb::AssignGuestsRequest {
                    host,
                    guests,
                    account,
                    all_unowned,
                })
                .await?
                .into_inner()
                .guests;
            emit(ctx, &guests)
        }
        GuestCommand::Unassign { host, guest } => {
            let g = api
                .guests
                .unassign_guest(pb::UnassignGuestRequest { host, guest })
                .await?
                .into_inner();
            emit(ctx, &[g])
        }
        GuestCommand::Delete {
            host,
            guest,
            request_id,
            wait,
        } => {
            let op = api
                .guests
                .delete_guest(pb::DeleteGuestRequest {
                    request_id: request_id.unwrap_or_default(),
                    host,
                    guest,
                })
                .await?
                .into_inner();
            op_result(api, ctx, op, wait).await
        }
    }
}
