//! Node.js scripts from tests/js (servers, a browser's driver), with the npm packages `make test` installs under
//! target/node.

use super::Proc;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// `node tests/js/SCRIPT ARGS`, finding the npm packages under target/node.
fn node(script: &str, args: &[&str]) -> Command {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut command = Command::new("node");
    command
        .arg(format!("{root}/tests/js/{script}"))
        .args(args)
        .env(
            "PYLON_NODE_MODULES",
            format!("{root}/target/node/node_modules"),
        );
    command
}

/// What `node tests/js/SCRIPT ARGS` printed, once it ended.
pub fn node_run(script: &str, args: &[&str]) -> String {
    let out = node(script, args)
        .stderr(Stdio::inherit())
        .output()
        .expect("node (make test installs it)");
    assert!(out.status.success(), "{script} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `node tests/js/SCRIPT ARGS`, once it printed `listening`.
pub fn node_server(script: &str, args: &[&str]) -> Proc {
    let mut child = node(script, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node (make test installs it)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.trim() == "listening" => break,
            Some(Ok(_)) => continue,
            _ => panic!("{script} did not start: are its packages in target/node?"),
        }
    }
    // What it prints goes to the test's output (shown when it fails), and never fills a pipe.
    let name = script.to_string();
    std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .for_each(|l| eprintln!("{name}: {l}"))
    });
    Proc(child)
}
