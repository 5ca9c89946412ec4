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
            return Err(CatalogError::InvalidArgument(format!(
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
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(
                CatalogError::Conflict(format!("account {name:?} already exists")),
            ),
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

    async fn account_id_by_name(&self, name: &str) -> Result<String> {
        sqlx::query("SELECT id FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?
            .ok_or_else(|| CatalogError::NotFound(format!("no account named {name:?}")))
    }

    /// Record a new image (state `creating`, private).
    pub async fn insert_image(
        &self,
        id: &str,
        owner: &Account,
        name: &str,
        notes: &str,
        tags: &[String],
    ) -> Result<()> {
        let t = now();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO images (id, owner_id, name, notes, state, visibility, created_unix, updated_unix) VALUES ($1, $2, $3, $4, 'creating', 'private', $5, $5)")
            .bind(id)
            .bind(&owner.id)
            .bind(name)
            .bind(notes)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        insert_tags(&mut tx, id, tags).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rows of `SELECT_IMAGE` into images, with every page's tags fetched
    /// in one query.
    async fn rows_to_images(&self, rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<ImageRow>> {
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(ImageRow {
                id: row.try_get("id")?,
                owner_id: row.try_get("owner_id")?,
                owner: row.try_get("owner")?,
                name: row.try_get("name")?,
                notes: row.try_get("notes")?,
                tags: Vec::new(),
                state: text(row.try_get::<String, _>("state")?)?,
                visibility: text(row.try_get::<String, _>("visibility")?)?,
                protected: row.try_get::<i32, _>("protected")? != 0,
                failure_reason: row.try_get("failure_reason")?,
                size_bytes: row.try_get("size_bytes")?,
                created_unix: row.try_get("created_unix")?,
                updated_unix: row.try_get("updated_unix")?,
                source_host: row.try_get("source_host")?,
                source_guest: row.try_get("source_guest")?,
                config_json: row.try_get("config_json")?,
                disks_json: row.try_get("disks_json")?,
                exclusive_bytes: row.try_get("exclusive_bytes")?,
                referenced_bytes: row.try_get("referenced_bytes")?,
                damage: row.try_get("damage")?,
                recommended_profiles: row.try_get("recommended_profiles")?,
                min_vcpus: row.try_get("min_vcpus")?,
                min_memory_mib: row.try_get("min_memory_mib")?,
                hardware: row.try_get("hardware")?,
            });
        }
        if out.is_empty() {
            return Ok(out);
        }
        let marks: Vec<String> = (1..=out.len()).map(|n| format!("${n}")).collect();
        // Placeholders only; the ids are bound.
        let sql = format!(
            "SELECT image_id, tag FROM image_tags WHERE image_id IN ({}) ORDER BY tag",
            marks.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for img in &out {
            q = q.bind(img.id.clone());
        }
        for r in q.fetch_all(&self.pool).await? {
            let id: String = r.try_get("image_id")?;
            let tag: String = r.try_get("tag")?;
            if let Some(img) = out.iter_mut().find(|i| i.id == id) {
                img.tags.push(tag);
            }
        }
        Ok(out)
    }

    /// An image `viewer` may see; `NotFound` otherwise (no existence leak).
    pub async fn get_image(&self, viewer: &Account, id: &str) -> Result<ImageRow> {
        let sql = format!(
            "{SELECT_IMAGE} WHERE i.id = $1 AND i.state <> 'deleted' AND (i.owner_id = $2 OR i.visibility = 'public' \
             OR EXISTS (SELECT 1 FROM image_members m WHERE m.image_id = i.id AND m.account_id = $2))"
        );
        // Built from constants only; every value is bound.
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(&viewer.id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("image {id} not found")))?;
        self.rows_to_images(vec![row])
            .await?
            .pop()
            .ok_or_else(|| CatalogError::NotFound(format!("image {id} not found")))
    }

    /// The image, if `viewer` owns it; `NotFound` if it cannot see it,
    /// `PermissionDenied` if it sees it but does not own it.
    pub async fn owned_image(&self, viewer: &Account, id: &str) -> Result<ImageRow> {
        let img = self.get_image(viewer, id).await?;
        if img.owner_id != viewer.id {
            return Err(CatalogError::PermissionDenied(format!(
                "image {id} belongs to another account"
            )));
        }
        Ok(img)
    }

    /// Images `viewer` may list, newest first, one page at a time.
    pub async fn list_images(
        &self,
        viewer: &Account,
        q: &ListQuery,
    ) -> Result<(Vec<ImageRow>, Option<String>)> {
        let size = match q.page_size {
            0 => 50,
            n if n <= 1000 => n,
            n => {
                return Err(CatalogError::InvalidArgument(format!(
                    "page_size {n} is more than 1000"
                )));
            }
        } as i64;
        let mut sql = format!(
            "{SELECT_IMAGE} WHERE i.state <> 'deleted' AND (i.owner_id = $1 OR i.visibility = 'public' \
             OR EXISTS (SELECT 1 FROM image_members m WHERE m.image_id = i.id AND m.account_id = $1 AND m.status = 'accepted'))"
        );
        let mut binds: Vec<String> = vec![viewer.id.clone()];
        let mut arg = |sql: &mut String, clause: &str, v: String| {
            binds.push(v);
            sql.push_str(&clause.replace("$?", &format!("${}", binds.len())));
        };
        if let Some(o) = &q.owner {
            arg(&mut sql, " AND a.name = $?", o.clone());
        }
        if let Some(v) = q.visibility {
            arg(&mut sql, " AND i.visibility = $?", v.as_str().to_string());
        }
        if let Some(p) = &q.name_prefix {
            let escaped = p
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            arg(
                &mut sql,
                " AND i.name LIKE $? ESCAPE '\\'",
                format!("{escaped}%"),
            );
            if self.sqlite {
                // SQLite cannot use an index for LIKE with ESCAPE; a byte-order
                // range on the same prefix can (its BINARY collation makes the
                // range exact). PostgreSQL keeps LIKE alone: locale collations
                // do not order by prefix.
                arg(&mut sql, " AND i.name >= $?", p.clone());
                arg(&mut sql, " AND i.name < $?", format!("{p}\u{10FFFF}"));
            }
        }
        if let Some(t) = &q.tag {
            arg(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM image_tags t WHERE t.image_id = i.id AND t.tag = $?)",
                t.clone(),
            );
        }
        if let Some(s) = &q.state {
            arg(&mut sql, " AND i.state = $?", s.as_str().to_string());
        }
        if q.hide_deprecated {
            sql.push_str(" AND i.state <> 'deprecated'");
        }
        let cursor = q
            .page_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| match q.order {
                // The created key is a number.
                ListOrder::CreatedDesc | ListOrder::CreatedAsc => {
                    crate::paging::decode_numeric(t, q.order.tag())
                        .map(|(k, id)| (k.to_string(), id))
                }
                ListOrder::NameAsc | ListOrder::NameDesc => {
                    crate::paging::decode(t, q.order.tag()).map(|c| (c.key, c.id))
                }
            })
            .transpose()?;
        let (key, dir, cmp) = match q.order {
            ListOrder::CreatedDesc => ("i.created_unix", "DESC", "<"),
            ListOrder::CreatedAsc => ("i.created_unix", "ASC", ">"),
            ListOrder::NameAsc => ("i.name", "ASC", ">"),
            ListOrder::NameDesc => ("i.name", "DESC", "<"),
        };
        if let Some((k, id)) = &cursor {
            let n = binds.len();
            sql.push_str(&format!(
                " AND ({key} {cmp} ${a} OR ({key} = ${a} AND i.id {cmp} ${b}))",
                a = n + 1,
                b = n + 2
            ));
            binds.push(k.clone());
            binds.push(id.clone());
        }
        sql.push_str(&format!(
            " ORDER BY {key} {dir}, i.id {dir} LIMIT {}",
            size + 1
        ));
        // Built from constants and `$n` placeholders only; every value is
        // bound. The created key is bound as a number.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        let numeric_from = if cursor.is_some() && key == "i.created_unix" {
            binds.len() - 2
        } else {
            usize::MAX
        };
        for (i, b) in binds.iter().enumerate() {
            if i == numeric_from {
                query = query.bind(b.parse::<i64>().unwrap_or_default());
            } else {
                query = query.bind(b.clone());
            }
        }
        let rows = query.fetch_all(&self.pool).await?;
        let more = rows.len() as i64 > size;
        let out = self
            .rows_to_images(rows.into_iter().take(size as usize).collect())
            .await?;
        let next = if more {
            out.last().map(|l| {
                let k = match q.order {
                    ListOrder::CreatedDesc | ListOrder::CreatedAsc => l.created_unix.to_string(),
                    ListOrder::NameAsc | ListOrder::NameDesc => l.name.clone(),
                };
                crate::paging::encode(q.order.tag(), &k, &l.id)
            })
        } else {
            None
        };
        Ok((out, next))
    }

    /// Move an image to `state` (with a reason for `failed`) and set its size.
    pub async fn set_image_state(
        &self,
        id: &str,
        state: ImageState,
        reason: &str,
        size_bytes: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE images SET state = $1, failure_reason = $2, size_bytes = $3, updated_unix = $4 WHERE id = $5")
            .bind(state.as_str())
            .bind(reason)
            .bind(size_bytes)
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ids of named accounts; an unknown one is refused (before anything
    /// changes) as bad input of `verb`.
    async fn account_ids(&self, accounts: &[String], verb: &str) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(accounts.len());
        for a in accounts {
            ids.push(self.account_id_by_name(a).await.map_err(|_| {
                CatalogError::InvalidArgument(format!("no account named {a:?} to {verb} with"))
            })?);
        }
        Ok(ids)
    }

    /// Share an owned image with named accounts (pending until they decide).
    pub async fn share(&self, owner: &Account, id: &str, accounts: &[String]) -> Result<()> {
        let img = self.owned_image(owner, id).await?;
        let ids = self.account_ids(accounts, "share").await?;
        let mut tx = self.pool.begin().await?;
        for aid in &ids {
            if aid == &owner.id {
                continue;
            }
            sqlx::query("INSERT INTO image_members (image_id, account_id, status) VALUES ($1, $2, 'pending') ON CONFLICT (image_id, account_id) DO NOTHING")
                .bind(&img.id)
                .bind(aid)
                .execute(&mut *tx)
                .await?;
        }
        if img.visibility == Visibility::Private && ids.iter().any(|aid| aid != &owner.id) {
            sqlx::query("UPDATE images SET visibility = 'shared', updated_unix = $1 WHERE id = $2")
                .bind(now())
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A member's decision on a shared image.
    pub async fn decide(&self, member: &Account, id: &str, accept: bool) -> Result<()> {
        let img = self.get_image(member, id).await?;
        if img.owner_id == member.id {
            return Err(CatalogError::FailedPrecondition(format!(
                "image {id} is yours; only accounts it is shared with accept or reject it"
            )));
        }
        let r = sqlx::query(
            "UPDATE image_members SET status = $1 WHERE image_id = $2 AND account_id = $3",
        )
        .bind(if accept { "accepted" } else { "rejected" })
        .bind(&img.id)
        .bind(&member.id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            // Visible (public) but not shared with this account.
            return Err(CatalogError::FailedPrecondition(format!(
                "image {id} is not shared with account {}",
                member.name
            )));
        }
        Ok(())
    }

    /// Make an owned image public (needs the publish right) or take it back.
    pub async fn set_public(&self, owner: &Account, id: &str, public: bool) -> Result<()> {
        let img = self.owned_image(owner, id).await?;
        if public && !owner.can_publish {
            return Err(CatalogError::PermissionDenied(format!(
                "account {} may not publish images",
                owner.name
            )));
        }
        let members: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM image_members WHERE image_id = $1")
                .bind(&img.id)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        let vis = if public {
            "public"
        } else if members > 0 {
            "shared"
        } else {
            "private"
        };
        sqlx::query("UPDATE images SET visibility = $1, updated_unix = $2 WHERE id = $3")
            .bind(vis)
            .bind(now())
            .bind(&img.id)
            .execute(&self.pool)
            .await?;
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

impl Catalog {
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
            return Err(CatalogError::InvalidArgument("host name is empty".into()));
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

    /// Change an owned image's name, notes and/or tags.
    pub async fn update_image(
        &self,
        owner: &Account,
        id: &str,
        name: Option<&str>,
        notes: Option<&str>,
        tags: Option<&[String]>,
    ) -> Result<()> {
        if let Some(n) = name {
            validate_image_name(n)?;
        }
        if let Some(n) = notes {
            validate_notes(n)?;
        }
        if let Some(t) = tags {
            validate_tags(t)?;
        }
        let img = self.owned_image(owner, id).await?;
        let mut tx = self.pool.begin().await?;
        if let Some(n) = name {
            sqlx::query("UPDATE images SET name = $1 WHERE id = $2")
                .bind(n)
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(n) = notes {
            sqlx::query("UPDATE images SET notes = $1 WHERE id = $2")
                .bind(n)
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(t) = tags {
            sqlx::query("DELETE FROM image_tags WHERE image_id = $1")
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
            insert_tags(&mut tx, &img.id, t).await?;
        }
        sqlx::query("UPDATE images SET updated_unix = $1 WHERE id = $2")
            .bind(now())
            .bind(&img.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Protect an owned image from deletion, or lift that.
    pub async fn set_protected(&self, owner: &Account, id: &str, protected: bool) -> Result<()> {
        let img = self.owned_image(owner, id).await?;
        sqlx::query("UPDATE images SET protected = $1, updated_unix = $2 WHERE id = $3")
            .bind(i32::from(protected))
            .bind(now())
            .bind(&img.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Move an owned image between `active` and `deprecated`.
    pub async fn set_deprecated(&self, owner: &Account, id: &str, deprecated: bool) -> Result<()> {
        let img = self.owned_image(owner, id).await?;
        let (from, to) = if deprecated {
            (ImageState::Active, ImageState::Deprecated)
        } else {
            (ImageState::Deprecated, ImageState::Active)
        };
        if img.state == to {
            return Ok(());
        }
        let r = sqlx::query(
            "UPDATE images SET state = $1, updated_unix = $2 WHERE id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(now())
        .bind(&img.id)
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::FailedPrecondition(format!(
                "image {id} is {}; only {from} images can become {to}",
                img.state
            )));
        }
        Ok(())
    }

    /// Stop sharing an owned image with named accounts.
    pub async fn unshare(&self, owner: &Account, id: &str, accounts: &[String]) -> Result<()> {
        let img = self.owned_image(owner, id).await?;
        let ids = self.account_ids(accounts, "unshare").await?;
        let mut tx = self.pool.begin().await?;
        for aid in &ids {
            sqlx::query("DELETE FROM image_members WHERE image_id = $1 AND account_id = $2")
                .bind(&img.id)
                .bind(aid)
                .execute(&mut *tx)
                .await?;
        }
        if img.visibility == Visibility::Shared {
            let left: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM image_members WHERE image_id = $1")
                    .bind(&img.id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if left == 0 {
                sqlx::query(
                    "UPDATE images SET visibility = 'private', updated_unix = $1 WHERE id = $2",
                )
                .bind(now())
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// [`Catalog::members`] of several images in one query.
    pub async fn members_of(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<(String, String)>>> {
        let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let marks: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        // Placeholders only; the ids are bound.
        let sql = format!(
            "SELECT m.image_id, a.name, m.status FROM image_members m JOIN accounts a ON a.id = m.account_id \
             WHERE m.image_id IN ({}) ORDER BY a.name",
            marks.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(id.clone());
        }
        for r in q.fetch_all(&self.pool).await? {
            out.entry(r.try_get("image_id")?)
                .or_default()
                .push((r.try_get("name")?, r.try_get("status")?));
        }
        Ok(out)
    }

    /// The accounts an image is shared with and their decision.
    pub async fn members(&self, id: &str) -> Result<Vec<(String, String)>> {
        sqlx::query("SELECT a.name, m.status FROM image_members m JOIN accounts a ON a.id = m.account_id WHERE m.image_id = $1 ORDER BY a.name")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("status")?)))
            .collect()
    }

    /// Check that an owned image may be deleted and move it to `deleting`;
    /// returns the state it had.
    pub async fn begin_delete(&self, owner: &Account, id: &str) -> Result<ImageState> {
        let img = self.owned_image(owner, id).await?;
        if img.protected {
            return Err(CatalogError::FailedPrecondition(format!(
                "image {id} is protected; unprotect it first"
            )));
        }
        match img.state {
            ImageState::Creating => {
                return Err(CatalogError::FailedPrecondition(format!(
                    "image {id} is being captured; cancel its operation first"
                )));
            }
            ImageState::Deleting => {
                return Err(CatalogError::FailedPrecondition(format!(
                    "image {id} is being deleted already"
                )));
            }
            _ => {}
        }
        // One transaction: the state change first (it locks the row that a
        // deploy's or export's insert also updates), then the check for
        // readers, so a reader either finished inserting and is seen here,
        // or finds the image 'deleting' and is refused.
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE images SET state = 'deleting', updated_unix = $1 WHERE id = $2 AND state = $3 AND protected = 0")
            .bind(now())
            .bind(&img.id)
            .bind(img.state.as_str())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::FailedPrecondition(format!(
                "image {id} changed while it was being deleted; retry"
            )));
        }
        let reader: Option<String> = sqlx::query("SELECT id FROM operations WHERE kind IN ('deploy', 'export', 'copy') AND state = 'running' AND image_id = $1")
            .bind(&img.id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?;
        if let Some(d) = reader {
            // Dropping the transaction rolls the state back.
            return Err(CatalogError::FailedPrecondition(format!(
                "image {id} is being read by operation {d} (deploy or export); delete it when that ends"
            )));
        }
        tx.commit().await?;
        Ok(img.state)
    }

    /// A delete that failed: back to the state it had.
    pub async fn revert_deleting(&self, id: &str, state: ImageState) -> Result<()> {
        sqlx::query(
            "UPDATE images SET state = $1, updated_unix = $2 WHERE id = $3 AND state = 'deleting'",
        )
        .bind(state.as_str())
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The image is gone from the store: it stays as a tombstone, invisible.
    pub async fn mark_deleted(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE images SET state = 'deleted', exclusive_bytes = 0, referenced_bytes = 0, updated_unix = $1 WHERE id = $2 AND state = 'deleting'")
            .bind(now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM image_members WHERE image_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Record the space accounting of images (from the store's usage pass).
    /// Record what a read of image `id` found damaged ('' when a full read
    /// found it whole).
    pub async fn set_damage(&self, id: &str, damage: &str) -> Result<()> {
        sqlx::query("UPDATE images SET damage = $1 WHERE id = $2")
            .bind(damage)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Set usage figures.
    pub async fn set_usage(&self, usage: &[(String, i64, i64)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (id, exclusive, referenced) in usage {
            sqlx::query(
                "UPDATE images SET exclusive_bytes = $1, referenced_bytes = $2 WHERE id = $3",
            )
            .bind(*exclusive)
            .bind(*referenced)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
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
