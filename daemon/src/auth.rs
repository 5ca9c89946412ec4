//! Bearer-token authentication of API calls.
//!
//! Every call of `ImageService` and `OperationService` carries
//! `authorization: Bearer <token>`. A missing or unknown token answers
//! UNAUTHENTICATED before anything else is looked at.

use tonic::Request;

use crate::{
    catalog::{Account, Catalog, CatalogError},
    error::DaemonError,
};

/// The token of a request's `authorization` header.
pub fn bearer<T>(req: &Request<T>) -> Result<&str, DaemonError> {
    let v = req.metadata().get("authorization").ok_or_else(|| {
        DaemonError::unauthenticated("missing 'authorization: Bearer <token>' header")
    })?;
    let v = v
        .to_str()
        .map_err(|_| DaemonError::unauthenticated("the authorization header is not text"))?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            DaemonError::unauthenticated("the authorization header must be 'Bearer <token>'")
        })?;
    Ok(token)
}

/// The account making the call.
pub async fn account<T>(catalog: &Catalog, req: &Request<T>) -> Result<Account, DaemonError> {
    let token = bearer(req)?;
    match catalog.account_by_token(token).await {
        Ok(a) => Ok(a),
        Err(CatalogError::NotFound(_)) => Err(DaemonError::unauthenticated("invalid API token")),
        Err(e) => Err(e.into()),
    }
}

/// The account making the call, which must be an admin to `what` ("assign
/// guests"); PERMISSION_DENIED otherwise.
pub async fn admin<T>(
    catalog: &Catalog,
    req: &Request<T>,
    what: &str,
) -> Result<Account, DaemonError> {
    let who = account(catalog, req).await?;
    if !who.is_admin {
        return Err(DaemonError::denied(format!(
            "account {} is not an admin; only admins {what}",
            who.name
        )));
    }
    Ok(who)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn header_forms() {
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert("authorization", v.parse().expect("ascii"));
            r
        };
        assert_eq!(bearer(&with("Bearer imp_x")).expect("ok"), "imp_x");
        for bad in ["imp_x", "Bearer ", "Basic abc"] {
            assert_eq!(
                bearer(&with(bad)).expect_err(bad).kind(),
                ErrorKind::Unauthenticated
            );
        }
        assert_eq!(
            bearer(&Request::new(())).expect_err("none").kind(),
            ErrorKind::Unauthenticated
        );
    }
}
