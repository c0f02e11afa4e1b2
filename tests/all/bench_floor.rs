//! `examples/bench_floor.rs`, the benchmark's floor: a proxy that forwards, with the key it read,
//! and reuses its upstream connection. A floor that answered anything else would make every
//! comparison with it meaningless.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::client;
use crate::support::keyward::spawn_fed;
use crate::support::upstream::FakeUpstream;
use crate::support::within;

#[tokio::test]
async fn the_floor_forwards_with_the_key_and_reuses_its_connection() {
    let upstream = FakeUpstream::ok_json().await;
    let floor = std::path::Path::new(env!("CARGO_BIN_EXE_keyward"))
        .parent()
        .unwrap()
        .join("examples/bench_floor");
    assert!(floor.exists(), "cargo test builds the examples");
    let mut cmd = tokio::process::Command::new(floor);
    cmd.args(["127.0.0.1:0", &upstream.addr.to_string(), "1"])
        .stdout(Stdio::piped());
    let mut child = spawn_fed(cmd, b"sk-floor-canary\n").await;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("the floor to listen", lines.next_line())
        .await
        .unwrap()
        .expect("the floor says where it listens");
    let addr = line
        .strip_prefix("listening on ")
        .expect("listening on ADDR")
        .parse()
        .unwrap();

    for _ in 0..2 {
        let reply = within("the floor's answer", client::post_responses(addr, "{}")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["id"], "resp_1");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.uri, "/v1/responses");
        assert_eq!(
            request.headers["authorization"], "Bearer sk-floor-canary",
            "the key from stdin replaces the client's"
        );
    }
    assert_eq!(
        upstream.connections(),
        1,
        "the second request reuses the first's connection"
    );
}
