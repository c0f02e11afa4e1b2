//! What `contrib/` ships for installing keyward: the example settings the systemd unit reads
//! are valid settings.

use crate::support::keyward::command;

#[tokio::test]
async fn the_example_settings_of_the_unit_are_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/keyward.toml");
    let output = command(&["check-config", file], &[])
        .stdout(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("listen: 127.0.0.1:8080"), "in words: {out}");
    assert!(
        !out.contains("Config {"),
        "not a dump of keyward's insides: {out}"
    );
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/systemd/keyward.service"
    ))
    .unwrap();
    assert!(
        unit.contains("--config /etc/keyward/keyward.toml"),
        "{unit}"
    );
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    assert!(
        !unit.lines().any(|l| l.starts_with("PrivateUsers=")),
        "PrivateUsers= would hide the real users of connections from keyward"
    );
}
