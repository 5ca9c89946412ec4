//! One page-token codec for every listing: `v2:<scope>:<id>:<key>`, in hex.
//! The scope names the listing and its order (a token of one is refused by
//! another), the id is the last row's UUID, the key its sort key.

use crate::catalog::{CatalogError, Result};

/// Where the next page starts: after the row with this sort key and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last row's sort key.
    pub key: String,
    /// The last row's id (a UUID).
    pub id: String,
}

/// The token of the page after the row (`key`, `id`) of listing `scope`.
pub fn encode(scope: &str, key: &str, id: &str) -> String {
    hex::encode(format!("v2:{scope}:{id}:{key}"))
}

/// The cursor in token `t` of listing `scope`; a malformed token, or one of
/// another listing or order, is `Invalid`.
pub fn decode(t: &str, scope: &str) -> Result<Cursor> {
    let bad = || {
        CatalogError::Invalid(format!(
            "page token {t:?} is malformed or from another listing or order; pass the next_page_token of a previous response"
        ))
    };
    let raw = String::from_utf8(hex::decode(t).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = raw.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("v2"), Some(s), Some(id), Some(key))
            if s == scope && uuid::Uuid::try_parse(id).is_ok() =>
        {
            Ok(Cursor {
                key: key.to_string(),
                id: id.to_string(),
            })
        }
        _ => Err(bad()),
    }
}

/// [`decode`] of a listing whose key is a number (a time).
pub fn decode_numeric(t: &str, scope: &str) -> Result<(i64, String)> {
    let c = decode(t, scope)?;
    let n = c.key.parse().map_err(|_| {
        CatalogError::Invalid(format!(
            "page token {t:?} is malformed; pass the next_page_token of a previous response"
        ))
    })?;
    Ok((n, c.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_in_their_listing() {
        let id = "6f1c2a4e-0b7d-4c1e-9a3b-2d5e8f7a6b10";
        let t = encode("cd", "1790000000", id);
        assert_eq!(
            decode(&t, "cd").expect("decode"),
            Cursor {
                key: "1790000000".into(),
                id: id.into()
            }
        );
        assert_eq!(
            decode_numeric(&t, "cd").expect("numeric"),
            (1_790_000_000, id.into())
        );
        // Names may hold ':'.
        let t = encode("na", "web:2", id);
        assert_eq!(decode(&t, "na").expect("decode").key, "web:2");
        for bad in [
            "zz".to_string(),
            encode("cd", "1", id)[..10].to_string(),
            encode("ops", "1", id),
            hex::encode(format!("v1:1:{id}")),
            encode("cd", "1", "not-a-uuid"),
        ] {
            assert!(
                matches!(decode(&bad, "cd"), Err(CatalogError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(decode_numeric(&encode("cd", "x", id), "cd").is_err());
    }
}
