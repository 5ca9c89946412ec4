//! Reconciling the catalog with the stores: manifests of images the
//! catalog failed are deleted, images it never knew are reported, nothing
//! is touched within the grace period.

use imprint_store::{Store, StoreConfig};

use super::world::{World, on_each_backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphaned_manifests_are_reconciled() {
    on_each_backend(orphans_on).await;
}

async fn orphans_on(w: World) {
    // A capture whose operation the reaper failed although the agent
    // finished: the image row is FAILED, its manifest committed.
    let img = w.capture("alice", "reaped").await;
    let kept = w.capture("alice", "kept").await;
    sqlx::query("UPDATE images SET state = 'failed' WHERE id = $1")
        .bind(&img.id)
        .execute(w.catalog.pool())
        .await
        .expect("fail the row");
    // An image the catalog never knew (an offline `store put`).
    let store =
        Store::open_or_create_dir(&w.store_dir, false, StoreConfig::default()).expect("store");
    let disk = w.tmp.path().join("offline.raw");
    std::fs::write(&disk, vec![7u8; 1 << 20]).expect("disk");
    let offline = imprint_store::capture::capture(
        &store,
        "offline",
        vec![imprint_store::capture::DiskInput {
            name: "vda".into(),
            source: Box::new(imprint_store::source::FileSource::open(&disk).expect("open")),
            base: None,
        }],
        &Default::default(),
        &mut |_| {},
    )
    .expect("put")
    .manifest
    .image_id;
    let stores = vec![("default".to_string(), store.clone())];
    // Within the grace period nothing is touched.
    let r = crate::reconcile::reconcile(&w.catalog, stores.clone(), 3600)
        .await
        .expect("pass");
    assert_eq!(r, crate::reconcile::Reconciled::default());
    let r = crate::reconcile::reconcile(&w.catalog, stores, 0)
        .await
        .expect("pass");
    assert_eq!(r.deleted, [(img.id.clone(), "default".to_string())]);
    assert_eq!(r.unknown, [(offline.to_string(), "default".to_string())]);
    let left: Vec<String> = store
        .list()
        .expect("list")
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert!(
        !left.contains(&img.id),
        "the failed image's manifest is gone"
    );
    assert!(left.contains(&kept.id), "the active image stays");
    assert!(
        left.contains(&offline.to_string()),
        "unknown images are never deleted"
    );
}
