//! Mayfly's control plane: the HTTP API, authentication, Cedar
//! authorization, rate limits, quotas and admission, the store, the session
//! manager and crash recovery. It holds no privileged sandbox code; sessions
//! run through `mayfly-sandbox`.

pub mod config;
pub mod policy;
pub mod profiles;
pub mod ratelimit;
pub mod store;
pub mod tokens;
#[doc(hidden)]
pub mod testing;
