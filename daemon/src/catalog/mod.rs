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
mod guests;
mod host_tokens;
mod hosts;
mod images;
mod leases;
mod operations;
mod profiles;
mod sharing;
mod sites;

pub use guests::{GuestOwner, guest_not_found};
pub use host_tokens::validate_host_name;
pub use hosts::HostRow;
pub use operations::{ImageOutcome, LEASE_SECONDS, NewImage, NewOperation, OperationRow};
pub use profiles::{HardwareChange, decode as decode_profile, encode as encode_profile};
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
    Invalid(String),
    /// Exists already (a name, a grant, a location).
    #[error("{0}")]
    Exists(String),
    /// The caller may see it but not do this.
    #[error("{0}")]
    Denied(String),
    /// Not possible in the thing's current state (protected, in use...).
    #[error("{0}")]
    WrongState(String),
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
    /// Least size of a deploy's first disk (0: the captured size).
    pub min_disk_bytes: i64,
    /// Hardware for deploys that name no profile (encoded, '' for none).
    pub hardware: String,
    /// The last lint's report (a LintReport message, hex; '' for none).
    pub lint: String,
    /// When it was made (seconds since the epoch; 0: never linted).
    pub linted_unix: i64,
    /// Stored generalized (captured with seal).
    pub sealed: bool,
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

    /// The last lint's report (none when never linted, or unreadable).
    pub fn lint_report(&self) -> Option<imprint_proto::v1::LintReport> {
        let bytes = hex::decode(&self.lint).ok().filter(|b| !b.is_empty())?;
        prost::Message::decode(bytes.as_slice()).ok()
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
                return Err(CatalogError::Invalid(format!(
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
        .map_or(0, |d| signed(d.as_secs()))
}

/// A count or size as the catalog stores it (SQL integers are signed);
/// beyond `i64::MAX` it saturates.
pub fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored count or size as the API shows it; a negative one (never
/// written) reads as 0.
pub fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A count of rows as the catalog compares it.
pub fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const SELECT_IMAGE: &str = "SELECT i.id, i.owner_id, a.name AS owner, i.name, i.notes, i.state, i.visibility, \
     i.protected, i.failure_reason, i.size_bytes, i.created_unix, i.updated_unix, i.source_host, i.source_guest, \
     i.config_json, i.disks_json, i.exclusive_bytes, i.referenced_bytes, i.damage, \
     i.recommended_profiles, i.min_vcpus, i.min_memory_mib, i.min_disk_bytes, i.hardware, i.lint, i.linted_unix, i.sealed \
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
        .map_err(|e| CatalogError::Invalid(e.message().to_string()))
}

/// Notes: at most 4 KiB.
pub fn validate_notes(notes: &str) -> Result<()> {
    if notes.len() > 4096 {
        return Err(CatalogError::Invalid(format!(
            "notes are {} bytes; at most 4096",
            notes.len()
        )));
    }
    Ok(())
}

/// Tags: at most 50, each 1-64 printable characters without spaces.
pub fn validate_tags(tags: &[String]) -> Result<()> {
    if tags.len() > 50 {
        return Err(CatalogError::Invalid(format!(
            "{} tags; at most 50",
            tags.len()
        )));
    }
    for t in tags {
        if t.is_empty()
            || t.chars().count() > 64
            || t.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(CatalogError::Invalid(format!(
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
mod tests;
