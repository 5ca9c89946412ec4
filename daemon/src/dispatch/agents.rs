//! The only place that dials agents: their client pool (TLS or the local
//! socket), liveness by heartbeat, sending requests and cancels.

use super::*;

/// Seconds between agent heartbeats; a host is alive while its last one is
/// younger than three intervals.
pub const HEARTBEAT_INTERVAL_SECONDS: u32 = 10;

impl Dispatcher {
    /// A client for the agent of `host` (connected lazily, reused).
    pub fn agent(&self, host: &HostRow) -> Result<AgentServiceClient<Channel>, DaemonError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&host.agent_endpoint) {
            return Ok(c.clone());
        }
        let bad = |e: &dyn std::fmt::Display| {
            DaemonError::wrong_state(format!(
                "host {} registered agent endpoint {:?}: {e}",
                host.name, host.agent_endpoint
            ))
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(host.agent_endpoint.clone())
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        match (&self.agent_tls, AgentScheme::of(&host.agent_endpoint)) {
            // The socket's file mode is the credential.
            (_, Some(AgentScheme::Unix)) => {}
            (Some(t), Some(AgentScheme::Https)) => {
                endpoint = endpoint.tls_config(t.clone()).map_err(|e| bad(&e))?;
            }
            (None, Some(AgentScheme::Https)) => {
                return Err(bad(
                    &"it is https, but this daemon has no TLS configuration",
                ));
            }
            (_, None) => return Err(bad(&AgentScheme::RULE)),
        }
        let c = AgentServiceClient::new(endpoint.connect_lazy());
        clients.insert(host.agent_endpoint.clone(), c.clone());
        Ok(c)
    }

    /// Whether `host` sent a heartbeat recently.
    pub fn alive(host: &HostRow) -> bool {
        now() - host.last_heartbeat_unix < 3 * i64::from(HEARTBEAT_INTERVAL_SECONDS)
    }

    pub(super) async fn send(
        &self,
        host: &HostRow,
        req: &AgentRequest,
    ) -> Result<pb::AgentOperation, DaemonError> {
        let mut c = self.agent(host)?;
        let call = async {
            match req {
                AgentRequest::Capture(r) => c.capture(r.clone()).await,
                AgentRequest::Deploy(r) => c.deploy(r.clone()).await,
                AgentRequest::Import(r) => c.import(r.clone()).await,
                AgentRequest::Export(r) => c.export(r.clone()).await,
                AgentRequest::Copy(r) => c.copy(r.clone()).await,
                AgentRequest::Lint(r) => c.lint_image(r.clone()).await,
                AgentRequest::DeleteGuest(r) => c.delete_guest(r.clone()).await,
            }
        };
        match tokio::time::timeout(SEND_TIMEOUT, call).await {
            Ok(r) => r
                .map(tonic::Response::into_inner)
                .map_err(|s| DaemonError::from_agent(&host.name, s)),
            Err(_) => Err(DaemonError::new(
                ErrorKind::TimedOut,
                format!(
                    "the agent on host {} did not answer within {} s",
                    host.name,
                    SEND_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    pub(super) async fn agent_cancel(&self, host: &HostRow, id: &str) -> Result<(), DaemonError> {
        let mut c = self.agent(host)?;
        c.cancel_operation(pb::GetOperationRequest {
            operation_id: id.to_string(),
        })
        .await
        .map(|_| ())
        .map_err(|s| DaemonError::from_agent(&host.name, s))
    }
}

/// How the daemon may reach an agent: never plaintext over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentScheme {
    /// `unix:///PATH`: the agent's socket on this machine (mode 0660).
    Unix,
    /// `https://HOST:PORT`: mutual TLS.
    Https,
}

impl AgentScheme {
    /// What agent endpoints may be.
    pub const RULE: &str = "agent endpoints are unix:///PATH (a local socket) or https://HOST:PORT (mutual TLS); agents never serve plaintext TCP";

    /// The scheme of `endpoint`, if it is one of ours.
    pub fn of(endpoint: &str) -> Option<Self> {
        if endpoint.starts_with("unix:") {
            Some(Self::Unix)
        } else if endpoint.starts_with("https://") {
            Some(Self::Https)
        } else {
            None
        }
    }
}
