//! Mayfly's control plane: the HTTP API, authentication, Cedar
//! authorization, rate limits, quotas and admission, the store, the session
//! manager and crash recovery. It holds no privileged sandbox code; sessions
//! run through `mayfly-sandbox`.

pub mod api;
pub mod app;
pub mod audit;
pub mod config;
pub mod metrics;
pub mod policy;
pub mod problem;
pub mod profiles;
pub mod ratelimit;
pub mod server;
pub mod sessions;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod tokens;
