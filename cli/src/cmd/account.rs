//! `imprint account ...`: accounts, their tokens and the hosts they may
//! use (admin accounts only).

use anyhow::Result;
use clap::Subcommand;
use imprint_proto::v1 as pb;
use serde_json::{Value, json};

use crate::{
    client::Api,
    output::{self, Ctx},
};

/// `imprint account ...` (admin accounts only).
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account; prints its API token once.
    Create {
        name: String,
        /// May make images public.
        #[arg(long)]
        can_publish: bool,
        /// May administer accounts, use every host, see every operation.
        #[arg(long)]
        admin: bool,
    },
    /// Replace an account's token; prints the new one.
    Token { name: String },
    /// Let an account use a host (`*`: every host).
    AllowHost { name: String, host: String },
    /// Take a host away from an account.
    DisallowHost { name: String, host: String },
    /// Every account.
    List,
}

fn account_json(a: &pb::Account) -> Value {
    json!({
        "name": a.name, "can_publish": a.can_publish, "admin": a.admin,
        "hosts": a.hosts, "created_unix": a.created_unix,
    })
}

fn account_row(a: &pb::Account) -> Vec<String> {
    vec![
        a.name.clone(),
        if a.admin {
            "admin"
        } else if a.can_publish {
            "publisher"
        } else {
            "user"
        }
        .into(),
        if a.admin {
            "*".into()
        } else {
            a.hosts.join(",")
        },
    ]
}

/// `allow-host` (`allow`) or `disallow-host`.
async fn grant(api: &mut Api, ctx: &Ctx, name: String, host: String, allow: bool) -> Result<u8> {
    let req = pb::HostGrantRequest {
        account: name,
        host,
    };
    let a = if allow {
        api.accounts.allow_host(req).await
    } else {
        api.accounts.disallow_host(req).await
    }?
    .into_inner();
    ctx.emit(&account_json(&a), || {
        output::table(&["NAME", "ROLE", "HOSTS"], &[account_row(&a)])
    })?;
    Ok(0)
}

/// An account and its new token; the token alone in table mode.
fn print_token(ctx: &Ctx, t: pb::AccountToken) -> Result<u8> {
    let a = t.account.unwrap_or_default();
    let doc = json!({"account": account_json(&a), "token": t.token});
    // The token alone on stdout in table mode, so scripts can capture it.
    ctx.emit(&doc, || format!("{}\n", t.token))?;
    Ok(0)
}

/// Run an account command.
pub async fn run(cmd: AccountCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    match cmd {
        AccountCommand::Create {
            name,
            can_publish,
            admin,
        } => {
            let req = pb::CreateAccountRequest {
                name,
                can_publish,
                admin,
            };
            let t = api.accounts.create_account(req).await?.into_inner();
            print_token(ctx, t)
        }
        AccountCommand::Token { name } => {
            let req = pb::AccountRequest { name };
            let t = api.accounts.rotate_token(req).await?.into_inner();
            print_token(ctx, t)
        }
        AccountCommand::AllowHost { name, host } => grant(api, ctx, name, host, true).await,
        AccountCommand::DisallowHost { name, host } => grant(api, ctx, name, host, false).await,
        AccountCommand::List => {
            let req = pb::ListAccountsRequest {};
            let list = api.accounts.list_accounts(req).await?.into_inner().accounts;
            let doc = json!({"accounts": list.iter().map(account_json).collect::<Vec<_>>()});
            ctx.emit(&doc, || {
                let rows: Vec<Vec<String>> = list.iter().map(account_row).collect();
                output::table(&["NAME", "ROLE", "HOSTS"], &rows)
            })?;
            Ok(0)
        }
    }
}
