//! Sharing: members, accepting, public images.

use super::*;
use crate::domain::ShareStatus;

impl Catalog {
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
            return Err(CatalogError::WrongState(format!(
                "image {id} is yours; only accounts it is shared with accept or reject it"
            )));
        }
        let r = sqlx::query(
            "UPDATE image_members SET status = $1 WHERE image_id = $2 AND account_id = $3",
        )
        .bind(
            if accept {
                ShareStatus::Accepted
            } else {
                ShareStatus::Rejected
            }
            .as_str(),
        )
        .bind(&img.id)
        .bind(&member.id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            // Visible (public) but not shared with this account.
            return Err(CatalogError::WrongState(format!(
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
            return Err(CatalogError::Denied(format!(
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
            Visibility::Public
        } else if members > 0 {
            Visibility::Shared
        } else {
            Visibility::Private
        };
        sqlx::query("UPDATE images SET visibility = $1, updated_unix = $2 WHERE id = $3")
            .bind(vis.as_str())
            .bind(now())
            .bind(&img.id)
            .execute(&self.pool)
            .await?;
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
}
