//! Catalog tests, each on a fresh SQLite catalog and (when configured) a
//! PostgreSQL one ([`crate::testpg::catalogs`]).

mod accounts;
mod hosts;
mod operations;
mod paging;
mod sites;
mod visibility;

/// A fresh image id.
fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}
