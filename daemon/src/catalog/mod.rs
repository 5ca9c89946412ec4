//! The catalog: accounts, images and sharing, in SQLite (the embedded
//! default) or PostgreSQL, through one code path (`sqlx::Any`, portable
//! SQL, `$n` placeholders). Migrations run at open.
//!
//! Visibility rules (every read goes through them):
//! - the owner sees its images;
//! - everybody sees `public` images;
//! - an account an image was shared with sees it by id whatever its
//!   decision, and in lists once it accepted (as in Glance);
//! - anybody else gets `NotFound`, never "permission denied", so ids do
//!   not leak.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{AnyPool, Row, any::AnyPoolOptions};

use crate::domain::UnknownText;
mod accounts;
mod hosts;
mod images;
mod operations;
mod sharing;
mod sites;

pub use hosts::HostRow;
pub use operations::{ImageOutcome, LEASE_SECONDS, NewImage, NewOperation, OperationRow};
pub use sites::{DEFAULT_SITE, LocationRow, SiteRow, site_of_host, validate_site_name};

pub use crate::domain::{ImageState, Visibility};

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No such thing (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// Bad input.
    #[error("{0}")]
    InvalidArgument(String),
    /// Exists already / not allowed in the current state.
    #[error("{0}")]
    Conflict(String),
    /// The caller may see it but not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Not possible in the thing's current state (protected, in use...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database failed.
    #[error("catalog database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The catalog holds what no version of the daemon writes.
    #[error("catalog damaged: {0}")]
    Corrupt(String),
}

/// Result of catalog calls.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// A stored text as the enum it names; one that names none is a damaged
/// catalog.
pub(crate) fn text<T: std::str::FromStr<Err = UnknownText>>(s: String) -> Result<T> {
    s.parse()
        .map_err(|e: UnknownText| CatalogError::Corrupt(format!("{e} in the catalog")))
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// UUID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// May make images public.
    pub can_publish: bool,
    /// May create accounts.
    pub is_admin: bool,
}

/// An image row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    /// Image id (the store's).
    pub id: String,
    /// Owner account id.
    pub owner_id: String,
    /// Owner account name.
    pub owner: String,
    /// Name.
    pub name: String,
    /// Notes.
    pub notes: String,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Where it is in its life.
    pub state: ImageState,
    /// Visibility.
    pub visibility: Visibility,
    /// Refuses deletion.
    pub protected: bool,
    /// Why it failed.
    pub failure_reason: String,
    /// Guest-visible bytes.
    pub size_bytes: i64,
    /// Seconds since the epoch.
    pub created_unix: i64,
    /// Seconds since the epoch.
    pub updated_unix: i64,
    /// Host captured from.
    pub source_host: String,
    /// Guest captured from.
    pub source_guest: String,
    /// Guest configuration recorded at capture (JSON).
    pub config_json: String,
    /// The disks (JSON array of [`ImageDiskRow`]).
    pub disks_json: String,
    /// Stored bytes only this image references (freed if deleted).
    pub exclusive_bytes: i64,
    /// Stored bytes of every chunk it references.
    pub referenced_bytes: i64,
    /// What a read found damaged ('' when nothing).
    pub damage: String,
    /// Recommended profiles, comma-separated.
    pub recommended_profiles: String,
    /// Minimums a deploy must meet (0: none).
    pub min_vcpus: i32,
    /// See `min_vcpus`.
    pub min_memory_mib: i64,
    /// Hardware for deploys that name no profile (encoded, '' for none).
    pub hardware: String,
}

/// One disk of an image, as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageDiskRow {
    /// Guest device at capture.
    pub name: String,
    /// Guest-visible size.
    pub size_bytes: u64,
    /// SHA-256 of the guest-visible bytes, if recorded.
    #[serde(default)]
    pub sha256: String,
}

impl ImageRow {
    /// The disks (empty until the capture succeeded).
    pub fn disks(&self) -> Vec<ImageDiskRow> {
        serde_json::from_str(&self.disks_json).unwrap_or_default()
    }

    /// `active` or `deprecated`: may be deployed.
    pub fn deployable(&self) -> bool {
        self.state.deployable()
    }
}

/// Filters and paging of [`Catalog::list_images`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Owner account name.
    pub owner: Option<String>,
    /// Visibility.
    pub visibility: Option<Visibility>,
    /// Name prefix.
    pub name_prefix: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// State.
    pub state: Option<ImageState>,
    /// Leave deprecated images out (the default view when no state is
    /// asked for).
    pub hide_deprecated: bool,
    /// Sort order.
    pub order: ListOrder,
    /// Page size (1..=1000; 0 means 50).
    pub page_size: u32,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// Sort order of [`Catalog::list_images`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListOrder {
    /// Newest first (the default).
    #[default]
    CreatedDesc,
    /// Oldest first.
    CreatedAsc,
    /// By name, A to Z (byte order on SQLite, the database's collation on
    /// PostgreSQL).
    NameAsc,
    /// By name, Z to A.
    NameDesc,
}

impl std::str::FromStr for ListOrder {
    type Err = CatalogError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "" | "created_desc" => ListOrder::CreatedDesc,
            "created_asc" => ListOrder::CreatedAsc,
            "name_asc" => ListOrder::NameAsc,
            "name_desc" => ListOrder::NameDesc,
            other => {
                return Err(CatalogError::InvalidArgument(format!(
                    "order_by {other:?} is not one of created_desc, created_asc, name_asc, name_desc"
                )));
            }
        })
    }
}

impl ListOrder {
    fn tag(self) -> &'static str {
        match self {
            ListOrder::CreatedDesc => "cd",
            ListOrder::CreatedAsc => "ca",
            ListOrder::NameAsc => "na",
            ListOrder::NameDesc => "nd",
        }
    }
}

/// The catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
    sqlite: bool,
    /// Accounts by token hash, for [`TOKEN_CACHE_TTL`]: every API call
    /// authenticates, and this spares the database one query per call.
    tokens: Arc<Mutex<HashMap<String, (Account, Instant)>>>,
    /// Host names by host token hash, likewise (heartbeats authenticate).
    host_tokens: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    /// This daemon's name in operation leases.
    daemon_id: Arc<str>,
}

/// How long a token stays valid after it was rotated away (on other
/// daemons; this one forgets at once).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);

/// SHA-256 of a token, hex: what the catalog stores.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

const SELECT_IMAGE: &str = "SELECT i.id, i.owner_id, a.name AS owner, i.name, i.notes, i.state, i.visibility, \
     i.protected, i.failure_reason, i.size_bytes, i.created_unix, i.updated_unix, i.source_host, i.source_guest, \
     i.config_json, i.disks_json, i.exclusive_bytes, i.referenced_bytes, i.damage, \
     i.recommended_profiles, i.min_vcpus, i.min_memory_mib, i.hardware \
     FROM images i JOIN accounts a ON a.id = i.owner_id";

impl Catalog {
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether the catalog is SQLite (one daemon) rather than PostgreSQL.
    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    pub(crate) fn host_token_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.host_tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget cached host tokens (one was replaced or removed).
    pub(crate) fn forget_host_tokens(&self) {
        self.host_token_cache().clear();
    }

    /// Open `url` (`sqlite:///path/catalog.db?mode=rwc`, `postgres://...`)
    /// and apply migrations.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite");
        if sqlite {
            // WAL (persistent in the file) lets readers run beside the
            // writer; set it before the pool opens several connections.
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?;
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            pool.close().await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Per connection in SQLite. Writers that meet a
                        // lock wait for it instead of failing.
                        sqlx::Executor::execute(&mut *conn, "PRAGMA foreign_keys = ON").await?;
                        sqlx::Executor::execute(&mut *conn, "PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool,
            sqlite,
            tokens: Arc::default(),
            host_tokens: Arc::default(),
            daemon_id: Arc::from(format!("pid-{}", std::process::id())),
        })
    }

    /// The same catalog, taking operation leases as `id` (one name per
    /// daemon on a shared catalog; the same name across restarts lets a
    /// restarted daemon take its operations back at once).
    pub fn with_daemon_id(mut self, id: &str) -> Self {
        self.daemon_id = Arc::from(id);
        self
    }

    /// This daemon's name in operation leases.
    pub fn daemon_id(&self) -> &str {
        &self.daemon_id
    }

    /// A round trip to the database (health checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Checks of names and notes every write path shares.
pub fn validate_image_name(name: &str) -> Result<()> {
    imprint_store::manifest::validate_name(name)
        .map_err(|e| CatalogError::InvalidArgument(e.message().to_string()))
}

/// Notes: at most 4 KiB.
pub fn validate_notes(notes: &str) -> Result<()> {
    if notes.len() > 4096 {
        return Err(CatalogError::InvalidArgument(format!(
            "notes are {} bytes; at most 4096",
            notes.len()
        )));
    }
    Ok(())
}

/// Tags: at most 50, each 1-64 printable characters without spaces.
pub fn validate_tags(tags: &[String]) -> Result<()> {
    if tags.len() > 50 {
        return Err(CatalogError::InvalidArgument(format!(
            "{} tags; at most 50",
            tags.len()
        )));
    }
    for t in tags {
        if t.is_empty()
            || t.chars().count() > 64
            || t.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(CatalogError::InvalidArgument(format!(
                "tag {t:?} must be 1-64 characters without spaces or control characters"
            )));
        }
    }
    Ok(())
}

/// Add `tags` (sorted, each once) to an image, inside a transaction.
pub(crate) async fn insert_tags(
    conn: &mut sqlx::AnyConnection,
    image_id: &str,
    tags: &[String],
) -> Result<()> {
    let mut tags = tags.to_vec();
    tags.sort();
    tags.dedup();
    for tag in &tags {
        sqlx::query("INSERT INTO image_tags (image_id, tag) VALUES ($1, $2)")
            .bind(image_id)
            .bind(tag)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn account_from_row(row: &sqlx::any::AnyRow) -> Result<Account> {
    Ok(Account {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        can_publish: row.try_get::<i32, _>("can_publish")? != 0,
        is_admin: row.try_get::<i32, _>("is_admin")? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testpg::catalogs;

    fn id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    #[tokio::test]
    async fn accounts_and_tokens() {
        for (_b, c) in catalogs().await {
            accounts_and_tokens_on(&c).await;
        }
    }

    async fn accounts_and_tokens_on(c: &Catalog) {
        let (alice, token) = c
            .create_account("alice", false, false)
            .await
            .expect("alice");
        assert_eq!(c.account_by_token(&token).await.expect("by token"), alice);
        assert!(matches!(
            c.account_by_token("imp_wrong").await,
            Err(CatalogError::NotFound(_))
        ));
        assert!(matches!(
            c.create_account("alice", false, false).await,
            Err(CatalogError::Conflict(_))
        ));
        assert!(matches!(
            c.create_account("bad name", false, false).await,
            Err(CatalogError::InvalidArgument(_))
        ));
        // Tokens are stored hashed.
        let stored: String = sqlx::query("SELECT token_sha256 FROM accounts WHERE name = 'alice'")
            .fetch_one(&c.pool)
            .await
            .expect("row")
            .try_get("token_sha256")
            .expect("col");
        assert_ne!(stored, token);
        assert_eq!(stored, token_hash(&token));
        // Host grants, listed with the account; rotation kills the old token.
        c.allow_host("alice", "kvm-01").await.expect("grant");
        c.allow_host("alice", "kvm-01").await.expect("grant twice");
        assert!(c.may_use_host(&alice, "kvm-01").await.expect("may"));
        assert!(!c.may_use_host(&alice, "kvm-02").await.expect("may not"));
        let all = c.accounts().await.expect("accounts");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1, ["kvm-01"]);
        c.disallow_host("alice", "kvm-01").await.expect("revoke");
        assert!(!c.may_use_host(&alice, "kvm-01").await.expect("revoked"));
        let new = c.rotate_token("alice").await.expect("rotate");
        assert!(matches!(
            c.account_by_token(&token).await,
            Err(CatalogError::NotFound(_))
        ));
        assert_eq!(c.account_by_token(&new).await.expect("new token"), alice);
    }

    #[tokio::test]
    async fn visibility_private_shared_public() {
        for (_b, c) in catalogs().await {
            visibility_private_shared_public_on(&c).await;
        }
    }

    async fn visibility_private_shared_public_on(c: &Catalog) {
        let (alice, _) = c.create_account("alice", true, false).await.expect("a");
        let (bob, _) = c.create_account("bob", false, false).await.expect("b");
        let (carol, _) = c.create_account("carol", false, false).await.expect("c");
        let img = id();
        c.insert_image(&img, &alice, "web", "", &["prod".into()])
            .await
            .expect("insert");
        c.set_image_state(&img, ImageState::Active, "", 1 << 30)
            .await
            .expect("state");

        assert_eq!(
            c.get_image(&alice, &img).await.expect("owner").owner,
            "alice"
        );
        assert!(
            matches!(
                c.get_image(&bob, &img).await,
                Err(CatalogError::NotFound(_))
            ),
            "private is invisible"
        );
        assert!(
            matches!(
                c.owned_image(&bob, &img).await,
                Err(CatalogError::NotFound(_))
            ),
            "no existence leak"
        );

        // Sharing with an unknown account changes nothing.
        assert!(matches!(
            c.share(&alice, &img, &["bob".into(), "nobody".into()])
                .await,
            Err(CatalogError::InvalidArgument(_))
        ));
        assert!(matches!(
            c.get_image(&bob, &img).await,
            Err(CatalogError::NotFound(_))
        ));
        // Only the owner shares.
        assert!(matches!(
            c.share(&bob, &img, &["carol".into()]).await,
            Err(CatalogError::NotFound(_))
        ));

        c.share(&alice, &img, &["bob".into()]).await.expect("share");
        let seen = c.get_image(&bob, &img).await.expect("member sees it by id");
        assert_eq!(seen.visibility, Visibility::Shared);
        assert!(
            c.list_images(&bob, &ListQuery::default())
                .await
                .expect("list")
                .0
                .is_empty(),
            "pending: not listed"
        );
        assert!(
            matches!(
                c.owned_image(&bob, &img).await,
                Err(CatalogError::PermissionDenied(_))
            ),
            "members cannot modify"
        );
        c.decide(&bob, &img, true).await.expect("accept");
        assert_eq!(
            c.list_images(&bob, &ListQuery::default())
                .await
                .expect("list")
                .0
                .len(),
            1
        );
        c.decide(&bob, &img, false).await.expect("reject");
        assert!(
            c.list_images(&bob, &ListQuery::default())
                .await
                .expect("list")
                .0
                .is_empty()
        );
        assert!(matches!(
            c.decide(&carol, &img, true).await,
            Err(CatalogError::NotFound(_))
        ));

        assert!(matches!(
            c.set_public(&bob, &img, true).await,
            Err(CatalogError::PermissionDenied(_))
        ));
        c.set_public(&alice, &img, true).await.expect("publish");
        assert_eq!(
            c.list_images(&carol, &ListQuery::default())
                .await
                .expect("list")
                .0
                .len(),
            1
        );
        c.set_public(&alice, &img, false).await.expect("unpublish");
        assert!(matches!(
            c.get_image(&carol, &img).await,
            Err(CatalogError::NotFound(_))
        ));
        assert_eq!(
            c.get_image(&bob, &img)
                .await
                .expect("still a member")
                .visibility,
            Visibility::Shared
        );

        let (dave, _) = c.create_account("dave", false, false).await.expect("d");
        let img2 = id();
        c.insert_image(&img2, &dave, "x", "", &[])
            .await
            .expect("insert");
        assert!(
            matches!(
                c.set_public(&dave, &img2, true).await,
                Err(CatalogError::PermissionDenied(_))
            ),
            "publishing needs the right"
        );
    }

    #[tokio::test]
    async fn paging_filters_and_bad_tokens() {
        for (_b, c) in catalogs().await {
            paging_filters_and_bad_tokens_on(&c).await;
        }
    }

    async fn paging_filters_and_bad_tokens_on(c: &Catalog) {
        let (alice, _) = c.create_account("alice", false, false).await.expect("a");
        let (bob, _) = c.create_account("bob", false, false).await.expect("b");
        let mut all = Vec::new();
        for i in 0..120 {
            let img = id();
            let name = if i % 10 == 0 {
                format!("web_{i}")
            } else {
                format!("db-{i}")
            };
            let tags: Vec<String> = if i % 3 == 0 {
                vec!["gold".into()]
            } else {
                vec![]
            };
            c.insert_image(&img, &alice, &name, "", &tags)
                .await
                .expect("insert");
            all.push(img);
        }
        c.insert_image(&id(), &bob, "web_bob", "", &[])
            .await
            .expect("bob's");
        let mut seen = Vec::new();
        let mut token = None;
        let mut pages = 0;
        loop {
            let (page, next) = c
                .list_images(
                    &alice,
                    &ListQuery {
                        page_size: 50,
                        page_token: token.clone(),
                        ..Default::default()
                    },
                )
                .await
                .expect("page");
            pages += 1;
            seen.extend(page.into_iter().map(|i| (i.created_unix, i.id)));
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen.len(), 120, "every image once");
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "newest first, stable across pages");

        let q = |f: fn(&mut ListQuery)| {
            let mut q = ListQuery {
                page_size: 1000,
                ..Default::default()
            };
            f(&mut q);
            q
        };
        let n = |r: (Vec<ImageRow>, Option<String>)| r.0.len();
        assert_eq!(
            n(
                c.list_images(&alice, &q(|q| q.name_prefix = Some("web_".into())))
                    .await
                    .expect("prefix")
            ),
            12
        );
        // `_` and `%` are literal in prefixes.
        assert_eq!(
            n(
                c.list_images(&alice, &q(|q| q.name_prefix = Some("web%".into())))
                    .await
                    .expect("prefix")
            ),
            0
        );
        assert_eq!(
            n(c.list_images(&alice, &q(|q| q.tag = Some("gold".into())))
                .await
                .expect("tag")),
            40
        );
        assert_eq!(
            n(c.list_images(&alice, &q(|q| q.owner = Some("bob".into())))
                .await
                .expect("owner")),
            0,
            "bob's is private"
        );
        assert_eq!(
            n(
                c.list_images(&alice, &q(|q| q.state = Some(ImageState::Creating)))
                    .await
                    .expect("state")
            ),
            120
        );

        for bad in [
            "zz",
            "00",
            &hex::encode("v1:12:not-a-uuid"),
            &hex::encode("v2:1:x"),
        ] {
            let r = c
                .list_images(
                    &alice,
                    &ListQuery {
                        page_token: Some(bad.to_string()),
                        ..Default::default()
                    },
                )
                .await;
            assert!(matches!(r, Err(CatalogError::InvalidArgument(_))), "{bad}");
        }
        let r = c
            .list_images(
                &alice,
                &ListQuery {
                    page_size: 5000,
                    ..Default::default()
                },
            )
            .await;
        assert!(matches!(r, Err(CatalogError::InvalidArgument(_))));
    }
}
