//! 200 concurrent clients doing GetImage and ListImages against imprintd's
//! gRPC API (the real server on loopback, SQLite catalog).
//!
//! ```text
//! cargo bench -p imprint-daemon --bench api_load -- [--clients 200] [--seconds 10] [--images 10000]
//! ```
//!
//! Each client is its own HTTP/2 connection with its own account token
//! (50 accounts, each owning images; 5 % of the images are public). A
//! client alternates GetImage of a visible image and a ListImages page
//! (50 images). Prints calls, errors, throughput and p50/p99/max latency
//! per call.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use imprint_daemon::{catalog::Catalog, dispatch::Dispatcher};
use imprint_proto::v1::{self as pb, image_service_client::ImageServiceClient};
use tonic::Request;

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients = arg(&args, "--clients", 200);
    let seconds = arg(&args, "--seconds", 10) as u64;
    let n_images = arg(&args, "--images", 10_000);

    let tmp = tempfile::tempdir().expect("tmp");
    let url = format!(
        "sqlite://{}?mode=rwc",
        tmp.path().join("catalog.db").display()
    );
    let c = Catalog::open(&url).await.expect("open");
    let mut accounts = Vec::new();
    for i in 0..50 {
        accounts.push(
            c.create_account(&format!("acct{i}"), true, false)
                .await
                .expect("account"),
        );
    }
    let mut owned: Vec<Vec<String>> = vec![Vec::new(); accounts.len()];
    for i in 0..n_images {
        let k = i % accounts.len();
        let id = uuid::Uuid::new_v4().to_string();
        c.insert_image(&id, &accounts[k].0, &format!("img-{i:06}"), "", &[])
            .await
            .expect("insert");
        c.set_image_state(&id, imprint_daemon::domain::ImageState::Active, "", 1 << 30)
            .await
            .expect("state");
        if i % 20 == 0 {
            c.set_public(&accounts[k].0, &id, true)
                .await
                .expect("public");
        }
        owned[k].push(id);
    }

    let router = imprint_daemon::server::router(Dispatcher::new(c, None), None)
        .await
        .expect("router");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)));

    let owned = Arc::new(owned);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for n in 0..clients {
        let k = n % accounts.len();
        let token = accounts[k].1.clone();
        let owned = owned.clone();
        tasks.push(tokio::spawn(async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
            let mut client = ImageServiceClient::new(ch);
            let auth = format!("Bearer {token}");
            let (mut get, mut list, mut errors) = (Vec::new(), Vec::new(), Vec::new());
            let mut i = n;
            while Instant::now() < deadline {
                i = i.wrapping_add(7919);
                let t = Instant::now();
                let r = if i % 2 == 0 {
                    let mine = &owned[k];
                    let mut req = Request::new(pb::GetImageRequest {
                        id: mine[i % mine.len()].clone(),
                    });
                    req.metadata_mut()
                        .insert("authorization", auth.parse().expect("ascii"));
                    client.get_image(req).await.map(|_| ())
                } else {
                    let mut req = Request::new(pb::ListImagesRequest {
                        page_size: 50,
                        ..Default::default()
                    });
                    req.metadata_mut()
                        .insert("authorization", auth.parse().expect("ascii"));
                    client.list_images(req).await.map(|_| ())
                };
                let ms = t.elapsed().as_secs_f64() * 1e3;
                match r {
                    Ok(()) if i % 2 == 0 => get.push(ms),
                    Ok(()) => list.push(ms),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (get, list, errors)
        }));
    }
    let (mut get, mut list, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (g, l, e) = t.await.expect("client");
        get.extend(g);
        list.extend(l);
        errors.extend(e);
    }
    let wall = start.elapsed().as_secs_f64();
    println!("{clients} clients, {seconds} s, {n_images} images in the catalog (SQLite)");
    println!(
        "{:<12} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "call", "calls", "calls/s", "p50 ms", "p99 ms", "max ms"
    );
    for (name, v) in [("GetImage", &mut get), ("ListImages", &mut list)] {
        let n = v.len();
        let (p50, p99, max) = (pct(v, 0.5), pct(v, 0.99), pct(v, 1.0));
        println!(
            "{name:<12} {n:>8} {:>9.0} {p50:>9.1} {p99:>9.1} {max:>9.1}",
            n as f64 / wall
        );
    }
    println!("errors: {}", errors.len());
    for e in errors.iter().take(5) {
        println!("  {e}");
    }
    assert!(errors.is_empty(), "the target is no errors");
}
