//! `imprint host ...`: the registered hosts, and the sites they form.

use anyhow::Result;
use clap::Subcommand;
use imprint_proto::v1 as pb;
use serde_json::json;

use crate::{
    client::Api,
    output::{self, Ctx},
};

/// `imprint host ...`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Registered hosts and whether their agent is alive.
    List,
    /// The sites (named stores) and how many hosts each has.
    Sites,
}

/// Run a host command.
pub async fn run(cmd: HostCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    match cmd {
        HostCommand::Sites => {
            let req = pb::ListSitesRequest {};
            let sites = api.images.list_sites(req).await?.into_inner().sites;
            let doc = json!({
                "sites": sites.iter().map(|s| json!({"name": s.name, "store": s.store, "hosts": s.hosts})).collect::<Vec<_>>(),
            });
            ctx.emit(&doc, || {
                let rows: Vec<Vec<String>> = sites
                    .iter()
                    .map(|s| vec![s.name.clone(), s.store.clone(), s.hosts.to_string()])
                    .collect();
                output::table(&["SITE", "STORE", "HOSTS"], &rows)
            })?;
            Ok(0)
        }
        HostCommand::List => {
            let req = pb::ListHostsRequest {};
            let hosts = api.hosts.list_hosts(req).await?.into_inner().hosts;
            let doc = json!({
                "hosts": hosts.iter().map(|h| json!({
                    "name": h.name, "agent_endpoint": h.agent_endpoint, "libvirt_uri": h.libvirt_uri,
                    "version": h.version, "cpus": h.cpus, "memory_bytes": h.memory_bytes,
                    "site": h.site, "alive": h.alive, "last_heartbeat_unix": h.last_heartbeat_unix,
                })).collect::<Vec<_>>(),
            });
            ctx.emit(&doc, || {
                let rows: Vec<Vec<String>> = hosts
                    .iter()
                    .map(|h| {
                        vec![
                            h.name.clone(),
                            if h.alive { "alive" } else { "silent" }.into(),
                            h.agent_endpoint.clone(),
                            h.version.clone(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "STATUS", "AGENT", "VERSION"], &rows)
            })?;
            Ok(0)
        }
    }
}
