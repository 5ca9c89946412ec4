//! Copies between sites: an image copied to a second site's store, its
//! bytes counted at both, a location removed, the image deleted from the
//! site that has it.

use std::{path::Path, time::Duration};

use imprint_proto::v1 as pb;
use imprint_store::{Store, StoreConfig};
use tonic::Code;

use super::world::{Caller, World, code, on_each_backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_between_sites() {
    on_each_backend(copies_between_sites_on).await;
}

async fn copies_between_sites_on(w: World) {
    let other = tempfile::tempdir().expect("tmp");
    let dc2 = other.path().join("dc2");
    let (img, at_one_site) = sites_and_an_image(&w, &dc2).await;
    bad_copies_change_nothing(&w, &img, &dc2).await;
    copy_to_dc2(&w, &img, &dc2, at_one_site).await;
    remove_locations_and_delete(&w, &img, &dc2).await;
}

/// Sites default, dc2 (a directory store at `dc2`) and alias (the default
/// store under another name); an image of alice's at the default site, and
/// what deleting it frees there.
async fn sites_and_an_image(w: &World, dc2: &Path) -> (pb::Image, u64) {
    // A site's directory store exists before copies go there (agents
    // create only S3 prefixes).
    Store::open_or_create_dir(dc2, false, StoreConfig::default()).expect("dc2 store");
    let default_store = w.store_dir.to_str().expect("utf8");
    w.catalog
        .upsert_site(crate::catalog::DEFAULT_SITE, default_store)
        .await
        .expect("default");
    w.catalog
        .upsert_site("dc2", dc2.to_str().expect("utf8"))
        .await
        .expect("dc2");
    // The default store under another name.
    w.catalog
        .upsert_site("alias", &format!("{default_store}/"))
        .await
        .expect("alias");
    let img = w.capture("alice", "web").await;
    assert_eq!(img.locations.len(), 1);
    assert_eq!(img.locations[0].site, "default");
    // What deleting frees at one site, once the accounting ran.
    let mut at_one_site = 0;
    for _ in 0..100 {
        at_one_site = w.get("alice", &img.id).await.expect("get").exclusive_bytes;
        if at_one_site > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(at_one_site > 0, "the only image holds its chunks alone");
    (img, at_one_site)
}

/// `who` copies `img` to `site`.
async fn copy(
    w: &World,
    img: &pb::Image,
    who: &'static str,
    site: &str,
) -> Result<pb::Operation, tonic::Status> {
    let req = w.req(
        Caller::As(who),
        pb::CopyImageRequest {
            image_id: img.id.clone(),
            site: site.into(),
            ..Default::default()
        },
    );
    w.images
        .clone()
        .copy_image(req)
        .await
        .map(tonic::Response::into_inner)
}

/// `who` removes `img`'s location at `site`.
async fn remove(
    w: &World,
    img: &pb::Image,
    who: &'static str,
    site: &str,
) -> Result<pb::Image, tonic::Status> {
    let req = w.req(
        Caller::As(who),
        pb::RemoveImageLocationRequest {
            image_id: img.id.clone(),
            site: site.into(),
        },
    );
    w.images
        .clone()
        .remove_image_location(req)
        .await
        .map(tonic::Response::into_inner)
}

/// Bad copies change nothing.
async fn bad_copies_change_nothing(w: &World, img: &pb::Image, dc2: &Path) {
    assert_eq!(code(copy(w, img, "alice", "nowhere").await), Code::NotFound);
    assert_eq!(
        code(copy(w, img, "alice", "default").await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(copy(w, img, "alice", "alias").await),
        Code::InvalidArgument
    );
    assert_eq!(code(copy(w, img, "alice", "").await), Code::InvalidArgument);
    assert_eq!(
        code(copy(w, img, "bob", "dc2").await),
        Code::NotFound,
        "not bob's"
    );
    assert_eq!(code(copy(w, img, "dave", "dc2").await), Code::NotFound);
    assert_eq!(
        w.get("alice", &img.id).await.expect("img").locations.len(),
        1
    );
    assert!(
        !dc2.join("images").join(&img.id).exists(),
        "no copy started"
    );
}

/// The copy to dc2: every chunk sent and read back, the bytes counted at
/// both sites, both locations available.
async fn copy_to_dc2(w: &World, img: &pb::Image, dc2: &Path, at_one_site: u64) {
    let op = copy(w, img, "alice", "dc2").await.expect("copy");
    assert_eq!(op.kind, "copy");
    let done = w.wait(Caller::As("alice"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let r = done.copy.expect("copy result");
    assert!(
        r.chunks_total > 0 && r.chunks_sent == r.chunks_total,
        "{r:?}"
    );
    assert_eq!(r.bytes_verified, r.bytes_sent, "all of it read back");
    // "Freed if deleted" counts the bytes at every site that holds it (the
    // alias of the default store counts once).
    let mut freed = 0;
    for _ in 0..100 {
        freed = w.get("alice", &img.id).await.expect("get").exclusive_bytes;
        if freed == 2 * at_one_site {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(freed, 2 * at_one_site, "both sites' bytes");
    let sites: Vec<(String, i32)> = w
        .get("alice", &img.id)
        .await
        .expect("img")
        .locations
        .into_iter()
        .map(|l| (l.site, l.state))
        .collect();
    let available = pb::LocationState::Available as i32;
    assert_eq!(
        sites,
        [
            ("dc2".to_string(), available),
            ("default".to_string(), available)
        ]
    );
    assert!(dc2.join("images").join(&img.id).join("manifest").exists());
    // A second copy to a site that has it is refused.
    assert_eq!(
        code(copy(w, img, "alice", "dc2").await),
        Code::AlreadyExists
    );
}

/// Locations are removed by the owner, never the last one; deleting the
/// image removes it from the site that has it.
async fn remove_locations_and_delete(w: &World, img: &pb::Image, dc2: &Path) {
    assert_eq!(code(remove(w, img, "bob", "dc2").await), Code::NotFound);
    assert_eq!(
        code(remove(w, img, "alice", "nowhere").await),
        Code::NotFound
    );
    let after = remove(w, img, "alice", "default")
        .await
        .expect("remove default");
    assert_eq!(after.locations.len(), 1);
    assert!(
        !w.store_dir
            .join("images")
            .join(&img.id)
            .join("manifest")
            .exists()
    );
    assert_eq!(
        code(remove(w, img, "alice", "dc2").await),
        Code::FailedPrecondition,
        "the last copy"
    );
    // Deleting the image removes it from the site that has it.
    let mut images = w.images.clone();
    let del = images
        .delete_image(w.req(
            Caller::As("alice"),
            pb::DeleteImageRequest {
                id: img.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(
        del.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        del.error
    );
    assert!(!dc2.join("images").join(&img.id).join("manifest").exists());
}
