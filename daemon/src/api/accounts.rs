//! `AccountService`: account administration over the API, for admin
//! accounts. The same operations as `imprintd account ...`, which works on
//! the catalog directly (and creates the first admin).

use imprint_proto::v1::{self as pb, account_service_server::AccountService};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    catalog::{Account, Catalog},
    error::DaemonError,
};

/// The service.
#[derive(Debug, Clone)]
pub struct Accounts {
    catalog: Catalog,
}

impl Accounts {
    /// Over `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }

    async fn admin<T>(&self, req: &Request<T>) -> Result<Account, DaemonError> {
        auth::admin(&self.catalog, req, "manage accounts and grants").await
    }

    async fn grant(
        &self,
        req: Request<pb::HostGrantRequest>,
        allow: bool,
    ) -> Result<Response<pb::Account>, Status> {
        self.admin(&req).await?;
        let r = req.into_inner();
        if allow {
            self.catalog.allow_host(&r.account, &r.host).await
        } else {
            self.catalog.disallow_host(&r.account, &r.host).await
        }?;
        Ok(Response::new(self.view(&r.account).await?))
    }

    async fn view(&self, name: &str) -> Result<pb::Account, DaemonError> {
        self.catalog
            .accounts()
            .await?
            .into_iter()
            .find(|(a, _, _)| a.name == name)
            .map(|(a, hosts, created)| to_pb(a, hosts, created))
            .ok_or_else(|| DaemonError::not_found(format!("no account named {name:?}")))
    }
}

fn to_pb(a: Account, hosts: Vec<String>, created_unix: i64) -> pb::Account {
    pb::Account {
        name: a.name,
        can_publish: a.can_publish,
        admin: a.is_admin,
        hosts,
        created_unix,
    }
}

#[tonic::async_trait]
impl AccountService for Accounts {
    async fn create_account(
        &self,
        req: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::AccountToken>, Status> {
        let who = self.admin(&req).await?;
        let r = req.into_inner();
        let (a, token) = self
            .catalog
            .create_account(&r.name, r.can_publish, r.admin)
            .await?;
        tracing::info!(account = %a.name, by = %who.name, admin = r.admin, "account created");
        Ok(Response::new(pb::AccountToken {
            account: Some(self.view(&a.name).await?),
            token,
        }))
    }

    async fn rotate_token(
        &self,
        req: Request<pb::AccountRequest>,
    ) -> Result<Response<pb::AccountToken>, Status> {
        let who = self.admin(&req).await?;
        let name = req.into_inner().name;
        let token = self.catalog.rotate_token(&name).await?;
        tracing::info!(account = %name, by = %who.name, "token rotated");
        Ok(Response::new(pb::AccountToken {
            account: Some(self.view(&name).await?),
            token,
        }))
    }

    async fn allow_host(
        &self,
        req: Request<pb::HostGrantRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        self.grant(req, true).await
    }

    async fn disallow_host(
        &self,
        req: Request<pb::HostGrantRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        self.grant(req, false).await
    }

    async fn list_accounts(
        &self,
        req: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        self.admin(&req).await?;
        let accounts = self
            .catalog
            .accounts()
            .await?
            .into_iter()
            .map(|(a, h, c)| to_pb(a, h, c))
            .collect();
        Ok(Response::new(pb::ListAccountsResponse { accounts }))
    }
}
