//! Replication lag, as LiteFS writes it in `.lag`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ParseError;

/// How far this node is behind the primary, from `.lag` (`%+010d\n`, milliseconds).
///
/// `+000000000` on the primary; `+2147483647` ([`i32::MAX`]) before the first replication; the
/// value can be negative when clocks are skewed.
///
/// ```
/// use litefs::Lag;
/// let lag: Lag = "+000000118\n".parse().unwrap();
/// assert_eq!(lag.millis(), 118);
/// assert_eq!(lag.duration(), Some(std::time::Duration::from_millis(118)));
///
/// let never: Lag = "+2147483647\n".parse().unwrap();
/// assert!(never.is_never_replicated());
/// assert_eq!(never.duration(), None);
///
/// let skewed: Lag = "-000000005\n".parse().unwrap();
/// assert_eq!(skewed.millis(), -5);
/// assert_eq!(skewed.duration(), Some(std::time::Duration::ZERO));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lag(i32);

impl Lag {
    /// A lag of `millis` milliseconds.
    ///
    /// ```
    /// assert_eq!(litefs::Lag::from_millis(3).millis(), 3);
    /// ```
    pub const fn from_millis(millis: i32) -> Lag {
        Lag(millis)
    }

    /// The raw value in milliseconds, possibly negative (clock skew) or [`i32::MAX`].
    ///
    /// ```
    /// assert_eq!(litefs::Lag::from_millis(-1).millis(), -1);
    /// ```
    pub const fn millis(self) -> i32 {
        self.0
    }

    /// Whether this node has not finished its first replication (`+2147483647`).
    ///
    /// ```
    /// assert!(litefs::Lag::from_millis(i32::MAX).is_never_replicated());
    /// ```
    pub const fn is_never_replicated(self) -> bool {
        self.0 == i32::MAX
    }

    /// The lag as a duration: `None` before the first replication, negative values (clock skew)
    /// clamped to zero.
    ///
    /// ```
    /// assert_eq!(litefs::Lag::from_millis(0).duration(), Some(std::time::Duration::ZERO));
    /// ```
    pub fn duration(self) -> Option<Duration> {
        if self.is_never_replicated() {
            None
        } else {
            Some(Duration::from_millis(self.0.max(0) as u64))
        }
    }
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:+010}", self.0)
    }
}

impl FromStr for Lag {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Lag, ParseError> {
        let body = s.strip_suffix('\n').unwrap_or(s);
        let digits = body.strip_prefix(['+', '-']).unwrap_or(body);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::new(".lag", s, "expected a signed decimal"));
        }
        body.parse::<i32>()
            .map(Lag)
            .map_err(|_| ParseError::new(".lag", s, "out of range for a 32-bit millisecond count"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_parses_litefs_forms() {
        assert_eq!("+000000000\n".parse::<Lag>().unwrap().millis(), 0);
        assert_eq!("+000000118\n".parse::<Lag>().unwrap().millis(), 118);
        assert_eq!("+2147483647\n".parse::<Lag>().unwrap().millis(), i32::MAX);
        assert_eq!("-000000042\n".parse::<Lag>().unwrap().millis(), -42);
        assert_eq!("-2147483648\n".parse::<Lag>().unwrap().millis(), i32::MIN);
        assert_eq!("17".parse::<Lag>().unwrap().millis(), 17);
    }

    #[test]
    fn lag_formats_like_litefs() {
        assert_eq!(Lag::from_millis(118).to_string(), "+000000118");
        assert_eq!(Lag::from_millis(-5).to_string(), "-000000005");
        assert_eq!(Lag::from_millis(i32::MAX).to_string(), "+2147483647");
    }

    #[test]
    fn lag_rejects_garbage() {
        for bad in [
            "",
            "+",
            "\n",
            "+2147483648\n",
            "1.5",
            " +1",
            "+1\n\n",
            "++1",
            "0x10",
        ] {
            let e = bad.parse::<Lag>().unwrap_err();
            assert_eq!(e.what(), ".lag", "{bad:?}");
        }
    }
}
