//! Keyed rate limits with bounded memory.
//!
//! Each key gets a bucket that refills at a steady rate up to a burst size
//! (the generic cell rate algorithm: one timestamp per key). The table holds
//! at most `max_keys` keys. When it is full, keys whose buckets have refilled
//! completely are dropped first, since a full bucket is the same as no entry;
//! if none can be dropped, every new key shares one overflow bucket, so a
//! flood of fresh keys (random tokens, spoofed sources) cannot grow memory
//! or mint fresh allowances.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bucket's refill rate and capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    fn interval(self) -> Duration {
        Duration::from_secs(60) / self.per_minute.max(1)
    }
}

struct Table<K> {
    /// The theoretical arrival time of each key's next request.
    keys: HashMap<K, Instant>,
    overflow: Option<Instant>,
}

pub struct Limiter<K> {
    rate: Rate,
    max_keys: usize,
    table: Mutex<Table<K>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Limiter<K> {
        Limiter { rate, max_keys: max_keys.max(1), table: Mutex::new(Table { keys: HashMap::new(), overflow: None }) }
    }

    /// Takes one request from `key`'s bucket. Returns `Err(wait)` with the
    /// time until the next request would be allowed when the bucket is empty.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let interval = self.rate.interval();
        let tolerance = interval * self.rate.burst.saturating_sub(1);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !table.keys.contains_key(key) && table.keys.len() >= self.max_keys {
            table.keys.retain(|_, tat| *tat > now);
        }
        let slot = if table.keys.contains_key(key) || table.keys.len() < self.max_keys {
            table.keys.entry(key.clone()).or_insert(now)
        } else {
            table.overflow.get_or_insert(now)
        };
        let tat = (*slot).max(now);
        let allowed_at = tat.checked_sub(tolerance).unwrap_or(now);
        if now < allowed_at {
            return Err(allowed_at - now);
        }
        *slot = tat + interval;
        Ok(())
    }

    /// Returns the number of keys tracked, never more than `max_keys`.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = Limiter::new(Rate { per_minute: 60, burst: 3 }, 10);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(&"a", start).is_ok());
        }
        let wait = limiter.check_at(&"a", start).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.check_at(&"b", start).is_ok(), "other keys have their own bucket");
        assert!(limiter.check_at(&"a", start + Duration::from_secs(1)).is_ok(), "one request per second refills");
        assert!(limiter.check_at(&"a", start + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn memory_stays_bounded_and_new_keys_share_one_bucket_when_full() {
        let limiter = Limiter::new(Rate { per_minute: 60, burst: 2 }, 100);
        let start = Instant::now();
        let mut allowed = 0;
        for key in 0..10_000u32 {
            if limiter.check_at(&key, start).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(limiter.len(), 100);
        // 100 keys with a burst of 2 each take one request; the other 9,900
        // share the overflow bucket's burst of 2.
        assert_eq!(allowed, 102);
    }

    #[test]
    fn refilled_keys_make_room() {
        let limiter = Limiter::new(Rate { per_minute: 60, burst: 1 }, 2);
        let start = Instant::now();
        assert!(limiter.check_at(&1, start).is_ok());
        assert!(limiter.check_at(&2, start).is_ok());
        let later = start + Duration::from_secs(5);
        assert!(limiter.check_at(&3, later).is_ok());
        assert!(limiter.check_at(&4, later).is_ok(), "old full buckets were dropped");
        assert!(limiter.len() <= 2);
    }
}
