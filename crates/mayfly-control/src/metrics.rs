//! Counters and histograms for Prometheus' text format, kept in atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: Default::default(), count: AtomicU64::new(0), sum_micros: AtomicU64::new(0) }
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", count.load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    /// From the create request to the running state.
    pub creation_seconds: Histogram,
    /// From the end of the command to verified teardown.
    pub teardown_seconds: Histogram,
    /// How late past its deadline a session that reached it ended.
    pub deadline_overshoot_seconds: Histogram,
    pub denials: AtomicU64,
    pub rate_limited_source: AtomicU64,
    pub rate_limited_principal: AtomicU64,
    pub quota_rejections: AtomicU64,
    pub admission_rejections: AtomicU64,
    pub authentication_failures: AtomicU64,
    pub connections_refused: AtomicU64,
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
}

impl Metrics {
    /// Renders every metric; `states` gives the number of sessions per
    /// state and `pools` the state of each warm pool.
    pub fn render(&self, states: &[(&str, i64)], audit_records: u64, pools: &[crate::sessions::pool::PoolStatus]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP mayfly_sessions Sessions by lifecycle state.\n# TYPE mayfly_sessions gauge");
        for (state, count) in states {
            let _ = writeln!(out, "mayfly_sessions{{state=\"{state}\"}} {count}");
        }
        self.creation_seconds.write(&mut out, "mayfly_session_creation_seconds", "Time from a create request to the running state.");
        self.teardown_seconds.write(&mut out, "mayfly_session_teardown_seconds", "Time to kill, remove and verify a session's resources.");
        self.deadline_overshoot_seconds.write(&mut out, "mayfly_deadline_overshoot_seconds", "How long past its deadline a session ended.");
        counter(&mut out, "mayfly_authorization_denials_total", "Requests denied by policy.", &self.denials);
        counter(&mut out, "mayfly_rate_limited_source_total", "Requests refused by the per-source rate limit.", &self.rate_limited_source);
        counter(&mut out, "mayfly_rate_limited_principal_total", "Requests refused by the per-principal rate limit.", &self.rate_limited_principal);
        counter(&mut out, "mayfly_quota_rejections_total", "Session creations refused by a principal's quota.", &self.quota_rejections);
        counter(&mut out, "mayfly_admission_rejections_total", "Session creations refused because the host is full.", &self.admission_rejections);
        counter(&mut out, "mayfly_authentication_failures_total", "Requests with a missing or invalid token.", &self.authentication_failures);
        counter(&mut out, "mayfly_connections_refused_total", "Connections closed at once because the connection limit was reached.", &self.connections_refused);
        let _ = writeln!(out, "# HELP mayfly_audit_records_total Audit records appended by this process.\n# TYPE mayfly_audit_records_total counter\nmayfly_audit_records_total {audit_records}");
        write_pools(&mut out, pools);
        out
    }
}

/// Writes one labelled series per pool for each warm pool metric.
fn write_pools(out: &mut String, pools: &[crate::sessions::pool::PoolStatus]) {
    use crate::sessions::pool::PoolStatus;
    type Value = fn(&PoolStatus) -> String;
    let series: [(&str, &str, &str, Value); 7] = [
        ("mayfly_pool_ready", "gauge", "Pool members ready to be claimed.", |p| p.ready.to_string()),
        ("mayfly_pool_preparing", "gauge", "Pool members being prepared.", |p| p.preparing.to_string()),
        ("mayfly_pool_target", "gauge", "Pool members the pool aims to keep ready, between pool.min and pool.max.", |p| p.target.to_string()),
        ("mayfly_pool_claims_total", "counter", "Sessions that claimed a pool member (warm starts).", |p| p.claims_total.to_string()),
        ("mayfly_pool_misses_total", "counter", "Sessions of a pooled profile that found no member and started cold.", |p| p.misses_total.to_string()),
        ("mayfly_pool_destroyed_total", "counter", "Unclaimed pool members destroyed: too old, unhealthy, of a changed profile or to make room.", |p| p.destroyed_total.to_string()),
        ("mayfly_pool_oldest_age_seconds", "gauge", "Age of the oldest ready pool member.", |p| format!("{:.3}", p.oldest_age_seconds)),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in pools {
            let _ = writeln!(out, "{name}{{profile=\"{}\"}} {}", pool.profile, value(pool));
        }
    }
    let _ = writeln!(out, "# HELP mayfly_pool_claims_last_minute Sessions that claimed a pool member during the last minute.\n# TYPE mayfly_pool_claims_last_minute gauge");
    for pool in pools {
        let _ = writeln!(out, "mayfly_pool_claims_last_minute{{profile=\"{}\"}} {}", pool.profile, pool.claims_last_minute);
    }
}
