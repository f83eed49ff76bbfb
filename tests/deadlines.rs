//! A route's `timeout`: one deadline for the whole request, across retries.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn a_routes_timeout_bounds_the_request_across_retries() {
    let slow = echo("slow", &["--delay", "3s"]);
    let gw = gateway(&format!(
        "[upstreams.u]\ntargets = [\"127.0.0.1:1\", \"{}\"]\nretries = 1\nread_timeout = \"10s\"\n\
         [[routes]]\nname = \"r\"\nupstream = \"u\"\ntimeout = \"1s\"\n\
         [[routes]]\nname = \"patient\"\npaths = [\"/patient\"]\nupstream = \"u\"\n",
        slow.addr
    ));
    // Whichever target comes first, the refused one is retried on the slow one, and the
    // deadline, counted from the request's arrival, ends the wait.
    for _ in 0..2 {
        let start = Instant::now();
        let r = get(&gw.url("/"));
        let took = start.elapsed();
        assert_error(&r, 504, "upstream_timeout");
        assert!(
            took >= Duration::from_secs(1) && took <= Duration::from_millis(1100),
            "answered after {took:?}"
        );
    }
    // A route without one waits for the target.
    let start = Instant::now();
    assert_eq!(get(&gw.url("/patient")).status, 200);
    assert!(start.elapsed() >= Duration::from_secs(3));
}
