//! Test catalogs on both backends: a SQLite file, and a private PostgreSQL
//! server ([`imprint_tests::pg::TestPostgres`]).

use imprint_tests::pg::TestPostgres;

/// Keeps a test catalog's backend alive.
#[allow(dead_code)]
#[derive(Debug)]
pub enum Backend {
    /// The SQLite file's folder.
    Sqlite(tempfile::TempDir),
    /// The private server.
    Postgres(TestPostgres),
}

/// A fresh catalog on SQLite and one on PostgreSQL: tests run on both.
pub async fn catalogs() -> Vec<(Backend, crate::catalog::Catalog)> {
    let tmp = tempfile::tempdir().expect("tmp");
    let url = format!(
        "sqlite://{}?mode=rwc",
        tmp.path().join("catalog.db").display()
    );
    let sqlite = crate::catalog::Catalog::open(&url)
        .await
        .expect("open sqlite");
    let pg = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .expect("pg");
    let postgres = crate::catalog::Catalog::open(&pg.url)
        .await
        .expect("open postgres");
    vec![
        (Backend::Sqlite(tmp), sqlite),
        (Backend::Postgres(pg), postgres),
    ]
}
