//! Accounts, their tokens (stored hashed) and host grants.

use sqlx::Row;

use crate::catalog::*;
use crate::testpg::catalogs;

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
        Err(CatalogError::Exists(_))
    ));
    assert!(matches!(
        c.create_account("bad name", false, false).await,
        Err(CatalogError::Invalid(_))
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
