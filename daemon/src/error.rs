//! The daemon's one map from its errors to gRPC statuses. Every kind has
//! its code here, without a wildcard: a new kind does not compile until it
//! says what callers see.

use tonic::Status;

use crate::catalog::CatalogError;

/// Map catalog errors to gRPC statuses (database details stay in the log).
pub fn status(e: CatalogError) -> Status {
    match e {
        CatalogError::NotFound(m) => Status::not_found(m),
        CatalogError::InvalidArgument(m) => Status::invalid_argument(m),
        CatalogError::Conflict(m) => Status::already_exists(m),
        CatalogError::PermissionDenied(m) => Status::permission_denied(m),
        CatalogError::FailedPrecondition(m) => Status::failed_precondition(m),
        e @ (CatalogError::Database(_) | CatalogError::Migrate(_)) => {
            tracing::error!(error = %e, "catalog failure");
            Status::unavailable("the catalog database is unavailable; retry later")
        }
        e @ CatalogError::Corrupt(_) => {
            tracing::error!(error = %e, "catalog damaged");
            Status::internal("the catalog holds data this daemon cannot read; see its log")
        }
    }
}
