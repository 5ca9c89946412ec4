//! ListImages latency with 100,000 images in the SQLite catalog.
//!
//! ```text
//! cargo bench -p imprint-daemon --bench catalog_list -- [--images 100000] [--queries 2000]
//! ```
//!
//! 100 accounts own the images evenly; 5 % are public, 5 % shared with
//! (and accepted by) another account; 10 % carry the tag `gold`. Each
//! query is a ListImages page (50) for a random account: first pages,
//! next pages through page tokens, and filtered lists. Prints p50/p99/max
//! per query shape (in-process, through the catalog layer the gRPC
//! handler calls).

use std::time::Instant;

use imprint_daemon::catalog::{Catalog, ListQuery};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut n_images, mut n_queries) = (100_000usize, 2000usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--images" => {
                n_images = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--images N")
            }
            "--queries" => {
                n_queries = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--queries N")
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let url = format!(
        "sqlite://{}?mode=rwc",
        tmp.path().join("catalog.db").display()
    );
    let c = Catalog::open(&url).await.expect("open");
    let mut accounts = Vec::new();
    for i in 0..100 {
        accounts.push(
            c.create_account(&format!("acct{i}"), true, false)
                .await
                .expect("account")
                .0,
        );
    }
    let t = Instant::now();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..n_images {
        let owner = &accounts[i % accounts.len()];
        let id = uuid::Uuid::new_v4().to_string();
        let tags: Vec<String> = if i % 10 == 0 {
            vec!["gold".into()]
        } else {
            vec![]
        };
        c.insert_image(&id, owner, &format!("img-{i:06}"), "", &tags)
            .await
            .expect("insert");
        match i % 20 {
            0 => c.set_public(owner, &id, true).await.expect("publish"),
            1 => {
                let other = &accounts[(i / 20 + 1) % accounts.len()];
                if other.id != owner.id {
                    c.share(owner, &id, std::slice::from_ref(&other.name))
                        .await
                        .expect("share");
                    c.decide(other, &id, true).await.expect("accept");
                }
            }
            _ => {}
        }
    }
    println!(
        "catalog: {n_images} images, 100 accounts, filled in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    println!();
    println!("| query (page of 50) | n | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    type Shape = (&'static str, fn(&mut ListQuery));
    let shapes: [Shape; 4] = [
        ("first page, no filter", |_| {}),
        ("tag = gold", |q| q.tag = Some("gold".into())),
        ("name prefix img-01", |q| {
            q.name_prefix = Some("img-01".into())
        }),
        ("visibility = public", |q| {
            q.visibility = Some(imprint_daemon::catalog::Visibility::Public)
        }),
    ];
    for (label, f) in shapes {
        let mut lat = Vec::new();
        for _ in 0..n_queries / 5 {
            let viewer = &accounts[(next() % 100) as usize];
            let mut q = ListQuery {
                page_size: 50,
                ..Default::default()
            };
            f(&mut q);
            let t = Instant::now();
            let (page, _) = c.list_images(viewer, &q).await.expect("list");
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(!page.is_empty());
        }
        let n = lat.len();
        println!(
            "| {label} | {n} | {:.2} | {:.2} | {:.2} |",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0)
        );
    }
    // Deep paging: follow tokens 20 pages down.
    let mut lat = Vec::new();
    for _ in 0..n_queries / 5 / 20 {
        let viewer = &accounts[(next() % 100) as usize];
        let mut token = None;
        for _ in 0..20 {
            let t = Instant::now();
            let (_, nt) = c
                .list_images(
                    viewer,
                    &ListQuery {
                        page_size: 50,
                        page_token: token.clone(),
                        ..Default::default()
                    },
                )
                .await
                .expect("list");
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            token = nt;
        }
    }
    let n = lat.len();
    println!(
        "| next pages (tokens, 20 deep) | {n} | {:.2} | {:.2} | {:.2} |",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
}
