//! Pylon: an API gateway on Cloudflare's Pingora.
//!
//! Configuration is parsed into plain structs ([`config`]), its policies parsed by their kinds
//! and the whole checked ([`load`]), compiled into an immutable [`runtime::Snapshot`] (router,
//! upstream pools), and served by a thin Pingora `ProxyHttp` ([`proxy`]) that hands each hook
//! to the module owning that concern. `docs/architecture.md` gives the layers and which may
//! import which.

pub mod access_log;
pub mod admin;
pub mod aggregate;
pub mod cert_expiry;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod conform;
pub mod conn_cap;
pub mod connection;
pub mod consumer;
pub mod dashboard;
pub mod deadline;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod head;
pub mod headers;
pub mod held_body;
pub mod ids;
pub mod keepalive;
pub mod load;
pub mod metrics;
pub mod mirror;
pub mod otlp;
pub mod pipeline;
pub mod plumbing;
pub mod policy;
pub mod proxy;
pub mod redis_link;
pub mod reload;
pub mod reply;
pub mod request_ctx;
pub mod router;
pub mod runtime;
pub mod serve;
pub mod server;
pub mod shards;
pub mod split;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
