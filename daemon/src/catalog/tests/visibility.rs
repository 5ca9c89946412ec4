//! Who sees an image: private, shared (pending, accepted, rejected), public.

use super::id;
use crate::catalog::*;
use crate::testpg::catalogs;

#[tokio::test]
async fn visibility_private_shared_public() {
    for (_b, c) in catalogs().await {
        visibility_private_shared_public_on(&c).await;
    }
}

async fn visibility_private_shared_public_on(c: &Catalog) {
    let (alice, _) = c.create_account("alice", true, false).await.expect("a");
    let (bob, _) = c.create_account("bob", false, false).await.expect("b");
    let (carol, _) = c.create_account("carol", false, false).await.expect("c");
    let img = private_image(c, &alice, &bob).await;
    sharing(c, &alice, &bob, &carol, &img).await;
    publishing(c, &alice, &bob, &carol, &img).await;
    publishing_needs_the_right(c).await;
}

/// An active image of alice's, private: bob sees nothing of it.
async fn private_image(c: &Catalog, alice: &Account, bob: &Account) -> String {
    let img = id();
    c.insert_image(&img, alice, "web", "", &["prod".into()])
        .await
        .expect("insert");
    c.set_image_state(&img, ImageState::Active, "", 1 << 30)
        .await
        .expect("state");

    assert_eq!(
        c.get_image(alice, &img).await.expect("owner").owner,
        "alice"
    );
    assert!(
        matches!(c.get_image(bob, &img).await, Err(CatalogError::NotFound(_))),
        "private is invisible"
    );
    assert!(
        matches!(
            c.owned_image(bob, &img).await,
            Err(CatalogError::NotFound(_))
        ),
        "no existence leak"
    );
    img
}

/// The images `who` lists.
async fn listed(c: &Catalog, who: &Account) -> Vec<ImageRow> {
    c.list_images(who, &ListQuery::default())
        .await
        .expect("list")
        .0
}

/// The owner shares with bob: he sees it by id, lists it once he accepted,
/// and may not modify it; carol has nothing to decide.
async fn sharing(c: &Catalog, alice: &Account, bob: &Account, carol: &Account, img: &str) {
    // Sharing with an unknown account changes nothing.
    assert!(matches!(
        c.share(alice, img, &["bob".into(), "nobody".into()]).await,
        Err(CatalogError::Invalid(_))
    ));
    assert!(matches!(
        c.get_image(bob, img).await,
        Err(CatalogError::NotFound(_))
    ));
    // Only the owner shares.
    assert!(matches!(
        c.share(bob, img, &["carol".into()]).await,
        Err(CatalogError::NotFound(_))
    ));

    c.share(alice, img, &["bob".into()]).await.expect("share");
    let seen = c.get_image(bob, img).await.expect("member sees it by id");
    assert_eq!(seen.visibility, Visibility::Shared);
    assert!(listed(c, bob).await.is_empty(), "pending: not listed");
    assert!(
        matches!(c.owned_image(bob, img).await, Err(CatalogError::Denied(_))),
        "members cannot modify"
    );
    c.decide(bob, img, true).await.expect("accept");
    assert_eq!(listed(c, bob).await.len(), 1);
    c.decide(bob, img, false).await.expect("reject");
    assert!(listed(c, bob).await.is_empty());
    assert!(matches!(
        c.decide(carol, img, true).await,
        Err(CatalogError::NotFound(_))
    ));
}

/// Only the owner publishes: everybody lists a public image; unpublished,
/// it is the members' again.
async fn publishing(c: &Catalog, alice: &Account, bob: &Account, carol: &Account, img: &str) {
    assert!(matches!(
        c.set_public(bob, img, true).await,
        Err(CatalogError::Denied(_))
    ));
    c.set_public(alice, img, true).await.expect("publish");
    assert_eq!(listed(c, carol).await.len(), 1);
    c.set_public(alice, img, false).await.expect("unpublish");
    assert!(matches!(
        c.get_image(carol, img).await,
        Err(CatalogError::NotFound(_))
    ));
    assert_eq!(
        c.get_image(bob, img)
            .await
            .expect("still a member")
            .visibility,
        Visibility::Shared
    );
}

async fn publishing_needs_the_right(c: &Catalog) {
    let (dave, _) = c.create_account("dave", false, false).await.expect("d");
    let img2 = id();
    c.insert_image(&img2, &dave, "x", "", &[])
        .await
        .expect("insert");
    assert!(
        matches!(
            c.set_public(&dave, &img2, true).await,
            Err(CatalogError::Denied(_))
        ),
        "publishing needs the right"
    );
}
