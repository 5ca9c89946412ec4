//! The backend contracts of `imprint_store::backend`, checked on the
//! directory backend and on the S3 backend against a real S3 server, and
//! the S3 backend's own failure modes (credentials, bucket, reachability,
//! retries, multipart).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use common::{Kind, TestStore, s3_server};
use imprint_store::{
    ChunkDigest, ErrorKind, ImageId, Location, Store, StoreConfig,
    backend::{Inserted, WriterInfo},
    s3::{S3Options, S3Store},
    s3_server::BUCKET,
};

fn store(kind: Kind) -> (tempfile::TempDir, TestStore, Store) {
    let tmp = tempfile::tempdir().expect("tmp");
    let ts = TestStore::new(kind, tmp.path(), "store");
    let st = ts.create(StoreConfig::default());
    (tmp, ts, st)
}

fn chunks(st: &Store) -> Vec<(ChunkDigest, u64)> {
    let mut out = Vec::new();
    st.backend()
        .list_chunks(&mut |c| {
            out.push((c.digest, c.size_bytes));
            Ok(())
        })
        .expect("list");
    out.sort_by_key(|c| c.0.to_hex());
    out
}

fn chunks_put_if_absent_touch_read_remove(kind: Kind) {
    let (_tmp, ts, st) = store(kind);
    let b = st.backend();
    let d = ChunkDigest::of(b"chunk one");
    let mut buf = vec![1, 2, 3];
    assert_eq!(
        b.read_chunk(&d, &mut buf).expect_err("absent").kind(),
        ErrorKind::NotFound
    );
    assert!(!b.touch_chunk(&d).expect("touch absent"));
    assert_eq!(
        b.insert_chunk(&d, b"blob-1").expect("insert"),
        Inserted::New
    );
    assert_eq!(
        b.insert_chunk(&d, b"blob-1").expect("again"),
        Inserted::Existed
    );
    b.read_chunk(&d, &mut buf).expect("read");
    assert_eq!(buf, b"blob-1", "whole blob, buffer cleared first");
    assert!(b.touch_chunk(&d).expect("touch"));
    assert_eq!(chunks(&st), vec![(d, 6)]);

    // Recent: kept. Old: removed, and then it is absent.
    let past = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(b.remove_chunk_if_older(&d, past).expect("keep"), None);
    ts.age_chunk(&d.to_hex(), Duration::from_secs(7200));
    assert_eq!(b.remove_chunk_if_older(&d, past).expect("rm"), Some(6));
    assert!(!b.touch_chunk(&d).expect("gone"));
    assert!(chunks(&st).is_empty());
    assert_eq!(b.remove_chunk_if_older(&d, past).expect("absent"), None);
}

fn a_touch_renews_an_old_chunk(kind: Kind) {
    let (_tmp, ts, st) = store(kind);
    let b = st.backend();
    let d = ChunkDigest::of(b"old but reused");
    b.insert_chunk(&d, b"blob").expect("insert");
    ts.age_chunk(&d.to_hex(), Duration::from_secs(7200));
    let cutoff = SystemTime::now() - Duration::from_secs(3600);
    let mut ages = Vec::new();
    b.list_chunks(&mut |c| {
        ages.push(c.modified);
        Ok(())
    })
    .expect("list");
    assert!(ages[0] < cutoff, "aged");
    // A capture reuses it: its age is now the touch.
    assert!(b.touch_chunk(&d).expect("touch"));
    let mut ages = Vec::new();
    b.list_chunks(&mut |c| {
        ages.push(c.modified);
        Ok(())
    })
    .expect("list");
    assert!(ages[0] >= cutoff, "renewed by the touch");
    assert_eq!(b.remove_chunk_if_older(&d, cutoff).expect("rm"), None);
    assert!(b.touch_chunk(&d).expect("kept"));
}

fn images_exist_exactly_when_their_manifest_does(kind: Kind) {
    let (_tmp, _ts, st) = store(kind);
    let b = st.backend();
    let id = ImageId::generate();
    b.write_image_file(&id, "disk0.fidx", b"index")
        .expect("index");
    assert!(b.list_images().expect("list").is_empty());
    let incomplete = b.list_incomplete().expect("incomplete");
    assert_eq!(incomplete.len(), 1);
    assert_eq!(incomplete[0].0, id);
    assert_eq!(
        b.read_manifest(&id).expect_err("uncommitted").kind(),
        ErrorKind::NotFound
    );
    b.commit_manifest(&id, b"manifest").expect("commit");
    assert_eq!(b.list_images().expect("list"), vec![id.clone()]);
    assert!(b.list_incomplete().expect("incomplete").is_empty());
    assert_eq!(b.read_manifest(&id).expect("read"), b"manifest");
    assert_eq!(
        b.read_image_file(&id, "disk0.fidx").expect("read"),
        b"index"
    );
    b.delete_image(&id).expect("delete");
    assert!(b.list_images().expect("list").is_empty());
    assert!(b.list_incomplete().expect("incomplete").is_empty());
    assert_eq!(
        b.read_image_file(&id, "disk0.fidx")
            .expect_err("files gone")
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        b.delete_image(&id).expect_err("twice").kind(),
        ErrorKind::NotFound
    );
}

fn writers_register_heartbeat_and_leave(kind: Kind) {
    let (_tmp, _ts, st) = store(kind);
    let b = st.backend();
    let info = WriterInfo {
        writer_id: "w-1".into(),
        image_id: ImageId::generate(),
        host: "h".into(),
        pid: 7,
        boot_id: "b".into(),
        started_unix: 1,
    };
    b.register_writer(&info).expect("register");
    b.heartbeat_writer("w-1").expect("heartbeat");
    let w = b.list_writers().expect("list");
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].info, info);
    assert!(w[0].heartbeat > SystemTime::now() - Duration::from_secs(60));
    assert_eq!(
        b.register_writer(&WriterInfo {
            writer_id: "../x".into(),
            ..info.clone()
        })
        .expect_err("bad id")
        .kind(),
        ErrorKind::InvalidArgument
    );
    b.unregister_writer("w-1").expect("unregister");
    b.unregister_writer("w-1").expect("twice is fine");
    assert!(b.list_writers().expect("list").is_empty());
}

fn a_store_is_created_once(kind: Kind) {
    let (_tmp, ts, st) = store(kind);
    let again = ts.reopen();
    assert_eq!(again.config(), st.config());
    // Creating over an existing store is a conflict; opening it is fine.
    let e = st
        .backend()
        .create_config(b"{}")
        .expect_err("second create");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(
        Store::open_or_create_at(&ts.location, false, StoreConfig::default())
            .expect("open existing")
            .config(),
        st.config()
    );
}

on_both_backends!(
    chunks_put_if_absent_touch_read_remove,
    a_touch_renews_an_old_chunk,
    images_exist_exactly_when_their_manifest_does,
    writers_register_heartbeat_and_leave,
    a_store_is_created_once,
);

#[test]
fn s3_wrong_credentials_are_named() {
    let server = s3_server();
    let mut o = server.options("creds");
    o.secret_access_key = Some("wrong".into());
    let e = S3Store::connect(o).expect_err("bad secret");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("refused the credentials"), "{e}");
}

#[test]
fn s3_missing_bucket_is_named() {
    let server = s3_server();
    let mut o = server.options("x");
    o.bucket = "no-such-bucket".into();
    let e = S3Store::connect(o).expect_err("no bucket");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string()
            .contains("bucket \"no-such-bucket\" does not exist"),
        "{e}"
    );
}

#[test]
fn s3_unreachable_server_is_unavailable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut o = S3Options::new(BUCKET, "p");
    o.endpoint = Some(format!("http://127.0.0.1:{port}"));
    o.access_key_id = Some("a".into());
    o.secret_access_key = Some("b".into());
    o.max_retries = 1;
    o.initial_backoff = Duration::from_millis(10);
    let e = S3Store::connect(o).expect_err("nobody listens");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("cannot reach"), "{e}");
}

#[test]
fn s3_prefix_with_foreign_objects_is_not_taken_over() {
    let server = s3_server();
    let dir = server.store_dir("foreign");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("someone-elses.txt"), b"data").expect("write");
    let e = Store::open_or_create_at(
        &Location::S3(server.options("foreign")),
        false,
        StoreConfig::default(),
    )
    .expect_err("not empty");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = Store::open_at(&Location::S3(server.options("foreign")), false).expect_err("no store");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("not an imprint store"), "{e}");
}

#[test]
fn s3_large_objects_go_up_in_parts() {
    let server = s3_server();
    let mut o = server.options("multipart");
    o.multipart_threshold = 5 << 20;
    o.part_size = 5 << 20;
    let s3 = Arc::new(S3Store::connect(o).expect("connect"));
    let st = Store::create(s3.clone(), StoreConfig::default()).expect("create");
    let id = ImageId::generate();
    let big: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    st.backend()
        .write_image_file(&id, "disk0.fidx", &big)
        .expect("write 12 MiB");
    assert_eq!(s3.stats().multipart_uploads.load(Ordering::Relaxed), 1);
    assert_eq!(
        st.backend()
            .read_image_file(&id, "disk0.fidx")
            .expect("read"),
        big
    );
}

/// A TCP proxy to the test server that answers the first `fail` connections
/// with `503 Slow Down` and closes them.
fn flaky_proxy(upstream: &str, fail: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstream = upstream.trim_start_matches("http://").to_string();
    let failed = Arc::new(AtomicUsize::new(0));
    let f = failed.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            if f.load(Ordering::SeqCst) < fail {
                f.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 65536];
                let _ = client.read(&mut buf);
                let body = "<Error><Code>SlowDown</Code></Error>";
                let _ = write!(
                    client,
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                continue;
            }
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c2, mut s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (format!("http://{addr}"), failed)
}

#[test]
fn s3_server_errors_are_retried_with_backoff() {
    let server = s3_server();
    let (endpoint, failed) = flaky_proxy(&server.endpoint, 3);
    let mut o = server.options("retry");
    o.endpoint = Some(endpoint);
    o.max_retries = 5;
    o.initial_backoff = Duration::from_millis(10);
    // Opening lists the bucket: three 503s, then it gets through.
    let st = Store::open_or_create_at(&Location::S3(o.clone()), false, StoreConfig::default())
        .expect("create through a flaky endpoint");
    assert_eq!(failed.load(Ordering::SeqCst), 3, "all three were retried");
    let d = ChunkDigest::of(b"x");
    st.backend().insert_chunk(&d, b"blob").expect("insert");

    // More failures in a row than retries: a clear error, nothing stored.
    let (endpoint, _) = flaky_proxy(&server.endpoint, 100);
    o.endpoint = Some(endpoint);
    o.max_retries = 2;
    let e = Store::open_at(&Location::S3(o), false).expect_err("gives up");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

/// A GC run that died between moving a chunk aside and settling it: the
/// next run puts back the asides of chunks touched since (a capture relies
/// on them) and drops the others.
#[test]
fn s3_asides_left_by_a_dead_gc_run_are_settled() {
    let (_tmp, ts, st) = store(Kind::S3);
    let b = st.backend();
    let (kept, gone) = (
        ChunkDigest::of(b"touched since"),
        ChunkDigest::of(b"not touched"),
    );
    for d in [&kept, &gone] {
        b.insert_chunk(d, d.to_hex().as_bytes()).expect("insert");
        // What the dead run left: the chunk moved aside, aged.
        let hex = d.to_hex();
        let aside_dir = ts.files.join("aside");
        std::fs::create_dir_all(&aside_dir).expect("aside dir");
        let aside = aside_dir.join(format!("{hex}-dead"));
        std::fs::rename(ts.chunk_file(&hex), &aside).expect("move aside");
        common::age(&aside, Duration::from_secs(7200));
        let marker = ts.files.join("touch").join(&hex[..4]).join(&hex);
        common::age(&marker, Duration::from_secs(7200));
    }
    // A capture touches `kept` now (it reports absent; the marker is new).
    assert!(!b.touch_chunk(&kept).expect("touch"));
    let cutoff = SystemTime::now() - Duration::from_secs(60);
    b.remove_stray_files(cutoff, false).expect("settle");
    let mut buf = Vec::new();
    b.read_chunk(&kept, &mut buf).expect("put back");
    assert_eq!(buf, kept.to_hex().as_bytes());
    assert_eq!(
        b.read_chunk(&gone, &mut buf).expect_err("dropped").kind(),
        ErrorKind::NotFound
    );
    assert!(
        std::fs::read_dir(ts.files.join("aside"))
            .expect("ls")
            .next()
            .is_none(),
        "no aside left"
    );
}
