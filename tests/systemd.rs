//! The systemd unit passes `systemd-analyze verify` (with this build's binary in its paths),
//! and the config it starts with is valid.

mod common;
use common::*;
use std::process::Command;

const UNIT: &str = include_str!("../conf/systemd/pylon.service");

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = scratch();
    let unit = dir.join("pylon.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/pylon", PYLON)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (make test installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("pylon.service"),
        "warnings about the unit: {stderr}"
    );
    for needed in [
        "Type=forking",
        "PIDFile=/run/pylon/pylon.pid",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=",
        "User=pylon",
    ] {
        assert!(UNIT.contains(needed), "unit lacks {needed}");
    }
}

#[test]
fn installed_config_is_valid() {
    let dir = scratch();
    let token = dir.join("admin.token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let conf = dir.join("pylon.toml");
    let text = include_str!("../conf/systemd/pylon.toml")
        .replace("/etc/pylon/admin.token", &token.display().to_string());
    std::fs::write(&conf, text).unwrap();
    let out = Command::new(PYLON)
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
