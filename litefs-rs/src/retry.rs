//! [`RetryPolicy`]: when and how often a HALT acquisition is retried.

use std::time::Duration;

use crate::halt::HALT_ACQUIRE_LIMIT;

/// When and how often [`Database::halt_with_retry`] retries.
///
/// Default: 4 attempts, backoff 200 ms doubling to at most 2 s, each attempt bounded to 12 s
/// (LiteFS itself gives up after 10 s, so its `EIO` normally arrives first).
///
/// ```
/// use std::time::Duration;
/// let p = litefs::RetryPolicy::new(3).with_backoff(Duration::from_millis(100), Duration::from_millis(250));
/// assert_eq!(p.backoff(1), Duration::from_millis(100));
/// assert_eq!(p.backoff(2), Duration::from_millis(200));
/// assert_eq!(p.backoff(3), Duration::from_millis(250));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    attempt_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Some(HALT_ACQUIRE_LIMIT + Duration::from_secs(2)),
        }
    }
}

impl RetryPolicy {
    /// The default policy with `max_attempts` attempts in total (at least 1).
    ///
    /// ```
    /// assert_eq!(litefs::RetryPolicy::new(0).max_attempts(), 1);
    /// ```
    pub fn new(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..RetryPolicy::default()
        }
    }

    /// Sets the first pause and the cap of the doubling backoff.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let p = litefs::RetryPolicy::new(2).with_backoff(Duration::ZERO, Duration::ZERO);
    /// assert_eq!(p.backoff(5), Duration::ZERO);
    /// ```
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> RetryPolicy {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Bounds each attempt (`None`: wait as long as LiteFS does).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let p = litefs::RetryPolicy::new(2).with_attempt_timeout(Some(Duration::from_secs(1)));
    /// assert_eq!(p.attempt_timeout(), Some(Duration::from_secs(1)));
    /// ```
    pub fn with_attempt_timeout(mut self, timeout: Option<Duration>) -> RetryPolicy {
        self.attempt_timeout = timeout;
        self
    }

    /// Total number of attempts.
    ///
    /// ```
    /// assert_eq!(litefs::RetryPolicy::default().max_attempts(), 4);
    /// ```
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The per-attempt timeout.
    ///
    /// ```
    /// assert!(litefs::RetryPolicy::default().attempt_timeout().is_some());
    /// ```
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// The pause before retry number `retry` (1-based): `initial × 2^(retry−1)`, capped.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let p = litefs::RetryPolicy::default();
    /// assert_eq!(p.backoff(1), Duration::from_millis(200));
    /// assert_eq!(p.backoff(30), Duration::from_secs(2));
    /// ```
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}
