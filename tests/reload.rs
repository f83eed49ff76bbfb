//! Reload on SIGHUP: a valid file takes effect without a restart; an invalid one changes nothing.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn route(body: &str) -> String {
    format!("[[routes]]\nname = \"r\"\npaths = [\"/\"]\nrespond = {{ body = \"{body}\" }}\n")
}

fn wait_for_body(gw: &Gateway, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if get(&gw.url("/")).body == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn sighup_swaps_routes_and_rejects_bad_files() {
    let mut gw = gateway(&route("one"));
    assert_eq!(get(&gw.url("/")).body, "one");

    gw.rewrite(&route("two"));
    gw.signal("HUP");
    assert!(wait_for_body(&gw, "two"), "reload did not take effect");

    // An invalid file: the process lives on and keeps serving the last good configuration.
    gw.rewrite("[[routes]]\nname = \"r\"\nupstream = \"missing\"\n");
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(gw.alive());
    assert_eq!(get(&gw.url("/")).body, "two");
    let log = std::fs::read_to_string(gw.dir.join("pylon.log")).unwrap();
    let path = gw.config_path().display().to_string();
    assert!(
        log.lines().any(|l| l.contains("reload rejected")
            && l.contains(&format!("{path}:"))
            && l.contains("unknown upstream `missing`")),
        "no located error in the log:\n{log}"
    );

    // And a fixed file is picked up again.
    gw.rewrite(&route("three"));
    gw.signal("HUP");
    assert!(wait_for_body(&gw, "three"));
}

#[test]
fn watch_reloads_when_the_file_changes() {
    let gw = gateway_with_server("watch = true", &route("first"));
    assert_eq!(get(&gw.url("/")).body, "first");
    gw.rewrite(&route("second"));
    assert!(wait_for_body(&gw, "second"), "the change was not picked up");
    // A broken save changes nothing; the fixed one is picked up.
    gw.rewrite("[[routes]]\nname = ");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(&gw.url("/")).body, "second");
    gw.rewrite(&route("third"));
    assert!(wait_for_body(&gw, "third"));
}
