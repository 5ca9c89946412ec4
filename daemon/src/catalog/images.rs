//! Image rows: creation, reads through the visibility rules, listing,
//! state changes, deletion, usage.

use super::*;

impl Catalog {
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
    pub(super) async fn rows_to_images(
        &self,
        rows: Vec<sqlx::any::AnyRow>,
    ) -> Result<Vec<ImageRow>> {
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
                min_disk_bytes: row.try_get("min_disk_bytes")?,
                hardware: row.try_get("hardware")?,
                lint: row.try_get("lint")?,
                linted_unix: row.try_get("linted_unix")?,
                sealed: row.try_get::<i32, _>("sealed")? != 0,
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
    /// `Denied` if it sees it but does not own it.
    pub async fn owned_image(&self, viewer: &Account, id: &str) -> Result<ImageRow> {
        let img = self.get_image(viewer, id).await?;
        if img.owner_id != viewer.id {
            return Err(CatalogError::Denied(format!(
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
        let size = page_size(q.page_size)?;
        let mut l = self.listing(viewer, q);
        let (key, dir, cmp) = match q.order {
            ListOrder::CreatedDesc => ("i.created_unix", "DESC", "<"),
            ListOrder::CreatedAsc => ("i.created_unix", "ASC", ">"),
            ListOrder::NameAsc => ("i.name", "ASC", ">"),
            ListOrder::NameDesc => ("i.name", "DESC", "<"),
        };
        if let Some((k, id)) = page_cursor(q)? {
            let (a, b) = (l.binds.len() + 1, l.binds.len() + 2);
            l.sql.push_str(&format!(
                " AND ({key} {cmp} ${a} OR ({key} = ${a} AND i.id {cmp} ${b}))"
            ));
            l.binds.push(k);
            l.binds.push(Bind::Text(id));
        }
        l.sql.push_str(&format!(
            " ORDER BY {key} {dir}, i.id {dir} LIMIT {}",
            size + 1
        ));
        // Built from constants and `$n` placeholders only; every value is
        // bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(l.sql));
        for b in l.binds {
            query = match b {
                Bind::Text(t) => query.bind(t),
                Bind::Number(n) => query.bind(n),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        let more = super::count(rows.len()) > size;
        let out = self
            .rows_to_images(
                rows.into_iter()
                    .take(usize::try_from(size).unwrap_or(0))
                    .collect(),
            )
            .await?;
        let next = more
            .then(|| out.last())
            .flatten()
            .map(|l| next_token(q.order, l));
        Ok((out, next))
    }

    /// The filters of a listing (what `viewer` sees, narrowed by `q`).
    fn listing(&self, viewer: &Account, q: &ListQuery) -> Listing {
        let mut l = Listing {
            sql: format!(
                "{SELECT_IMAGE} WHERE i.state <> 'deleted' AND (i.owner_id = $1 OR i.visibility = 'public' \
                 OR EXISTS (SELECT 1 FROM image_members m WHERE m.image_id = i.id AND m.account_id = $1 AND m.status = 'accepted'))"
            ),
            binds: vec![Bind::Text(viewer.id.clone())],
        };
        if let Some(o) = &q.owner {
            l.arg(" AND a.name = $?", o.clone());
        }
        if let Some(v) = q.visibility {
            l.arg(" AND i.visibility = $?", v.as_str().to_string());
        }
        if let Some(p) = &q.name_prefix {
            let escaped = p
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            l.arg(" AND i.name LIKE $? ESCAPE '\\'", format!("{escaped}%"));
            if self.sqlite {
                // SQLite cannot use an index for LIKE with ESCAPE; a byte-order
                // range on the same prefix can (its BINARY collation makes the
                // range exact). PostgreSQL keeps LIKE alone: locale collations
                // do not order by prefix.
                l.arg(" AND i.name >= $?", p.clone());
                l.arg(" AND i.name < $?", format!("{p}\u{10FFFF}"));
            }
        }
        if let Some(t) = &q.tag {
            l.arg(
                " AND EXISTS (SELECT 1 FROM image_tags t WHERE t.image_id = i.id AND t.tag = $?)",
                t.clone(),
            );
        }
        if let Some(s) = &q.state {
            l.arg(" AND i.state = $?", s.as_str().to_string());
        }
        if q.hide_deprecated {
            l.sql.push_str(" AND i.state <> 'deprecated'");
        }
        l
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
            return Err(CatalogError::WrongState(format!(
                "image {id} is {}; only {from} images can become {to}",
                img.state
            )));
        }
        Ok(())
    }

    /// Check that an owned image may be deleted and move it to `deleting`;
    /// returns the state it had.
    pub async fn begin_delete(&self, owner: &Account, id: &str) -> Result<ImageState> {
        let img = self.owned_image(owner, id).await?;
        if img.protected {
            return Err(CatalogError::WrongState(format!(
                "image {id} is protected; unprotect it first"
            )));
        }
        match img.state {
            ImageState::Creating => {
                return Err(CatalogError::WrongState(format!(
                    "image {id} is being captured; cancel its operation first"
                )));
            }
            ImageState::Deleting => {
                return Err(CatalogError::WrongState(format!(
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
            return Err(CatalogError::WrongState(format!(
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
            return Err(CatalogError::WrongState(format!(
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

    /// Keep the report of the last lint of image `id` (`report`: a
    /// LintReport message, hex), made at `unix`.
    pub async fn set_lint(&self, id: &str, report: &str, unix: i64) -> Result<()> {
        sqlx::query("UPDATE images SET lint = $1, linted_unix = $2 WHERE id = $3")
            .bind(report)
            .bind(unix)
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

/// A listing's SQL and the values bound to its `$n` placeholders.
#[derive(Debug)]
struct Listing {
    sql: String,
    binds: Vec<Bind>,
}

/// One bound value.
#[derive(Debug)]
enum Bind {
    Text(String),
    Number(i64),
}

impl Listing {
    /// Append `clause`, its `$?` the next placeholder bound to `v`.
    fn arg(&mut self, clause: &str, v: String) {
        self.binds.push(Bind::Text(v));
        self.sql
            .push_str(&clause.replace("$?", &format!("${}", self.binds.len())));
    }
}

/// A page size: 0 is the default (50), at most 1000.
fn page_size(n: u32) -> Result<i64> {
    match n {
        0 => Ok(50),
        n if n <= 1000 => Ok(i64::from(n)),
        n => Err(CatalogError::Invalid(format!(
            "page_size {n} is more than 1000"
        ))),
    }
}

/// The key and id after which the page starts.
fn page_cursor(q: &ListQuery) -> Result<Option<(Bind, String)>> {
    let Some(t) = q.page_token.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(match q.order {
        // The created key is a number.
        ListOrder::CreatedDesc | ListOrder::CreatedAsc => {
            let (k, id) = crate::paging::decode_numeric(t, q.order.tag())?;
            (Bind::Number(k), id)
        }
        ListOrder::NameAsc | ListOrder::NameDesc => {
            let c = crate::paging::decode(t, q.order.tag())?;
            (Bind::Text(c.key), c.id)
        }
    }))
}

/// The token of the page after the one ending with `last`.
fn next_token(order: ListOrder, last: &ImageRow) -> String {
    let k = match order {
        ListOrder::CreatedDesc | ListOrder::CreatedAsc => last.created_unix.to_string(),
        ListOrder::NameAsc | ListOrder::NameDesc => last.name.clone(),
    };
    crate::paging::encode(order.tag(), &k, &last.id)
}
