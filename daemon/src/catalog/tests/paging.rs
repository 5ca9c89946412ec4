//! The image listing: pages, filters, and page tokens it refuses.

use super::id;
use crate::catalog::*;
use crate::testpg::catalogs;

#[tokio::test]
async fn paging_filters_and_bad_tokens() {
    for (_b, c) in catalogs().await {
        paging_filters_and_bad_tokens_on(&c).await;
    }
}

async fn paging_filters_and_bad_tokens_on(c: &Catalog) {
    let alice = images_of_alice_and_bob(c).await;
    pages_list_every_image_once(c, &alice).await;
    filters(c, &alice).await;
    bad_tokens_and_sizes(c, &alice).await;
}

/// 120 images of alice's: web_0, web_10... and db-1, db-2...; every third
/// tagged gold. One private image of bob's, web_bob. Alice.
async fn images_of_alice_and_bob(c: &Catalog) -> Account {
    let (alice, _) = c.create_account("alice", false, false).await.expect("a");
    let (bob, _) = c.create_account("bob", false, false).await.expect("b");
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
    }
    c.insert_image(&id(), &bob, "web_bob", "", &[])
        .await
        .expect("bob's");
    alice
}

/// Pages of 50: three, newest first, every image once.
async fn pages_list_every_image_once(c: &Catalog, alice: &Account) {
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let (page, next) = c
            .list_images(
                alice,
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
}

/// Filters by name prefix, tag, owner and state.
async fn filters(c: &Catalog, alice: &Account) {
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
            c.list_images(alice, &q(|q| q.name_prefix = Some("web_".into())))
                .await
                .expect("prefix")
        ),
        12
    );
    // `_` and `%` are literal in prefixes.
    assert_eq!(
        n(
            c.list_images(alice, &q(|q| q.name_prefix = Some("web%".into())))
                .await
                .expect("prefix")
        ),
        0
    );
    assert_eq!(
        n(c.list_images(alice, &q(|q| q.tag = Some("gold".into())))
            .await
            .expect("tag")),
        40
    );
    assert_eq!(
        n(c.list_images(alice, &q(|q| q.owner = Some("bob".into())))
            .await
            .expect("owner")),
        0,
        "bob's is private"
    );
    assert_eq!(
        n(
            c.list_images(alice, &q(|q| q.state = Some(ImageState::Creating)))
                .await
                .expect("state")
        ),
        120
    );
}

/// Malformed page tokens and oversized pages are refused.
async fn bad_tokens_and_sizes(c: &Catalog, alice: &Account) {
    for bad in [
        "zz",
        "00",
        &hex::encode("v1:12:not-a-uuid"),
        &hex::encode("v2:1:x"),
    ] {
        let r = c
            .list_images(
                alice,
                &ListQuery {
                    page_token: Some(bad.to_string()),
                    ..Default::default()
                },
            )
            .await;
        assert!(matches!(r, Err(CatalogError::Invalid(_))), "{bad}");
    }
    let r = c
        .list_images(
            alice,
            &ListQuery {
                page_size: 5000,
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(r, Err(CatalogError::Invalid(_))));
}
