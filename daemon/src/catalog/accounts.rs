//! Accounts, their tokens and the hosts they may use.

use super::*;

impl Catalog {
    /// Create an account; returns it with its API token (shown once).
    pub async fn create_account(
        &self,
        name: &str,
        can_publish: bool,
        is_admin: bool,
    ) -> Result<(Account, String)> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(CatalogError::Invalid(format!(
                "account name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let token = format!("imp_{}", uuid::Uuid::new_v4().simple());
        let r = sqlx::query("INSERT INTO accounts (id, name, token_sha256, can_publish, is_admin, created_unix) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&id)
            .bind(name)
            .bind(token_hash(&token))
            .bind(i32::from(can_publish))
            .bind(i32::from(is_admin))
            .bind(now())
            .execute(&self.pool)
            .await;
        match r {
            Ok(_) => Ok((
                Account {
                    id,
                    name: name.into(),
                    can_publish,
                    is_admin,
                },
                token,
            )),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(CatalogError::Exists(
                format!("account {name:?} already exists"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The account a bearer token belongs to.
    pub async fn account_by_token(&self, token: &str) -> Result<Account> {
        let hash = token_hash(token);
        if let Some((a, at)) = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(a.clone());
        }
        let row = sqlx::query(
            "SELECT id, name, can_publish, is_admin FROM accounts WHERE token_sha256 = $1",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| CatalogError::NotFound("unknown API token".into()))?;
        let a = account_from_row(&row)?;
        let mut cache = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
        }
        cache.insert(hash, (a.clone(), Instant::now()));
        Ok(a)
    }

    pub(super) async fn account_id_by_name(&self, name: &str) -> Result<String> {
        sqlx::query("SELECT id FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?
            .ok_or_else(|| CatalogError::NotFound(format!("no account named {name:?}")))
    }

    /// Ids of named accounts; an unknown one is refused (before anything
    /// changes) as bad input of `verb`.
    pub(super) async fn account_ids(&self, accounts: &[String], verb: &str) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(accounts.len());
        for a in accounts {
            ids.push(self.account_id_by_name(a).await.map_err(|_| {
                CatalogError::Invalid(format!("no account named {a:?} to {verb} with"))
            })?);
        }
        Ok(ids)
    }

    /// An account by name.
    pub async fn account_by_name(&self, name: &str) -> Result<Account> {
        let row =
            sqlx::query("SELECT id, name, can_publish, is_admin FROM accounts WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| CatalogError::NotFound(format!("no account named {name:?}")))?;
        account_from_row(&row)
    }

    /// Every account with the hosts it may use, by name.
    pub async fn accounts(&self) -> Result<Vec<(Account, Vec<String>, i64)>> {
        let rows = sqlx::query(
            "SELECT id, name, can_publish, is_admin, created_unix FROM accounts ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let grants = sqlx::query("SELECT account_id, host FROM account_hosts ORDER BY host")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get("id")?;
            let mut hosts = Vec::new();
            for g in &grants {
                if g.try_get::<String, _>("account_id")? == id {
                    hosts.push(g.try_get("host")?);
                }
            }
            out.push((account_from_row(&r)?, hosts, r.try_get("created_unix")?));
        }
        Ok(out)
    }

    /// Give an account a new API token (the old one stops working).
    pub async fn rotate_token(&self, name: &str) -> Result<String> {
        let token = format!("imp_{}", uuid::Uuid::new_v4().simple());
        let r = sqlx::query("UPDATE accounts SET token_sha256 = $1 WHERE name = $2")
            .bind(token_hash(&token))
            .bind(name)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::NotFound(format!("no account named {name:?}")));
        }
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (a, _)| a.name != name);
        Ok(token)
    }

    /// Let an account use a host (`*`: every host).
    pub async fn allow_host(&self, account: &str, host: &str) -> Result<()> {
        if host.is_empty() {
            return Err(CatalogError::Invalid("host name is empty".into()));
        }
        let a = self.account_by_name(account).await?;
        sqlx::query("INSERT INTO account_hosts (account_id, host) VALUES ($1, $2) ON CONFLICT (account_id, host) DO NOTHING")
            .bind(&a.id)
            .bind(host)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Take a host away from an account.
    pub async fn disallow_host(&self, account: &str, host: &str) -> Result<()> {
        let a = self.account_by_name(account).await?;
        sqlx::query("DELETE FROM account_hosts WHERE account_id = $1 AND host = $2")
            .bind(&a.id)
            .bind(host)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether `account` may capture from and deploy to `host`.
    pub async fn may_use_host(&self, account: &Account, host: &str) -> Result<bool> {
        if account.is_admin {
            return Ok(true);
        }
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM account_hosts WHERE account_id = $1 AND (host = $2 OR host = '*')",
        )
        .bind(&account.id)
        .bind(host)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        Ok(n > 0)
    }
}
