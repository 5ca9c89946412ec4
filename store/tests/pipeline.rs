//! Capture → store → deploy through the public API, plus every bad-input
//! case of the store issue. Each test runs twice: on a directory store in a
//! temporary folder (`dir::`) and on an S3 store in a real S3 server
//! (`s3::`); the few that are about directories only run once.

mod common;

use std::{
    fs::{self, File},
    io::{self, Cursor},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use common::{Kind, TestStore, age};
use imprint_store::{
    ChunkDigest, ErrorKind, ImageId, Manifest, Store, StoreConfig,
    backend::{Backend, ChunkInfo, ChunkStore, ImageStore, Inserted, WriterInfo, WriterRecord},
    capture::{CaptureOptions, CaptureReport, DiskInput, capture},
    gc::{GcOptions, collect_garbage},
    restore::{RestoreOptions, restore_disk},
    source::{DiskSource, FileSource, FileTarget, ReadSeekSource, WriteSeekTarget},
    usage::usage,
    verify::{verify_images, verify_images_until, verify_store},
};
use sha2::{Digest, Sha256};

const CS: u32 = 64 * 1024;

fn small_config() -> StoreConfig {
    StoreConfig {
        chunk_size: CS,
        ..Default::default()
    }
}

fn new_store(kind: Kind, dir: &Path) -> (TestStore, Store) {
    let ts = TestStore::new(kind, dir, "store");
    let st = ts.create(small_config());
    (ts, st)
}

/// A disk with data, a hole, an explicit zero chunk, repeated content and a
/// short last chunk.
fn make_disk(path: &Path, seed: u8) -> Vec<u8> {
    let size = 20 * CS as usize + 1234;
    let mut data = vec![0u8; size];
    for (i, b) in data[..3 * CS as usize].iter_mut().enumerate() {
        *b = ((i * 7) as u8)
            .wrapping_add(seed)
            .wrapping_add((i / CS as usize) as u8 * 13);
    }
    // chunk 5 = chunk 0 (dedup inside one image)
    let c0 = data[..CS as usize].to_vec();
    data[5 * CS as usize..6 * CS as usize].copy_from_slice(&c0);
    // noise that zstd cannot shrink
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    for b in &mut data[8 * CS as usize..9 * CS as usize] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    for b in &mut data[20 * CS as usize..] {
        *b = 0xAB;
    }
    let f = File::create(path).expect("create disk");
    f.set_len(size as u64).expect("size");
    // write only non-zero chunks so the rest stays a hole
    for (i, c) in data.chunks(CS as usize).enumerate() {
        if c.iter().any(|&b| b != 0) {
            f.write_all_at(c, i as u64 * u64::from(CS)).expect("write");
        }
    }
    data
}

/// A temporary store and a test disk made from `seed`.
struct World {
    tmp: tempfile::TempDir,
    ts: TestStore,
    store: Store,
    disk: PathBuf,
    data: Vec<u8>,
}

fn world(kind: Kind, seed: u8) -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let (ts, store) = new_store(kind, tmp.path());
    let disk = tmp.path().join("vda.raw");
    let data = make_disk(&disk, seed);
    World {
        tmp,
        ts,
        store,
        disk,
        data,
    }
}

/// [`world`] with the disk captured as image `img`.
fn captured(kind: Kind, seed: u8) -> (World, Manifest) {
    let w = world(kind, seed);
    let m = capture_files(&w.store, "img", &[&w.disk])
        .expect("capture")
        .manifest;
    (w, m)
}

fn opts() -> CaptureOptions {
    CaptureOptions {
        threads: 3,
        ..Default::default()
    }
}

fn capture_files(
    store: &Store,
    name: &str,
    paths: &[&Path],
) -> imprint_store::Result<CaptureReport> {
    let disks = paths
        .iter()
        .map(|p| DiskInput {
            name: p.file_name().expect("name").to_string_lossy().into_owned(),
            source: Box::new(FileSource::open(p).expect("open")),
            base: None,
        })
        .collect();
    capture(store, name, disks, &opts(), &mut |_| {})
}

fn restore_to_vec(store: &Store, m: &Manifest, disk: usize) -> imprint_store::Result<Vec<u8>> {
    let size = m.disks[disk].size_bytes as usize;
    let mut t = WriteSeekTarget::new(Cursor::new(vec![0u8; size]), true);
    restore_disk(
        store,
        m,
        disk,
        &mut t,
        &RestoreOptions::default(),
        &mut |_| {},
    )?;
    Ok(t.into_inner().into_inner())
}

/// Disk 0 of `m` to `target` with default options.
fn restore0(
    store: &Store,
    m: &Manifest,
    target: &mut dyn imprint_store::source::DiskTarget,
) -> imprint_store::Result<imprint_store::restore::RestoreStats> {
    restore_disk(store, m, 0, target, &RestoreOptions::default(), &mut |_| {})
}

fn round_trip_is_byte_identical_and_sha256_matches(kind: Kind) {
    let World {
        tmp,
        ts,
        store,
        disk,
        data,
    } = world(kind, 1);
    let mut calls = 0;
    let report = capture(
        &store,
        "golden",
        vec![DiskInput {
            name: "vda".into(),
            source: Box::new(FileSource::open(&disk).expect("open")),
            base: None,
        }],
        &opts(),
        &mut |p| {
            calls += 1;
            assert!(p.bytes_done <= p.bytes_total);
        },
    )
    .expect("capture");
    assert!(calls >= 1, "progress is reported");
    let s = &report.stats;
    assert_eq!(s.bytes_total, data.len() as u64);
    // chunks 0,1,2,5,8,20 have data; 5 repeats 0
    assert_eq!(s.chunks_new, 5);
    assert_eq!(s.chunks_deduplicated, 1);
    assert_eq!(s.chunks_zero, 15);
    assert!(s.bytes_read < s.bytes_total, "holes are not read: {s:?}");
    let m = &report.manifest;
    assert_eq!(m.disks[0].sha256, Some(hex::encode(Sha256::digest(&data))));
    assert_eq!(m.disks[0].zero_chunks, 15);

    // Deploy to a fresh sparse file and to any Write + Seek.
    let out = tmp.path().join("out.raw");
    let mut target = FileTarget::create(&out, data.len() as u64).expect("target");
    let rs = restore0(&store, m, &mut target).expect("restore");
    assert_eq!(fs::read(&out).expect("read"), data);
    assert_eq!(rs.zero_bytes, 15 * u64::from(CS));
    assert_eq!(restore_to_vec(&store, m, 0).expect("restore"), data);

    // Reopened store resolves by id and by name.
    let reopened = ts.reopen();
    assert_eq!(
        reopened.resolve("golden").expect("by name").image_id,
        m.image_id
    );
    assert_eq!(
        reopened
            .resolve(&m.image_id.to_string())
            .expect("by id")
            .name,
        "golden"
    );
    assert!(verify_store(&reopened, 2).expect("verify").is_ok());
}

fn disk_sha256_can_be_skipped(kind: Kind) {
    let World {
        tmp: _tmp,
        ts: _,
        store,
        disk,
        data,
    } = world(kind, 17);
    let o = CaptureOptions {
        disk_sha256: false,
        ..opts()
    };
    let src = Box::new(FileSource::open(&disk).expect("open"));
    let r = capture(
        &store,
        "nosha",
        vec![DiskInput {
            name: "vda".into(),
            source: src,
            base: None,
        }],
        &o,
        &mut |_| {},
    )
    .expect("capture");
    assert_eq!(r.manifest.disks[0].sha256, None);
    let again = store.manifest(&r.manifest.image_id).expect("reread");
    assert_eq!(again, r.manifest);
    assert_eq!(
        restore_to_vec(&store, &r.manifest, 0).expect("restore"),
        data
    );
}

fn caller_chosen_image_id_is_used_and_never_overwritten(kind: Kind) {
    let (w, first) = captured(kind, 18);
    let chosen: ImageId = "0b9c2f9e-5a4e-4d3b-9f57-2f1d7a3c4e11".parse().expect("id");
    let with_id = |id: &ImageId| CaptureOptions {
        image_id: Some(id.clone()),
        ..opts()
    };
    let input = || {
        vec![DiskInput {
            name: "vda".into(),
            source: Box::new(FileSource::open(&w.disk).expect("open")) as Box<dyn DiskSource>,
            base: None,
        }]
    };
    let r = capture(&w.store, "chosen", input(), &with_id(&chosen), &mut |_| {})
        .expect("capture under a chosen id");
    assert_eq!(r.manifest.image_id, chosen);
    assert_eq!(w.store.manifest(&chosen).expect("stored").name, "chosen");
    // Capturing again under the id of a committed image is refused and
    // leaves that image as it was.
    let e = capture(
        &w.store,
        "again",
        input(),
        &with_id(&first.image_id),
        &mut |_| {},
    )
    .expect_err("id in use");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(w.store.manifest(&first.image_id).expect("intact"), first);
}

/// A target that reports room but runs out of space after `room` bytes.
struct FullDisk {
    size: u64,
    room: u64,
    written: u64,
}

impl imprint_store::source::DiskTarget for FullDisk {
    fn size_bytes(&mut self) -> io::Result<u64> {
        Ok(self.size)
    }
    fn write_all_at(&mut self, _offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.written + buf.len() as u64 > self.room {
            return Err(io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        self.written += buf.len() as u64;
        Ok(())
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn deploy_target_full_is_storage_full(kind: Kind) {
    let (
        World {
            tmp: _tmp,
            ts: _,
            store,
            disk: _,
            data,
        },
        m,
    ) = captured(kind, 18);
    let mut t = FullDisk {
        size: data.len() as u64,
        room: 2 * u64::from(CS),
        written: 0,
    };
    let err = restore0(&store, &m, &mut t).expect_err("full");
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert!(err.to_string().contains(&m.image_id.to_string()), "{err}");
}

fn deploy_over_used_target_zeroes_old_bytes(kind: Kind) {
    let (
        World {
            tmp,
            ts: _,
            store,
            disk: _,
            data,
        },
        m,
    ) = captured(kind, 2);
    let out = tmp.path().join("used.raw");
    fs::write(&out, vec![0x55u8; data.len() + 4096]).expect("old data");
    let mut target = FileTarget::open_existing(&out).expect("open");
    restore0(&store, &m, &mut target).expect("restore");
    let got = fs::read(&out).expect("read");
    assert_eq!(&got[..data.len()], &data[..]);

    let mut t = WriteSeekTarget::new(Cursor::new(vec![0x77u8; data.len()]), false);
    restore0(&store, &m, &mut t).expect("restore");
    assert_eq!(t.into_inner().into_inner(), data);
}

fn recapture_stores_only_what_changed(kind: Kind) {
    let World {
        tmp: _tmp,
        ts: _,
        store,
        disk,
        data: _,
    } = world(kind, 3);
    let first = capture_files(&store, "v1", &[&disk]).expect("first");
    // Change 100 bytes inside chunk 1 and write into a hole (chunk 12).
    let f = File::options().write(true).open(&disk).expect("open");
    f.write_all_at(&[0xEE; 100], u64::from(CS) + 10)
        .expect("write");
    f.write_all_at(b"new data", 12 * u64::from(CS))
        .expect("write");
    drop(f);
    let second = capture_files(&store, "v2", &[&disk]).expect("second");
    assert_eq!(second.stats.chunks_new, 2, "{:?}", second.stats);
    assert_eq!(
        second.stats.chunks_deduplicated,
        first.stats.chunks_new + first.stats.chunks_deduplicated - 1
    );
    assert_eq!(
        restore_to_vec(&store, &second.manifest, 0).expect("restore"),
        fs::read(&disk).expect("read")
    );
}

/// A source that knows which bytes changed since its base (as a dirty
/// bitmap does): `changed` ranges, everything else clean.
struct Tracked {
    inner: FileSource,
    changed: Vec<(u64, u64)>,
    asked: Arc<AtomicUsize>,
}

impl DiskSource for Tracked {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact_at(offset, buf)
    }
    fn may_have_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        self.inner.may_have_data(offset, len)
    }
    fn may_have_changed(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .changed
            .iter()
            .any(|&(o, l)| o < offset + len && offset < o + l))
    }
}

fn incremental_capture_reads_only_changed_chunks(kind: Kind) {
    let World {
        tmp: _tmp,
        ts: _,
        store,
        disk,
        data: _,
    } = world(kind, 4);
    let first = capture_files(&store, "v1", &[&disk]).expect("first");
    let base = store
        .read_index(&first.manifest, 0)
        .expect("index")
        .digests()
        .to_vec();
    // Change chunk 1 and write into a hole (chunk 12).
    let f = File::options().write(true).open(&disk).expect("open");
    f.write_all_at(&[0xEE; 100], u64::from(CS) + 10)
        .expect("write");
    f.write_all_at(b"new data", 12 * u64::from(CS))
        .expect("write");
    drop(f);
    let asked = Arc::new(AtomicUsize::new(0));
    let tracked = |changed: Vec<(u64, u64)>| DiskInput {
        name: "vda.raw".into(),
        source: Box::new(Tracked {
            inner: FileSource::open(&disk).expect("open"),
            changed,
            asked: asked.clone(),
        }),
        base: Some(base.clone()),
    };
    let changed = vec![(u64::from(CS) + 10, 100), (12 * u64::from(CS), 8)];
    let second =
        capture(&store, "v2", vec![tracked(changed)], &opts(), &mut |_| {}).expect("incremental");
    let st = &second.stats;
    assert_eq!(
        asked.load(Ordering::Relaxed),
        base.len(),
        "every chunk asked"
    );
    assert_eq!(
        st.bytes_read,
        2 * u64::from(CS),
        "only the changed chunks: {st:?}"
    );
    assert_eq!(st.chunks_new, 2, "{st:?}");
    let data_chunks = base.iter().filter(|d| !d.is_zero_chunk()).count() as u64;
    assert_eq!(st.chunks_reused, data_chunks - 1, "{st:?}");
    assert_eq!(st.bytes_total, fs::metadata(&disk).expect("meta").len());
    assert_eq!(
        restore_to_vec(&store, &second.manifest, 0).expect("restore"),
        fs::read(&disk).expect("read"),
        "the new image is the disk now"
    );
    // No SHA-256 without every byte.
    assert_eq!(second.manifest.disks[0].sha256, None);
    // A base of another shape is refused.
    let short = DiskInput {
        base: Some(base[1..].to_vec()),
        ..tracked(vec![])
    };
    let err = capture(&store, "v3", vec![short], &opts(), &mut |_| {}).expect_err("short base");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    // A base whose chunks are gone (its image deleted and collected) fails
    // the capture: the bytes were not read.
    store
        .delete_image(&first.manifest.image_id)
        .expect("delete");
    store
        .delete_image(&second.manifest.image_id)
        .expect("delete");
    collect_garbage(
        &store,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .expect("gc");
    let err =
        capture(&store, "v4", vec![tracked(vec![])], &opts(), &mut |_| {}).expect_err("base gone");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("of the base"), "{err}");
    assert_no_image_left(&store);
}

fn several_disks_and_an_empty_one(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_ts, store) = new_store(kind, tmp.path());
    let a = tmp.path().join("a.raw");
    let b = tmp.path().join("b.raw");
    let c = tmp.path().join("empty.raw");
    let da = make_disk(&a, 4);
    let db = make_disk(&b, 5);
    File::create(&c).expect("empty");
    let m = capture_files(&store, "multi", &[&a, &b, &c])
        .expect("capture")
        .manifest;
    assert_eq!(m.disks.len(), 3);
    assert_eq!(restore_to_vec(&store, &m, 0).expect("a"), da);
    assert_eq!(restore_to_vec(&store, &m, 1).expect("b"), db);
    assert!(restore_to_vec(&store, &m, 2).expect("c").is_empty());
    assert_eq!(m.disks[2].sha256, Some(hex::encode(Sha256::digest(b""))));
}

fn any_read_seek_source_works(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_ts, store) = new_store(kind, tmp.path());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i / 1000) as u8).collect();
    let r = capture(
        &store,
        "cursor",
        vec![DiskInput {
            name: "mem".into(),
            source: Box::new(ReadSeekSource::new(Cursor::new(data.clone())).expect("src")),
            base: None,
        }],
        &opts(),
        &mut |_| {},
    )
    .expect("capture");
    assert_eq!(
        restore_to_vec(&store, &r.manifest, 0).expect("restore"),
        data
    );
}

fn target_too_small_is_refused_before_writing(kind: Kind) {
    let (
        World {
            tmp: _tmp,
            ts: _,
            store,
            disk: _,
            data,
        },
        m,
    ) = captured(kind, 6);
    let mut t = WriteSeekTarget::new(Cursor::new(vec![9u8; data.len() - 1]), false);
    let err = restore0(&store, &m, &mut t).expect_err("too small");
    assert_eq!(err.kind(), ErrorKind::TargetTooSmall);
    assert!(err.to_string().contains(&m.image_id.to_string()), "{err}");
    assert!(
        t.into_inner().into_inner().iter().all(|&b| b == 9),
        "target untouched"
    );
}

fn missing_and_corrupt_chunks_are_named(kind: Kind) {
    let World {
        tmp: _tmp,
        ts,
        store,
        disk,
        data: _,
    } = world(kind, 7);
    let m = capture_files(&store, "img", &[&disk])
        .expect("capture")
        .manifest;
    let index = store.read_index(&m, 0).expect("index");
    let data_chunks: Vec<ChunkDigest> = index
        .digests()
        .iter()
        .filter(|d| !d.is_zero_chunk())
        .copied()
        .collect();
    let (missing, flipped, truncated) = (data_chunks[0], data_chunks[1], data_chunks[2]);

    fs::remove_file(ts.chunk_file(&missing.to_hex())).expect("rm");
    let err = restore_to_vec(&store, &m, 0).expect_err("missing");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains(&missing.to_hex()), "{err}");

    let p = ts.chunk_file(&flipped.to_hex());
    let mut bytes = fs::read(&p).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&p, &bytes).expect("write");
    let p = ts.chunk_file(&truncated.to_hex());
    let bytes = fs::read(&p).expect("read");
    fs::write(&p, &bytes[..bytes.len() / 2]).expect("truncate");

    // A verify that is cancelled stops with CANCELLED, not a verdict.
    let stop = std::sync::atomic::AtomicBool::new(true);
    let e = verify_images_until(&store, std::slice::from_ref(&m), 2, Some(&stop))
        .expect_err("cancelled");
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    let report = verify_images(&store, std::slice::from_ref(&m), 2).expect("verify");
    assert!(!report.is_ok());
    assert_eq!(report.missing.len(), 1);
    assert_eq!(report.missing[0].digest, missing.to_hex());
    assert_eq!(report.missing[0].images, vec![m.image_id.to_string()]);
    let mut corrupt: Vec<&str> = report.corrupt.iter().map(|p| p.digest.as_str()).collect();
    corrupt.sort();
    let mut expect = vec![flipped.to_hex(), truncated.to_hex()];
    expect.sort();
    assert_eq!(corrupt, expect);
    assert!(
        report
            .corrupt
            .iter()
            .any(|p| p.reason.contains("truncated")),
        "{:?}",
        report.corrupt
    );

    // Restore the missing one: deploy now fails on a corrupt chunk instead.
    fs::write(ts.chunk_file(&missing.to_hex()), b"junk").expect("junk");
    let err = restore_to_vec(&store, &m, 0).expect_err("corrupt");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

fn unknown_manifest_version_is_reported(kind: Kind) {
    let World {
        tmp: _tmp,
        ts,
        store,
        disk,
        data: _,
    } = world(kind, 8);
    let m = capture_files(&store, "img", &[&disk])
        .expect("capture")
        .manifest;
    let path = ts.image_file(&m.image_id.to_string(), "manifest");
    let mut bytes = fs::read(&path).expect("read");
    bytes[7] = 2;
    fs::write(&path, bytes).expect("write");
    let err = store.manifest(&m.image_id).expect_err("v2");
    assert_eq!(err.kind(), ErrorKind::UnsupportedVersion);
    assert!(err.to_string().contains(&m.image_id.to_string()), "{err}");
    // GC refuses to sweep past an unreadable manifest.
    let err = collect_garbage(&store, &GcOptions::default()).expect_err("gc");
    assert!(err.to_string().contains("GC stopped"), "{err}");
}

#[test]
fn opening_things_that_are_not_stores() {
    let tmp = tempfile::tempdir().expect("tmp");
    let err = Store::open_dir(&tmp.path().join("nope"), false).expect_err("missing");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = Store::open_dir(tmp.path(), false).expect_err("empty dir");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("not an imprint store"), "{err}");
    fs::write(tmp.path().join("x"), b"x").expect("write");
    let err = Store::open_or_create_dir(tmp.path(), false, small_config()).expect_err("non-empty");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let (_, store) = new_store(Kind::Dir, tmp.path());
    assert_eq!(
        store.resolve("nothing").expect_err("none").kind(),
        ErrorKind::NotFound
    );
}

fn ambiguous_names_need_an_id(kind: Kind) {
    let World {
        tmp: _tmp,
        ts: _,
        store,
        disk,
        data: _,
    } = world(kind, 9);
    capture_files(&store, "same", &[&disk]).expect("1");
    capture_files(&store, "same", &[&disk]).expect("2");
    assert_eq!(
        store.resolve("same").expect_err("two").kind(),
        ErrorKind::Conflict
    );
}

/// Wraps a backend and fails chunk inserts from the n-th on with `errno`.
#[derive(Debug)]
struct Faulty {
    inner: Store,
    fail_after: usize,
    errno: i32,
    inserts: AtomicUsize,
}

impl ChunkStore for Faulty {
    fn insert_chunk(&self, d: &ChunkDigest, blob: &[u8]) -> imprint_store::Result<Inserted> {
        if self.inserts.fetch_add(1, Ordering::SeqCst) >= self.fail_after {
            return Err(imprint_store::Error::io(
                format!("store chunk {d}"),
                io::Error::from_raw_os_error(self.errno),
            ));
        }
        self.inner.backend().insert_chunk(d, blob)
    }
    fn touch_chunk(&self, d: &ChunkDigest) -> imprint_store::Result<bool> {
        self.inner.backend().touch_chunk(d)
    }
    fn read_chunk(&self, d: &ChunkDigest, buf: &mut Vec<u8>) -> imprint_store::Result<()> {
        self.inner.backend().read_chunk(d, buf)
    }
    fn list_chunks(
        &self,
        f: &mut dyn FnMut(ChunkInfo) -> imprint_store::Result<()>,
    ) -> imprint_store::Result<()> {
        self.inner.backend().list_chunks(f)
    }
    fn remove_chunk_if_older(
        &self,
        d: &ChunkDigest,
        c: SystemTime,
    ) -> imprint_store::Result<Option<u64>> {
        self.inner.backend().remove_chunk_if_older(d, c)
    }
    fn io_depth(&self) -> usize {
        self.inner.backend().io_depth()
    }
    fn remove_stray_files(&self, c: SystemTime, dry: bool) -> imprint_store::Result<u64> {
        self.inner.backend().remove_stray_files(c, dry)
    }
}

impl ImageStore for Faulty {
    fn read_config(&self) -> imprint_store::Result<Option<Vec<u8>>> {
        self.inner.backend().read_config()
    }
    fn create_config(&self, b: &[u8]) -> imprint_store::Result<()> {
        self.inner.backend().create_config(b)
    }
    fn write_image_file(&self, i: &ImageId, n: &str, b: &[u8]) -> imprint_store::Result<()> {
        self.inner.backend().write_image_file(i, n, b)
    }
    fn read_image_file(&self, i: &ImageId, n: &str) -> imprint_store::Result<Vec<u8>> {
        self.inner.backend().read_image_file(i, n)
    }
    fn commit_manifest(&self, i: &ImageId, b: &[u8]) -> imprint_store::Result<()> {
        self.inner.backend().commit_manifest(i, b)
    }
    fn read_manifest(&self, i: &ImageId) -> imprint_store::Result<Vec<u8>> {
        self.inner.backend().read_manifest(i)
    }
    fn list_images(&self) -> imprint_store::Result<Vec<ImageId>> {
        self.inner.backend().list_images()
    }
    fn list_incomplete(&self) -> imprint_store::Result<Vec<(ImageId, SystemTime)>> {
        self.inner.backend().list_incomplete()
    }
    fn delete_image(&self, i: &ImageId) -> imprint_store::Result<()> {
        self.inner.backend().delete_image(i)
    }
    fn register_writer(&self, w: &WriterInfo) -> imprint_store::Result<()> {
        self.inner.backend().register_writer(w)
    }
    fn heartbeat_writer(&self, w: &str) -> imprint_store::Result<()> {
        self.inner.backend().heartbeat_writer(w)
    }
    fn unregister_writer(&self, w: &str) -> imprint_store::Result<()> {
        self.inner.backend().unregister_writer(w)
    }
    fn list_writers(&self) -> imprint_store::Result<Vec<WriterRecord>> {
        self.inner.backend().list_writers()
    }
}

fn faulty_store(kind: Kind, dir: &Path, fail_after: usize, errno: i32) -> (TestStore, Store) {
    let (ts, inner) = new_store(kind, dir);
    let backend: Arc<dyn Backend> = Arc::new(Faulty {
        inner,
        fail_after,
        errno,
        inserts: AtomicUsize::new(0),
    });
    (ts, Store::open(backend).expect("open faulty"))
}

fn assert_no_image_left(store: &Store) {
    let b = store.backend();
    let images = b.list_images().expect("list");
    let incomplete = b.list_incomplete().expect("list");
    assert!(
        images.is_empty() && incomplete.is_empty(),
        "a failed capture left {images:?} {incomplete:?}"
    );
    let writers = b.list_writers().expect("list");
    assert!(
        writers.is_empty(),
        "a failed capture stayed registered: {writers:?}"
    );
}

fn store_full_fails_cleanly_and_a_retry_reuses_chunks(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (ts, store) = faulty_store(kind, tmp.path(), 2, nix::libc::ENOSPC);
    let disk = tmp.path().join("vda.raw");
    make_disk(&disk, 10);
    let err = capture_files(&store, "img", &[&disk]).expect_err("full");
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert!(err.to_string().contains("vda.raw"), "names the disk: {err}");
    assert!(store.list().expect("list").is_empty());
    assert_no_image_left(&store);

    // Space is back: the retry stores only the chunks the failed run lacked.
    let store = ts.reopen();
    let r = capture_files(&store, "img", &[&disk]).expect("retry");
    assert_eq!(r.stats.chunks_new, 3, "{:?}", r.stats);
    assert_eq!(r.stats.chunks_deduplicated, 3, "{:?}", r.stats);
}

fn store_not_writable_is_permission_denied(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_ts, store) = faulty_store(kind, tmp.path(), 0, nix::libc::EACCES);
    let disk = tmp.path().join("vda.raw");
    make_disk(&disk, 11);
    let err = capture_files(&store, "img", &[&disk]).expect_err("denied");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert_no_image_left(&store);
}

fn cancelled_capture_leaves_no_image(kind: Kind) {
    let World {
        tmp: _tmp,
        ts: _,
        store,
        disk,
        data: _,
    } = world(kind, 12);
    let cancel = Arc::new(AtomicBool::new(false));
    let o = CaptureOptions {
        cancel: Some(cancel.clone()),
        ..opts()
    };
    let src = FileSource::open(&disk).expect("open");
    let err = capture(
        &store,
        "img",
        vec![DiskInput {
            name: "vda".into(),
            source: Box::new(src),
            base: None,
        }],
        &o,
        &mut |_| cancel.store(true, Ordering::Relaxed),
    );
    // The flag may be seen only after the last chunk; then the commit check
    // catches it.
    let err = err.expect_err("cancelled");
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_no_image_left(&store);
}

fn bad_names_are_refused(kind: Kind) {
    let World {
        tmp: _tmp,
        ts: _,
        store,
        disk,
        data: _,
    } = world(kind, 13);
    for name in ["", "a\u{7}b", &"n".repeat(300)] {
        let err = capture_files(&store, name, &[&disk]).expect_err("bad name");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    let err = capture(&store, "x", vec![], &opts(), &mut |_| {}).expect_err("no disks");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

fn exclusive_bytes_are_what_gc_frees_after_delete(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (ts, store) = new_store(kind, tmp.path());
    let a = tmp.path().join("a.raw");
    make_disk(&a, 21);
    let img_a = capture_files(&store, "a", &[&a]).expect("a").manifest;
    let f = File::options().write(true).open(&a).expect("open");
    f.write_all_at(b"only in b", u64::from(CS)).expect("write");
    f.write_all_at(b"also only in b", u64::from(CS) * 2)
        .expect("write");
    drop(f);
    let img_b = capture_files(&store, "b", &[&a]).expect("b").manifest;
    let u = usage(&store).expect("usage");
    assert!(u.unreadable.is_empty());
    let of = |id: &ImageId| {
        u.images
            .iter()
            .find(|i| &i.image_id == id)
            .cloned()
            .expect("listed")
    };
    let (ua, ub) = (of(&img_a.image_id), of(&img_b.image_id));
    assert!(ua.exclusive_bytes > 0 && ub.exclusive_bytes > 0);
    assert!(
        ua.exclusive_bytes < ua.referenced_bytes / 2,
        "mostly shared"
    );
    // Every stored chunk is referenced; shared ones are counted once.
    assert_eq!(
        u.stored_bytes,
        ua.referenced_bytes + ub.exclusive_bytes,
        "a's chunks plus b's own"
    );
    ts.age_all_chunks(Duration::from_secs(7200));
    store.delete_image(&img_a.image_id).expect("delete");
    let r = collect_garbage(
        &store,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .expect("gc");
    assert_eq!(r.bytes_freed, ua.exclusive_bytes, "freed if deleted");
    let after = usage(&store).expect("usage");
    assert_eq!(after.images.len(), 1);
    assert_eq!(after.images[0].exclusive_bytes, ub.referenced_bytes);
}

fn gc_frees_only_what_no_image_uses(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (ts, store) = new_store(kind, tmp.path());
    let a = tmp.path().join("a.raw");
    make_disk(&a, 14);
    let img_a = capture_files(&store, "a", &[&a]).expect("a").manifest;
    // b shares everything with a but one chunk
    let f = File::options().write(true).open(&a).expect("open");
    f.write_all_at(b"only in b", u64::from(CS)).expect("write");
    drop(f);
    let img_b = capture_files(&store, "b", &[&a]).expect("b").manifest;
    ts.age_all_chunks(Duration::from_secs(7200));

    // Nothing unreferenced: nothing to do.
    let r = collect_garbage(
        &store,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .expect("gc");
    assert_eq!(r.chunks_removed, 0);
    assert_eq!(r.images, 2);

    store.delete_image(&img_a.image_id).expect("delete");
    assert_eq!(
        store.manifest(&img_a.image_id).expect_err("gone").kind(),
        ErrorKind::NotFound
    );

    // A dry run counts and removes nothing; a grace period protects.
    let dry = collect_garbage(
        &store,
        &GcOptions {
            grace: Duration::ZERO,
            dry_run: true,
            ..Default::default()
        },
    )
    .expect("dry");
    assert_eq!(dry.chunks_removed, 1);
    assert!(dry.bytes_freed > 0);
    let kept = collect_garbage(
        &store,
        &GcOptions {
            grace: Duration::from_secs(3 * 3600),
            ..Default::default()
        },
    )
    .expect("grace");
    assert_eq!(kept.chunks_removed, 0);
    assert_eq!(kept.chunks_kept_recent, 1);

    let r = collect_garbage(
        &store,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .expect("gc");
    assert_eq!(r.chunks_removed, 1);
    assert_eq!(r.bytes_freed, dry.bytes_freed);
    assert!(verify_store(&store, 2).expect("verify").is_ok());
    assert_eq!(
        restore_to_vec(&store, &img_b, 0).expect("b still deploys"),
        fs::read(&a).expect("read")
    );
}

fn gc_spares_chunks_a_running_capture_relies_on(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (ts, store) = new_store(kind, tmp.path());
    let a = tmp.path().join("a.raw");
    make_disk(&a, 15);
    let img = capture_files(&store, "a", &[&a]).expect("a").manifest;
    store.delete_image(&img.image_id).expect("delete");
    ts.age_all_chunks(Duration::from_secs(7200));
    let backend = store.backend();
    let index_digest = ChunkDigest::of(&fs::read(&a).expect("read")[..CS as usize]);

    // A capture starts (registers), finds an old unreferenced chunk present
    // (touch), and has not committed yet when GC runs.
    let new_image = ImageId::generate();
    backend
        .register_writer(&WriterInfo {
            writer_id: "w1".into(),
            image_id: new_image.clone(),
            host: "h".into(),
            pid: 1,
            boot_id: String::new(),
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("time")
                .as_secs(),
        })
        .expect("register");
    assert!(backend.touch_chunk(&index_digest).expect("touch"));
    backend
        .write_image_file(&new_image, "disk0.fidx", b"partial")
        .expect("partial");
    let r = collect_garbage(
        &store,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .expect("gc");
    assert_eq!(r.live_writers, 1);
    assert!(backend.touch_chunk(&index_digest).expect("still there"));
    assert_eq!(
        r.incomplete_images_removed, 0,
        "a live writer's image stays"
    );
    assert!(r.chunks_removed >= 1, "the untouched old chunks go: {r:?}");

    // The writer dies without unregistering: its partial image goes once it
    // is stale.
    backend.unregister_writer("w1").expect("unregister");
    age(
        &ts.image_file(&new_image.to_string(), "disk0.fidx"),
        Duration::from_secs(7200),
    );
    if kind == Kind::Dir {
        age(
            &ts.files.join("images").join(new_image.to_string()),
            Duration::from_secs(7200),
        );
    }
    let r = collect_garbage(
        &store,
        &GcOptions {
            grace: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .expect("gc");
    assert_eq!(r.incomplete_images_removed, 1);
}

fn sweep_keeps_a_chunk_touched_after_it_was_listed(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (ts, store) = new_store(kind, tmp.path());
    let a = tmp.path().join("a.raw");
    make_disk(&a, 16);
    capture_files(&store, "a", &[&a]).expect("a");
    ts.age_all_chunks(Duration::from_secs(7200));
    let d = ChunkDigest::of(&fs::read(&a).expect("read")[..CS as usize]);
    let cutoff = SystemTime::now() - Duration::from_secs(60);
    // Touched between listing and removal: kept.
    assert!(store.backend().touch_chunk(&d).expect("touch"));
    assert_eq!(
        store
            .backend()
            .remove_chunk_if_older(&d, cutoff)
            .expect("rm"),
        None
    );
    assert!(store.backend().touch_chunk(&d).expect("kept"));
    // Old: removed, and a later touch reports it absent (so it is re-stored).
    ts.age_chunk(&d.to_hex(), Duration::from_secs(7200));
    assert!(
        store
            .backend()
            .remove_chunk_if_older(&d, cutoff)
            .expect("rm")
            .is_some()
    );
    assert!(!store.backend().touch_chunk(&d).expect("gone"));
}

on_both_backends!(
    round_trip_is_byte_identical_and_sha256_matches,
    disk_sha256_can_be_skipped,
    caller_chosen_image_id_is_used_and_never_overwritten,
    deploy_target_full_is_storage_full,
    deploy_over_used_target_zeroes_old_bytes,
    recapture_stores_only_what_changed,
    incremental_capture_reads_only_changed_chunks,
    several_disks_and_an_empty_one,
    any_read_seek_source_works,
    target_too_small_is_refused_before_writing,
    missing_and_corrupt_chunks_are_named,
    unknown_manifest_version_is_reported,
    ambiguous_names_need_an_id,
    store_full_fails_cleanly_and_a_retry_reuses_chunks,
    store_not_writable_is_permission_denied,
    cancelled_capture_leaves_no_image,
    bad_names_are_refused,
    exclusive_bytes_are_what_gc_frees_after_delete,
    gc_frees_only_what_no_image_uses,
    gc_spares_chunks_a_running_capture_relies_on,
    sweep_keeps_a_chunk_touched_after_it_was_listed,
);
