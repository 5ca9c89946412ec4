//! Capture/deploy benchmark against `zstd` and `qemu-img` in one run.
//!
//! ```text
//! cargo bench -p imprint-store --bench capture -- --disk /path/disk.raw [--runs 3] [--sparse-gib 16]
//!     [--only hash,chunk,compare,sparse,s3]
//! ```
//!
//! The `s3` section captures and deploys the same disk through a directory
//! store and through an S3 store on a local s3s-fs server, in one run.
//!
//! Every step runs in its own child process (ours are forked, the others
//! are executed), so wall, user and system seconds and peak RSS come from
//! the kernel's accounting of that process alone (`wait4`). Prints a
//! Markdown table; `docs/benchmarks.md` holds the numbers of record.

use std::{
    fs::{self, File},
    io::{Read, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use imprint_store::{
    Location, Store, StoreConfig,
    capture::{CaptureOptions, DiskInput, capture},
    restore::{RestoreOptions, restore_disk},
    source::{FileSource, FileTarget},
};
use nix::{
    libc,
    unistd::{ForkResult, fork},
};
use sha2::Digest as _;

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    wall: f64,
    user: f64,
    sys: f64,
    rss_mib: f64,
}

fn wait_usage(pid: i32, started: Instant) -> (i32, Usage) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; status and ru point to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4 failed");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128
    };
    (
        code,
        Usage {
            wall: started.elapsed().as_secs_f64(),
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
            rss_mib: ru.ru_maxrss as f64 / 1024.0,
        },
    )
}

/// Run `f` in a forked child; it returns a figure (bytes) passed back through a pipe.
fn forked(f: impl FnOnce() -> u64) -> (Usage, u64) {
    let (rd, wr) = nix::unistd::pipe().expect("pipe");
    let started = Instant::now();
    // SAFETY: the bench is single-threaded here (pipelines use scoped
    // threads that have all ended), so the child may run arbitrary code.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(rd);
            let v = f();
            let mut w = File::from(wr);
            let _ = w.write_all(&v.to_le_bytes());
            drop(w);
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut buf = [0u8; 8];
            let mut r = File::from(rd);
            let ok = r.read_exact(&mut buf).is_ok();
            let (code, u) = wait_usage(child.as_raw(), started);
            assert!(ok && code == 0, "benchmark child failed (exit {code})");
            (u, u64::from_le_bytes(buf))
        }
    }
}

fn external(args: &[&str]) -> Usage {
    let started = Instant::now();
    let child = Command::new(args[0])
        .args(&args[1..])
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", args[0]));
    let (code, u) = wait_usage(child.id() as i32, started);
    assert_eq!(code, 0, "{args:?} failed");
    std::mem::forget(child);
    u
}

/// Median usage of `runs` runs of an external command that writes `out`
/// (removed before each run, so every run starts from the same state).
fn external_runs(runs: usize, out: &Path, args: &[&str]) -> Usage {
    let (u, _) = repeat(runs, || {
        let _ = fs::remove_file(out);
        (external(args), 0)
    });
    u
}

fn median(mut v: Vec<Usage>) -> Usage {
    v.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    v[v.len() / 2]
}

fn repeat(runs: usize, mut f: impl FnMut() -> (Usage, u64)) -> (Usage, u64) {
    let mut us = Vec::new();
    let mut last = 0;
    for _ in 0..runs {
        let (u, v) = f();
        us.push(u);
        last = v;
    }
    (median(us), last)
}

fn file_bytes(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

struct Row {
    step: String,
    u: Usage,
    out: String,
}

fn ours_capture(
    store_dir: &Path,
    disk: &Path,
    chunk_size: u32,
    level: i32,
    name: &str,
) -> (Usage, u64) {
    ours_capture_with(store_dir, disk, chunk_size, level, name, true)
}

fn ours_capture_with(
    store_dir: &Path,
    disk: &Path,
    chunk_size: u32,
    level: i32,
    name: &str,
    sha: bool,
) -> (Usage, u64) {
    ours_capture_at(
        &Location::Dir(store_dir.to_path_buf()),
        disk,
        chunk_size,
        level,
        name,
        sha,
    )
}

fn ours_capture_at(
    location: &Location,
    disk: &Path,
    chunk_size: u32,
    level: i32,
    name: &str,
    sha: bool,
) -> (Usage, u64) {
    let (location, disk, name) = (location.clone(), disk.to_path_buf(), name.to_string());
    forked(move || {
        let st = Store::open_or_create_at(
            &location,
            false,
            StoreConfig {
                chunk_size,
                ..Default::default()
            },
        )
        .expect("store");
        let r = capture(
            &st,
            &name,
            vec![DiskInput {
                name: "vda".into(),
                source: Box::new(FileSource::open(&disk).expect("open")),
                base: None,
            }],
            &CaptureOptions {
                zstd_level: level,
                disk_sha256: sha,
                ..Default::default()
            },
            &mut |_| {},
        )
        .expect("capture");
        r.stats.bytes_stored
    })
}

fn ours_deploy(store_dir: &Path, name: &str, out: &Path) -> (Usage, u64) {
    ours_deploy_from(&Location::Dir(store_dir.to_path_buf()), name, out)
}

fn ours_deploy_from(location: &Location, name: &str, out: &Path) -> (Usage, u64) {
    let (location, out, name) = (location.clone(), out.to_path_buf(), name.to_string());
    forked(move || {
        let st = Store::open_at(&location, false).expect("store");
        let m = st.resolve(&name).expect("image");
        let mut t = FileTarget::create(&out, m.disks[0].size_bytes).expect("target");
        let s = restore_disk(&st, &m, 0, &mut t, &RestoreOptions::default(), &mut |_| {})
            .expect("deploy");
        s.bytes_written
    })
}

/// A copy of `disk` with 1 % of it overwritten: 16 runs of random bytes at
/// random 4 KiB-aligned offsets (`seed` picks which).
fn changed_copy(disk: &Path, to: &Path, seed: u64) -> u64 {
    let _ = fs::remove_file(to);
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(disk)
        .arg(to)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cp failed");
    change_one_percent(to, seed)
}

fn change_one_percent(path: &Path, seed: u64) -> u64 {
    let size = file_bytes(path);
    let total = size / 100;
    let runs = 16;
    let run = (total / runs) & !4095;
    let f = File::options().write(true).open(path).expect("open");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = vec![0u8; run as usize];
    for _ in 0..runs {
        for b in buf.iter_mut() {
            *b = next() as u8;
        }
        let off = (next() % (size - run)) & !4095;
        f.write_all_at(&buf, off).expect("write");
    }
    run * runs
}

fn hash_speeds() -> Vec<Row> {
    let buf: Vec<u8> = (0..256u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut rows = Vec::new();
    let t = Instant::now();
    let mut n = 0u8;
    for c in buf.chunks(1 << 20) {
        n ^= blake3::hash(c).as_bytes()[0];
    }
    let b3 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut h = sha2::Sha256::new();
    h.update(&buf);
    n ^= h.finalize()[0];
    let sha = t.elapsed().as_secs_f64();
    std::hint::black_box(n);
    for (name, s) in [
        ("BLAKE3, 1 MiB chunks, 1 core", b3),
        ("SHA-256 (sha2, SHA-NI when present), 1 core", sha),
    ] {
        rows.push(Row {
            step: name.into(),
            u: Usage {
                wall: s,
                user: s,
                ..Default::default()
            },
            out: format!("{:.0} MiB/s", 256.0 / s),
        });
    }
    rows
}

fn print(title: &str, rows: &[Row]) {
    println!("\n### {title}\n");
    println!("| step | wall s | user s | sys s | peak RSS MiB | result |");
    println!("|---|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
            r.step, r.u.wall, r.u.user, r.u.sys, r.u.rss_mib, r.out
        );
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut disk: Option<PathBuf> = std::env::var_os("IMPRINT_BENCH_DISK").map(PathBuf::from);
    let mut runs = 3;
    let mut sparse_gib = 16;
    let mut sections = String::from("hash,chunk,compare,sparse");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--disk" => disk = args.next().map(PathBuf::from),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--sparse-gib" => {
                sparse_gib = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--sparse-gib N")
            }
            "--only" => sections = args.next().expect("--only a,b"),
            "--bench" => {}
            other => panic!("unknown argument {other}; see the file header"),
        }
    }
    let disk = disk.unwrap_or_else(|| PathBuf::from("/var/cache/imprint/guests/debian/disk.raw"));
    assert!(
        disk.exists(),
        "no disk at {} (build it with tests/guests/build-debian-guest.sh, or pass --disk)",
        disk.display()
    );
    let work = tempfile::Builder::new()
        .prefix("imprint-bench-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let w = work.path();
    let size = file_bytes(&disk);
    println!(
        "disk {}: {} MiB, {} MiB allocated; {} cores; median of {runs} runs",
        disk.display(),
        mib(size),
        mib(allocated(&disk)),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Warm the page cache so every contender reads from memory.
    let _ = Command::new("cat")
        .arg(&disk)
        .stdout(std::process::Stdio::null())
        .status();

    if sections.contains("hash") {
        // In a child: the parent must stay small, because a process started
        // with vfork+exec reports its parent's peak RSS as its own.
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        let (_, _) = forked(move || {
            let mut w = File::from(wr);
            for r in hash_speeds() {
                let _ = writeln!(w, "{}\t{}\t{}", r.step, r.u.wall, r.out);
            }
            0
        });
        let mut text = String::new();
        File::from(rd).read_to_string(&mut text).expect("read");
        let rows: Vec<Row> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let (step, wall, out) = (f.next()?, f.next()?.parse().ok()?, f.next()?);
                Some(Row {
                    step: step.into(),
                    u: Usage {
                        wall,
                        user: wall,
                        ..Default::default()
                    },
                    out: out.into(),
                })
            })
            .collect();
        print("Digest speed (256 MiB in memory)", &rows);
    }

    if sections.contains("chunk") {
        let mut rows = Vec::new();
        for cs in [1u32 << 20, 4 << 20] {
            for level in [1, 3] {
                let sd = w.join(format!("cs-{cs}-{level}"));
                let (u, stored) = repeat(runs, || {
                    let _ = fs::remove_dir_all(&sd);
                    ours_capture(&sd, &disk, cs, level, "first")
                });
                rows.push(Row {
                    step: format!("capture, {} MiB chunks, zstd -{level}", cs >> 20),
                    u,
                    out: format!("{} MiB stored", mib(stored)),
                });
                if level == 3 {
                    let changed = w.join("changed.raw");
                    let bytes_changed = changed_copy(&disk, &changed, 1);
                    let (u, stored) = ours_capture(&sd, &changed, cs, level, "second");
                    rows.push(Row {
                        step: format!("recapture after 1 % change, {} MiB chunks", cs >> 20),
                        u,
                        out: format!(
                            "{} MiB new for {} MiB changed ({:.2}x)",
                            mib(stored),
                            mib(bytes_changed),
                            stored as f64 / bytes_changed as f64
                        ),
                    });
                    let _ = fs::remove_file(&changed);
                }
                let _ = fs::remove_dir_all(&sd);
            }
        }
        print("Chunk size and zstd level", &rows);
    }

    if sections.contains("compare") {
        let mut rows = Vec::new();
        let sd = w.join("store");
        let (u, stored) = repeat(runs, || {
            let _ = fs::remove_dir_all(&sd);
            ours_capture(&sd, &disk, 1 << 20, 3, "first")
        });
        let first = u;
        rows.push(Row {
            step: "imprint capture (first)".into(),
            u,
            out: format!("{} MiB stored", mib(stored)),
        });
        let sd2 = w.join("store-nosha");
        let (u, stored) = repeat(runs, || {
            let _ = fs::remove_dir_all(&sd2);
            ours_capture_with(&sd2, &disk, 1 << 20, 3, "first", false)
        });
        let _ = fs::remove_dir_all(&sd2);
        rows.push(Row {
            step: "imprint capture (first), no disk SHA-256".into(),
            u,
            out: format!("{} MiB stored", mib(stored)),
        });
        let changed = w.join("changed.raw");
        for sha in [true, false] {
            let mut seed = if sha { 100 } else { 200 };
            let mut bytes_changed = 0;
            let mut stored_all = Vec::new();
            let (u, _) = repeat(runs, || {
                seed += 1;
                bytes_changed = changed_copy(&disk, &changed, seed);
                let r = ours_capture_with(&sd, &changed, 1 << 20, 3, &format!("re-{seed}"), sha);
                stored_all.push(r.1);
                r
            });
            stored_all.sort();
            let stored = stored_all[stored_all.len() / 2];
            rows.push(Row {
                step: format!(
                    "imprint recapture after 1 % change{}",
                    if sha { "" } else { ", no disk SHA-256" }
                ),
                u,
                out: format!(
                    "{} MiB new for {} MiB changed ({:.2}x); {:.1}x faster than first",
                    mib(stored),
                    mib(bytes_changed),
                    stored as f64 / bytes_changed as f64,
                    first.wall / u.wall
                ),
            });
        }
        let _ = fs::remove_file(&changed);
        let out = w.join("deploy.raw");
        let (u, _) = repeat(runs, || {
            let _ = fs::remove_file(&out);
            ours_deploy(&sd, "first", &out)
        });
        let same = Command::new("cmp")
            .arg("-s")
            .arg(&disk)
            .arg(&out)
            .status()
            .is_ok_and(|s| s.success());
        rows.push(Row {
            step: "imprint deploy to sparse raw".into(),
            u,
            out: format!("cmp: {}", if same { "identical" } else { "DIFFERENT" }),
        });
        assert!(same, "deploy is not byte-identical");
        let _ = fs::remove_file(&out);

        if have("zstd") {
            let zst = w.join("disk.zst");
            let u = external_runs(
                runs,
                &zst,
                &[
                    "zstd",
                    "-q",
                    "-f",
                    "-T2",
                    "-3",
                    disk.to_str().expect("utf8"),
                    "-o",
                    zst.to_str().expect("utf8"),
                ],
            );
            rows.push(Row {
                step: "zstd -T2 -3".into(),
                u,
                out: format!("{} MiB", mib(file_bytes(&zst))),
            });
            let _ = fs::remove_file(&zst);
        }
        if have("qemu-img") {
            let q = w.join("zlib.qcow2");
            let u = external_runs(
                1,
                &q,
                &[
                    "qemu-img",
                    "convert",
                    "-c",
                    "-O",
                    "qcow2",
                    disk.to_str().expect("utf8"),
                    q.to_str().expect("utf8"),
                ],
            );
            rows.push(Row {
                step: "qemu-img convert -c -O qcow2 (zlib)".into(),
                u,
                out: format!("{} MiB", mib(file_bytes(&q))),
            });
            let _ = fs::remove_file(&q);
            let q = w.join("zstd.qcow2");
            let u = external_runs(
                runs,
                &q,
                &[
                    "qemu-img",
                    "convert",
                    "-c",
                    "-O",
                    "qcow2",
                    "-o",
                    "compression_type=zstd",
                    disk.to_str().expect("utf8"),
                    q.to_str().expect("utf8"),
                ],
            );
            rows.push(Row {
                step: "qemu-img convert -c -O qcow2 -o compression_type=zstd".into(),
                u,
                out: format!("{} MiB", mib(file_bytes(&q))),
            });
            let raw = w.join("from-qcow2.raw");
            let u = external_runs(
                runs,
                &raw,
                &[
                    "qemu-img",
                    "convert",
                    "-O",
                    "raw",
                    q.to_str().expect("utf8"),
                    raw.to_str().expect("utf8"),
                ],
            );
            rows.push(Row {
                step: "qemu-img convert zstd qcow2 -> raw".into(),
                u,
                out: String::new(),
            });
            let _ = fs::remove_file(&raw);
            let _ = fs::remove_file(&q);
        }
        let cp = w.join("cp.raw");
        let u = external_runs(
            runs,
            &cp,
            &[
                "cp",
                "--sparse=always",
                disk.to_str().expect("utf8"),
                cp.to_str().expect("utf8"),
            ],
        );
        rows.push(Row {
            step: "cp --sparse=always".into(),
            u,
            out: String::new(),
        });
        let _ = fs::remove_file(&cp);
        print("Against zstd and qemu-img (same disk, same run)", &rows);
        let _ = fs::remove_dir_all(&sd);
    }

    if sections.contains("s3") {
        let server = imprint_store::s3_server::S3Server::start();
        let mut rows = Vec::new();
        let changed = w.join("changed.raw");
        let out = w.join("deploy.raw");
        let size_mib = size as f64 / f64::from(1u32 << 20);
        for (label, location, files) in [
            (
                "directory",
                Location::Dir(w.join("cmp-store")),
                w.join("cmp-store"),
            ),
            (
                "S3 (s3s-fs, 127.0.0.1)",
                Location::S3(server.options("bench")),
                server.store_dir("bench"),
            ),
        ] {
            let (u, stored) = repeat(runs, || {
                let _ = fs::remove_dir_all(&files);
                ours_capture_at(&location, &disk, 1 << 20, 3, "first", true)
            });
            rows.push(Row {
                step: format!("capture (first) → {label}"),
                u,
                out: format!(
                    "{} MiB stored, {:.0} MiB/s of disk",
                    mib(stored),
                    size_mib / u.wall
                ),
            });
            let mut seed = 300;
            let (u, _) = repeat(runs, || {
                seed += 1;
                changed_copy(&disk, &changed, seed);
                ours_capture_at(&location, &changed, 1 << 20, 3, &format!("re-{seed}"), true)
            });
            rows.push(Row {
                step: format!("recapture after 1 % change → {label}"),
                u,
                out: format!("{:.0} MiB/s of disk", size_mib / u.wall),
            });
            let (u, _) = repeat(runs, || {
                let _ = fs::remove_file(&out);
                ours_deploy_from(&location, "first", &out)
            });
            let same = Command::new("cmp")
                .arg("-s")
                .arg(&disk)
                .arg(&out)
                .status()
                .is_ok_and(|s| s.success());
            assert!(same, "deploy from {label} is not byte-identical");
            rows.push(Row {
                step: format!("deploy ← {label}"),
                u,
                out: format!("identical, {:.0} MiB/s of disk", size_mib / u.wall),
            });
            let _ = fs::remove_file(&out);
            let _ = fs::remove_dir_all(&files);
        }
        let _ = fs::remove_file(&changed);
        // A copy from a directory store to an empty S3 prefix (every chunk
        // crosses), as CopyImage between sites does it.
        let from = w.join("copy-src");
        ours_capture(&from, &disk, 1 << 20, 3, "first");
        let (u, sent) = repeat(runs, || {
            let _ = fs::remove_dir_all(server.store_dir("copy"));
            let (from, to) = (from.clone(), Location::S3(server.options("copy")));
            forked(move || {
                let src = Store::open_dir(&from, false).expect("src");
                let dst = Store::open_or_create_at(&to, false, src.config().clone()).expect("dst");
                let m = src.resolve("first").expect("image");
                imprint_store::copy::copy_image(&src, &dst, &m.image_id, &mut |_, _| {})
                    .expect("copy")
                    .bytes_sent
            })
        });
        rows.push(Row {
            step: "copy directory → S3 (all chunks)".into(),
            u,
            out: format!(
                "{} MiB sent, {:.0} MiB/s sent",
                mib(sent),
                sent as f64 / f64::from(1u32 << 20) / u.wall
            ),
        });
        let _ = fs::remove_dir_all(&from);
        print(
            "Directory store against S3 store (same disk, same run)",
            &rows,
        );
    }

    if sections.contains("sparse") {
        // A big sparse disk: the guest disk's data repeated at 4 places.
        let big = w.join("big.raw");
        let f = File::create(&big).expect("create");
        f.set_len(sparse_gib << 30).expect("size");
        let src = File::open(&disk).expect("open");
        let mut buf = vec![0u8; 1 << 20];
        let limit = size.min(256 << 20);
        for place in 0..4u64 {
            let base = place * (sparse_gib << 30) / 4;
            let mut off = 0;
            while off < limit {
                let n = src.read_at(&mut buf, off).expect("read");
                if n == 0 {
                    break;
                }
                if buf[..n].iter().any(|&b| b != 0) {
                    f.write_all_at(&buf[..n], base + off).expect("write");
                }
                off += n as u64;
            }
        }
        drop(f);
        let sd = w.join("sparse-store");
        let (u, stored) = ours_capture(&sd, &big, 1 << 20, 3, "big");
        let mut rows = vec![Row {
            step: format!("imprint capture, {sparse_gib} GiB sparse disk"),
            u,
            out: format!(
                "{} MiB stored, {} MiB allocated",
                mib(stored),
                mib(allocated(&big))
            ),
        }];
        let out = w.join("big-out.raw");
        let (u, _) = ours_deploy(&sd, "big", &out);
        rows.push(Row {
            step: format!("imprint deploy, {sparse_gib} GiB sparse disk"),
            u,
            out: String::new(),
        });
        print("Memory on a large sparse disk", &rows);
    }
}
