//! The yardstick for `make bench`: the smallest Pingora reverse proxy, with Pylon's allocator,
//! runtime settings and release profile, so the bench can show what Pylon adds on top of
//! Pingora itself. `bare_pingora LISTEN UPSTREAM`.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(Arc<HttpPeer>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::clone(&self.0)))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let peer = Arc::new(HttpPeer::new(upstream, false, String::new()));
    let mut proxy = http_proxy_service(&server.configuration, Bare(peer));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
