//! Damaged chunks: a deploy that reads one fails with DATA_LOSS, makes no
//! guest and marks the image; a full read of the repaired image clears the
//! mark.

use imprint_proto::v1 as pb;
use tonic::Code;

use super::world::{Caller, World, on_each_backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_chunks_fail_deploys_with_data_loss_and_mark_the_image() {
    on_each_backend(damaged_on).await;
}

async fn damaged_on(w: World) {
    use Caller::As;
    let img = w.capture("alice", "to-damage").await;
    assert_eq!(img.damage, "");
    // Flip the last byte of every stored chunk, as a failing disk would.
    let mut chunks = Vec::new();
    let mut dirs = vec![w.store_dir.join("chunks")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                chunks.push((p.clone(), std::fs::read(&p).expect("read")));
            }
        }
    }
    assert!(!chunks.is_empty());
    for (p, bytes) in &chunks {
        let mut b = bytes.clone();
        let n = b.len() - 1;
        b[n] ^= 0xff;
        std::fs::write(p, b).expect("damage");
    }
    let deploy = |name: &str| pb::DeployImageRequest {
        keep_identity: true,
        image_id: img.id.clone(),
        host: "h1".into(),
        guest_name: name.into(),
        ..Default::default()
    };
    let mut c = w.images.clone();
    let op = c
        .deploy_image(w.req(As("alice"), deploy("from-damaged")))
        .await
        .expect("deploy accepted")
        .into_inner();
    let done = w.wait(As("alice"), &op).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32);
    assert_eq!(done.error_code, Code::DataLoss as i32, "{}", done.error);
    let marked = w.get("alice", &img.id).await.expect("image");
    assert!(marked.damage.contains(&op.id), "{}", marked.damage);
    assert_eq!(marked.state, pb::ImageState::Active as i32, "still listed");
    assert!(
        !w.hv
            .guests
            .lock()
            .expect("lock")
            .contains_key("from-damaged"),
        "no half-made guest"
    );
    // Repaired (say, copied back from another site): a full read finds it
    // whole and clears the mark.
    for (p, bytes) in &chunks {
        std::fs::write(p, bytes).expect("repair");
    }
    let op = c
        .deploy_image(w.req(As("alice"), deploy("from-repaired")))
        .await
        .expect("deploy accepted")
        .into_inner();
    let done = w.wait(As("alice"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    assert_eq!(w.get("alice", &img.id).await.expect("image").damage, "");
}
