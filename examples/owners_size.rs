//! How big the record of response owners gets: records N responses (ids shaped like the API's,
//! spread over 50 clients), then prints the file's size and the memory the table took (the rise
//! in resident memory). `bench/owners` runs it for a million.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keyward::access::owners::Owners;
use keyward::config::responses::Ownership;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().expect("a number of responses"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("home").join("response-owners");
    let settings = Ownership {
        file: Some(file.clone()),
        ttl: Duration::from_secs(30 * 86_400),
        enforce: true,
    };
    let clients: Vec<String> = (0..50).map(|i| format!("client-{i:02}")).collect();
    let before = resident_kib();
    let owners = Owners::open(&settings).unwrap();
    for i in 0..n {
        // resp_ and 48 hex digits, as the API's ids.
        let id = format!("resp_{i:048x}");
        owners.record(&id, &clients[i % clients.len()], false);
    }
    // Lines still queued for the writer would count as the table's: let it catch up.
    std::thread::sleep(Duration::from_secs(3));
    let after = resident_kib();
    drop(owners); // writes what is queued
    let bytes = std::fs::metadata(&file).unwrap().len();
    println!(
        "{n} responses: file {bytes} bytes ({:.1} bytes each), memory {} KiB ({:.1} bytes each)",
        bytes as f64 / n as f64,
        after - before,
        (after - before) as f64 * 1024.0 / n as f64
    );
}
