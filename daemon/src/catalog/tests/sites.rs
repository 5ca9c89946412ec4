//! Sites and the locations of images' copies.

use crate::{
    catalog::{CatalogError, DEFAULT_SITE, site_of_host, validate_site_name},
    domain::LocationState,
    testpg::catalogs,
};

#[test]
fn site_names() {
    assert!(validate_site_name("dc-1").is_ok());
    for bad in ["", "DC1", "dc 1", &"x".repeat(64)] {
        assert!(validate_site_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(site_of_host(""), DEFAULT_SITE);
    assert_eq!(site_of_host("dc2"), "dc2");
}

#[tokio::test]
async fn sites_are_named_and_moved() {
    for (_b, c) in catalogs().await {
        c.upsert_site("dc1", "/srv/a").await.expect("dc1");
        c.upsert_site("dc2", "s3://b/dc2").await.expect("dc2");
        c.upsert_site("dc1", "/srv/a2").await.expect("move dc1");
        assert_eq!(c.site("dc1").await.expect("dc1").store, "/srv/a2");
        assert!(matches!(
            c.site("nope").await,
            Err(CatalogError::NotFound(_))
        ));
        assert!(c.upsert_site("Bad", "/x").await.is_err());
        assert!(c.upsert_site("dc3", "").await.is_err());
    }
}

#[tokio::test]
async fn copies_settle_their_locations() {
    for (_b, c) in catalogs().await {
        c.upsert_site("dc1", "/srv/a").await.expect("dc1");
        c.upsert_site("dc2", "s3://b/dc2").await.expect("dc2");
        let (alice, _) = c.create_account("alice", false, false).await.expect("a");
        let img = uuid::Uuid::new_v4().to_string();
        c.insert_image(&img, &alice, "web", "", &[])
            .await
            .expect("image");
        c.add_location(&img, "dc1", LocationState::Available, "")
            .await
            .expect("loc");
        let copy = |rid: &'static str| crate::catalog::NewOperation {
            account_id: &alice.id,
            request_id: Some(rid),
            kind: crate::domain::OpKind::Copy,
            image_id: None,
            host: "h1",
            guest: "dc2",
            agent_request: "",
            new_image: None,
        };
        let (op1, _) = c.begin_operation(&copy("c1")).await.expect("op");
        c.add_location(&img, "dc2", LocationState::Copying, &op1.id)
            .await
            .expect("copy");
        assert!(matches!(
            c.add_location(&img, "dc2", LocationState::Copying, "op-2")
                .await,
            Err(CatalogError::Exists(_))
        ));
        let l = c.locations(&img).await.expect("locations");
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[1].site.as_str(), l[1].state.as_str()),
            ("dc2", "copying")
        );
        c.settle_locations()
            .await
            .expect("running: nothing changes");
        assert_eq!(
            c.locations(&img).await.expect("l")[1].state,
            LocationState::Copying
        );
        let none = crate::catalog::ImageOutcome::None;
        c.finish_operation(
            &op1.id,
            crate::domain::OpState::Failed,
            "boom",
            13,
            "",
            &none,
        )
        .await
        .expect("fail");
        c.settle_locations().await.expect("settle");
        assert_eq!(
            c.locations(&img).await.expect("l").len(),
            1,
            "a failed copy leaves no location"
        );
        let (op2, _) = c.begin_operation(&copy("c2")).await.expect("op");
        c.add_location(&img, "dc2", LocationState::Copying, &op2.id)
            .await
            .expect("again");
        c.finish_operation(&op2.id, crate::domain::OpState::Succeeded, "", 0, "", &none)
            .await
            .expect("ok");
        c.settle_locations().await.expect("settle");
        assert_eq!(
            c.locations(&img).await.expect("l")[1].state,
            LocationState::Available
        );
        c.remove_location(&img, "dc1").await.expect("remove");
        assert_eq!(c.locations(&img).await.expect("l")[0].site, "dc2");
    }
}
