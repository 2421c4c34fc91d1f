//! A profile's `[pool]` section: how many sandboxes the server prepares
//! ahead of demand for the profile, and for how long each may wait.

use serde::{Deserialize, Serialize};

use crate::{Ttl, WholeNumber};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    min: Option<WholeNumber>,
    max: Option<WholeNumber>,
    max_age: Option<Ttl>,
}

/// The warm pool of a profile. A profile without a `[pool]` section has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolSettings {
    /// Members kept ready whatever the demand.
    pub min: u32,
    /// Members kept ready at most, when demand is higher.
    pub max: u32,
    /// A member older than this is destroyed and replaced.
    pub max_age: Ttl,
}

/// The largest `pool.max`.
pub const MAX_MEMBERS: u32 = 256;
/// The shortest and longest `pool.max_age`.
pub const MAX_AGE_RANGE: (Ttl, Ttl) = (Ttl::from_secs(10), Ttl::from_secs(86_400));

impl PoolSettings {
    pub(crate) fn from_raw(raw: RawPool) -> Result<PoolSettings, (String, String)> {
        let raw_min = raw.min.unwrap_or(WholeNumber(0));
        let Some(min) = raw_min.to_u32() else {
            return Err(("pool.min".into(), format!("= {raw_min} is out of range: allowed is 0 to {MAX_MEMBERS}")));
        };
        if raw.max.is_none() && min > MAX_MEMBERS {
            return Err(("pool.min".into(), format!("= {min} is out of range: allowed is 0 to {MAX_MEMBERS} (pool.max, which defaults to pool.min)")));
        }
        let raw_max = raw.max.unwrap_or(WholeNumber(i64::from(min.max(1))));
        let Some(max) = raw_max.to_u32().filter(|max| (1..=MAX_MEMBERS).contains(max)) else {
            return Err(("pool.max".into(), format!("= {raw_max} is out of range: allowed is 1 to {MAX_MEMBERS}")));
        };
        if min > max {
            return Err(("pool.min".into(), format!("= {min} is out of range: allowed is 0 to pool.max ({max})")));
        }
        let max_age = raw.max_age.unwrap_or(Ttl::from_secs(1800));
        let (shortest, longest) = MAX_AGE_RANGE;
        if max_age < shortest || max_age > longest {
            return Err(("pool.max_age".into(), format!("= {max_age} is out of range: allowed is {shortest} to {longest}")));
        }
        Ok(PoolSettings { min, max, max_age })
    }
}
