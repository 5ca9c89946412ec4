//! Guest ownership rows: which account owns which guest of a host. The
//! rules are in [`crate::api::guests`].

use std::collections::HashMap;

use sqlx::Row;

use super::{Account, Catalog, CatalogError, Result, now};

/// One ownership row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOwner {
    /// libvirt UUID.
    pub uuid: String,
    /// Name when it was assigned.
    pub name: String,
    /// Owning account's id and name.
    pub account_id: String,
    /// Owning account's name.
    pub account: String,
}

impl Catalog {
    /// Owners of the guests of `host`, by UUID.
    pub async fn guest_owners(&self, host: &str) -> Result<HashMap<String, GuestOwner>> {
        let rows = sqlx::query(
            "SELECT g.guest_uuid, g.guest_name, g.account_id, a.name AS account \
             FROM guest_owners g JOIN accounts a ON a.id = g.account_id WHERE g.host = $1",
        )
        .bind(host)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let o = GuestOwner {
                    uuid: r.try_get("guest_uuid")?,
                    name: r.try_get("guest_name")?,
                    account_id: r.try_get("account_id")?,
                    account: r.try_get("account")?,
                };
                Ok((o.uuid.clone(), o))
            })
            .collect()
    }

    /// The owner of one guest, if anybody owns it.
    pub async fn guest_owner(&self, host: &str, uuid: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT account_id FROM guest_owners WHERE host = $1 AND guest_uuid = $2")
                .bind(host)
                .bind(uuid)
                .fetch_optional(self.pool())
                .await?
                .map(|r| r.try_get("account_id"))
                .transpose()?,
        )
    }

    /// Give guests (UUID, name) of `host` to `account_id`, in one
    /// transaction. With `take`, a guest someone owns moves; without it,
    /// owned guests stay with their owner (adopting only what is nobody's,
    /// even if a deploy recorded its owner meanwhile).
    pub async fn assign_guests(
        &self,
        host: &str,
        guests: &[(String, String)],
        account_id: &str,
        take: bool,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let on_conflict = if take {
            "DO UPDATE SET guest_name = $3, account_id = $4, assigned_unix = $5"
        } else {
            "DO NOTHING"
        };
        for (uuid, name) in guests {
            let sql = format!(
                "INSERT INTO guest_owners (host, guest_uuid, guest_name, account_id, assigned_unix) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (host, guest_uuid) {on_conflict}"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(host)
                .bind(uuid)
                .bind(name)
                .bind(account_id)
                .bind(now())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forget who owns a guest named by UUID or by its recorded name;
    /// returns the row. A name several rows carry (a guest deleted and
    /// made again under its name) must be given as the UUID.
    pub async fn unassign_guest(&self, host: &str, guest: &str) -> Result<GuestOwner> {
        let all = self.guest_owners(host).await?;
        let owner = match all.get(guest) {
            Some(o) => o.clone(),
            None => {
                let named: Vec<&GuestOwner> = all.values().filter(|o| o.name == guest).collect();
                match named.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(CatalogError::NotFound(format!(
                            "nobody owns a guest {guest:?} on host {host:?}"
                        )));
                    }
                    several => {
                        return Err(CatalogError::WrongState(format!(
                            "{} owned guests on host {host:?} were named {guest:?}; give the UUID ({})",
                            several.len(),
                            several
                                .iter()
                                .map(|o| o.uuid.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
        };
        sqlx::query("DELETE FROM guest_owners WHERE host = $1 AND guest_uuid = $2")
            .bind(host)
            .bind(&owner.uuid)
            .execute(self.pool())
            .await?;
        Ok(owner)
    }
}

impl Catalog {
    /// Forget the owner of guest `uuid` of `host` (it was deleted); no
    /// row is fine.
    pub async fn forget_guest(&self, host: &str, uuid: &str) -> Result<()> {
        sqlx::query("DELETE FROM guest_owners WHERE host = $1 AND guest_uuid = $2")
            .bind(host)
            .bind(uuid)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

/// What a missing guest and another account's guest both answer.
pub fn guest_not_found(host: &str, asked: &str) -> CatalogError {
    CatalogError::NotFound(format!(
        "host {host}: no guest {asked:?} among your guests (guests not deployed through imprint are assigned by an admin: imprint guest assign {host} {asked} --account ACCOUNT)"
    ))
}

impl Catalog {
    /// Refuse a call on guest `uuid` (asked for as `asked`) of `host`
    /// unless `who` owns it or is an admin. NOT_FOUND, with the same words
    /// as for a missing guest.
    pub async fn check_guest_owner(
        &self,
        who: &Account,
        host: &str,
        uuid: &str,
        asked: &str,
    ) -> Result<()> {
        if who.is_admin {
            return Ok(());
        }
        match self.guest_owner(host, uuid).await? {
            Some(owner) if owner == who.id => Ok(()),
            _ => Err(guest_not_found(host, asked)),
        }
    }
}
