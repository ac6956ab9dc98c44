//! Delta-seconds from the network, clamped before any arithmetic sees them.
//!
//! RFC 9111 §1.2.2: a cache that receives a delta-seconds value larger than it can represent,
//! or whose calculations would overflow, must treat it as 2^31 seconds. `http-cache-semantics`
//! adds such values to `Duration`s and `SystemTime`s unchecked, so an origin sending
//! `Age: 18446744073709551615` made every later request for that URL panic. Every header map
//! handed to it goes through [`clamp_delta_seconds`] first.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The largest delta-seconds value caje passes on (RFC 9111 §1.2.2).
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// Fields whose values are, or contain, delta-seconds.
const DIRECTIVE_FIELDS: &[&str] = &[
    "cache-control",
    "cdn-cache-control",
    "surrogate-control",
    "caje-cache-control",
];

/// Rewrites every all-digit delta-seconds value above [`MAX_DELTA_SECONDS`] in `Age` and in
/// the cache-directive fields (and `targeted`, caje's own field when renamed) to 2^31.
/// Values that are not plain digits are left as they are, for the policy to judge.
pub fn clamp_delta_seconds(headers: &mut HeaderMap, targeted: Option<&HeaderName>) {
    let mut names: Vec<HeaderName> = DIRECTIVE_FIELDS
        .iter()
        .map(|n| HeaderName::from_static(n))
        .collect();
    names.extend(targeted.cloned());
    for name in std::iter::once(http::header::AGE).chain(names) {
        if !headers.contains_key(&name) {
            continue;
        }
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let mut changed = false;
        let clamped: Vec<HeaderValue> = values
            .into_iter()
            .map(|v| match clamp_value(&v) {
                Some(c) => {
                    changed = true;
                    c
                }
                None => v,
            })
            .collect();
        if changed {
            headers.remove(&name);
            for v in clamped {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// The value with its oversized numbers clamped, or `None` when nothing changes.
fn clamp_value(v: &HeaderValue) -> Option<HeaderValue> {
    let text = v.to_str().ok()?;
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    // Split into runs of digits and the rest; a digit run that is a whole delta-seconds
    // value (not part of a token such as `v2` or a quoted string) is clamped.
    while !rest.is_empty() {
        let start = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (before, tail) = rest.split_at(start);
        out.push_str(before);
        let len = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (digits, after) = tail.split_at(len);
        let standalone = before.is_empty() || before.ends_with(['=', ' ', ',', '\t']);
        let too_big =
            digits.len() > 10 || digits.parse::<u64>().is_ok_and(|n| n > MAX_DELTA_SECONDS);
        if !digits.is_empty() && standalone && too_big && !after.starts_with('"') {
            out.push_str(&MAX_DELTA_SECONDS.to_string());
            changed = true;
        } else {
            out.push_str(digits);
        }
        rest = after;
    }
    changed.then(|| HeaderValue::from_str(&out).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clamped(name: &'static str, value: &'static str) -> String {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        clamp_delta_seconds(&mut h, None);
        h[name].to_str().unwrap().to_owned()
    }

    #[test]
    fn oversized_values_become_two_to_the_31() {
        assert_eq!(clamped("age", "18446744073709551615"), "2147483648");
        assert_eq!(clamped("age", "99999999999999999999999"), "2147483648");
        assert_eq!(clamped("age", "2147483648"), "2147483648");
        assert_eq!(
            clamped("cache-control", "public, max-age=99999999999, s-maxage=5"),
            "public, max-age=2147483648, s-maxage=5"
        );
        assert_eq!(
            clamped("cdn-cache-control", "stale-if-error=4294967296"),
            "stale-if-error=2147483648"
        );
    }

    #[test]
    fn ordinary_values_are_untouched() {
        assert_eq!(clamped("age", "60"), "60");
        assert_eq!(clamped("age", "2147483647"), "2147483647");
        assert_eq!(clamped("age", "abc"), "abc");
        assert_eq!(clamped("cache-control", "max-age=600"), "max-age=600");
        assert_eq!(
            clamped("cache-control", "private=\"x99999999999\""),
            "private=\"x99999999999\""
        );
    }
}
