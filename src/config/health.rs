//! `health.storagedriver`, as in Distribution: how often readiness checks that storage is
//! writable, and after how many failures in a row it reports the mirror not ready.

use std::time::Duration;

use serde::Deserialize;

use super::{bad, duration, scalar, ConfigError};

pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_THRESHOLD: usize = 3;

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// None when `health.storagedriver.enabled` is false: readiness then never checks storage.
    pub storage: Option<StorageCheck>,
}

#[derive(Debug, Clone)]
pub struct StorageCheck {
    pub interval: Duration,
    /// Failures in a row before readiness fails.
    pub threshold: usize,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawHealth {
    storagedriver: RawStorageCheck,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawStorageCheck {
    #[serde(deserialize_with = "scalar::deserialize_optional_bool")]
    enabled: Option<bool>,
    #[serde(deserialize_with = "duration::deserialize_optional")]
    interval: Option<Duration>,
    #[serde(deserialize_with = "scalar::deserialize_optional_count")]
    threshold: Option<usize>,
}

impl RawHealth {
    /// Unlike Distribution, the check is on unless disabled: a mirror that cannot write its
    /// cache should leave the load balancer.
    pub(super) fn validate(self) -> Result<HealthConfig, ConfigError> {
        let check = self.storagedriver;
        if check.enabled == Some(false) {
            return Ok(HealthConfig { storage: None });
        }
        let interval = check.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL);
        if interval.is_zero() {
            return Err(bad("health.storagedriver.interval", "must be more than 0"));
        }
        let threshold = check.threshold.unwrap_or(DEFAULT_HEALTH_THRESHOLD).max(1);
        Ok(HealthConfig {
            storage: Some(StorageCheck {
                interval,
                threshold,
            }),
        })
    }
}
