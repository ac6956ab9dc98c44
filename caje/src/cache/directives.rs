//! What a response's caching fields say, normalised before the policy decides anything.
//!
//! RFC 9213 targeted fields (caje's own, `CDN-Cache-Control`, `Surrogate-Control`) parsed as
//! structured-field dictionaries and, when valid, put in place of `Cache-Control`; directive
//! names lower-cased; `Age` read as one value (invalid: ignored; huge: 2^31); invalid
//! `Expires` as already expired; and header values copied out of hyper's read buffer
//! ([`detach`]). [`super::policy`] hands `http-cache-semantics` only what comes out of here.

use std::borrow::Cow;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};

use super::policy::PolicyOptions;

/// The RFC 9213 field every CDN honours.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// Whether a `Surrogate-Control` value is usable: non-empty and every directive a token with
/// an optional token or quoted-string argument.
fn valid_directives(value: &str) -> bool {
    let mut any = false;
    for d in value.split(',') {
        let d = d.trim();
        if d.is_empty() {
            continue;
        }
        let (name, arg) = match d.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (d, None),
        };
        if !is_token(name) {
            return false;
        }
        if let Some(a) = arg {
            let quoted = a.len() >= 2 && a.starts_with('"') && a.ends_with('"');
            if !quoted && !is_token(a) {
                return false;
            }
        }
        any = true;
    }
    any
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(is_tchar)
}

/// Directives whose value must be a non-negative integer (delta-seconds).
const SECONDS_DIRECTIVES: &[&str] = &[
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Parses a targeted field (RFC 9213 §2.1: a Structured Field Dictionary, RFC 8941 §3.2)
/// into `Cache-Control` syntax. `None` when the value is not a valid dictionary, or a
/// delta-seconds directive has a value of another type: the whole field is then ignored.
/// Keys are compared case-insensitively (caje accepted `MAX-AGE` before, and no valid
/// dictionary key can mean anything else).
fn targeted_directives(value: &str) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = value.trim_matches(|c| c == ' ' || c == '\t');
    if rest.is_empty() {
        return None;
    }
    loop {
        // key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
        let key_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*'))
            .count();
        let key = rest[..key_len].to_ascii_lowercase();
        if !key.starts_with(|c: char| c.is_ascii_lowercase() || c == '*') {
            return None;
        }
        rest = &rest[key_len..];
        let item = if let Some(r) = rest.strip_prefix('=') {
            let (item, r) = bare_item(r)?;
            rest = r;
            Some(item)
        } else {
            None
        };
        // Parameters (`;name[=value]`) are allowed and ignored.
        while let Some(r) = rest.strip_prefix(';') {
            let r = r.trim_start_matches(' ');
            let n = r
                .bytes()
                .take_while(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'_' | b'-' | b'.' | b'*')
                })
                .count();
            if n == 0 {
                return None;
            }
            rest = &r[n..];
            if let Some(r) = rest.strip_prefix('=') {
                rest = bare_item(r)?.1;
            }
        }
        let numeric = SECONDS_DIRECTIVES.contains(&key.as_str());
        match item {
            Some(BareItem::Integer(n)) => out.push(format!("{key}={n}")),
            _ if numeric => return None,
            None | Some(BareItem::True) => out.push(key),
            Some(BareItem::False) => {}
            Some(BareItem::Other(text)) => out.push(format!("{key}={text}")),
        }
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix(',')?.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            // A trailing comma is invalid.
            return None;
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(out.join(", "))
}

enum BareItem {
    Integer(u64),
    True,
    False,
    /// A string, token, decimal or byte sequence, as written.
    Other(String),
}

/// One RFC 8941 bare item at the start of `s`, and what follows it.
fn bare_item(s: &str) -> Option<(BareItem, &str)> {
    let b = s.as_bytes();
    match b.first()? {
        b'-' | b'0'..=b'9' => {
            let n = 1 + b[1..]
                .iter()
                .take_while(|c| c.is_ascii_digit() || **c == b'.')
                .count();
            let text = &s[..n];
            if let Ok(v) = text.parse::<u64>() {
                // RFC 8941 integers have at most 15 digits; larger ones are invalid.
                return (text.len() <= 15).then_some((BareItem::Integer(v), &s[n..]));
            }
            text.parse::<f64>()
                .ok()
                .map(|_| (BareItem::Other(text.to_owned()), &s[n..]))
        }
        b'"' => {
            let mut i = 1;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() && matches!(b[i + 1], b'"' | b'\\') => i += 2,
                    b'"' => return Some((BareItem::Other(s[..=i].to_owned()), &s[i + 1..])),
                    c if (0x20..0x7f).contains(&c) && c != b'\\' => i += 1,
                    _ => return None,
                }
            }
            None
        }
        b'?' => match b.get(1)? {
            b'1' => Some((BareItem::True, &s[2..])),
            b'0' => Some((BareItem::False, &s[2..])),
            _ => None,
        },
        b':' => {
            let end = s[1..].find(':')? + 1;
            Some((BareItem::Other(s[..=end].to_owned()), &s[end + 1..]))
        }
        c if c.is_ascii_alphabetic() || *c == b'*' => {
            let n = s
                .bytes()
                .take_while(|c| is_tchar(*c) || matches!(c, b':' | b'/'))
                .count();
            Some((BareItem::Other(s[..n].to_owned()), &s[n..]))
        }
        _ => None,
    }
}

/// The older CDN field (Akamai, Fastly), honoured after `CDN-Cache-Control`.
pub const SURROGATE_CONTROL: &str = "surrogate-control";

/// The response headers caje's decisions use:
/// - with a valid targeted field (caje's own, then `CDN-Cache-Control`, then
///   `Surrogate-Control`), its value becomes the only `Cache-Control`, and `Expires`/`Pragma`
///   are ignored (RFC 9213 §2.1);
/// - directive names are lower-cased (`NO-CACHE` is `no-cache`: RFC 9111 §5.2, directives are
///   case-insensitive; `http-cache-semantics` compares them exactly);
/// - `Age` is read as cache-tests.fyi expects: the first value of the first line, without
///   parameters; a value that is not a non-negative integer is ignored, and a larger one
///   than 2^31 saturates to 2^31 (RFC 9111 §1.2.2);
/// - an invalid `Expires` becomes "0" (already expired, RFC 9111 §5.3).
pub fn effective_headers<'a>(headers: &'a HeaderMap, opts: &PolicyOptions) -> Cow<'a, HeaderMap> {
    let fields = opts
        .targeted
        .iter()
        .map(|n| n.as_str())
        .chain([CDN_CACHE_CONTROL, SURROGATE_CONTROL]);
    let mut out: Option<HeaderMap> = None;
    for field in fields {
        let values: Vec<&str> = headers
            .get_all(field)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            continue;
        }
        let joined = values.join(", ");
        let directives = if field == SURROGATE_CONTROL {
            // Surrogate-Control directives may name their target (`max-age=60;edge`);
            // caje is every target. It predates structured fields.
            let plain = joined
                .split(',')
                .map(|d| d.split(';').next().unwrap_or("").trim())
                .collect::<Vec<_>>()
                .join(", ");
            valid_directives(&plain).then_some(plain)
        } else {
            targeted_directives(&joined)
        };
        let Some(value) = directives.and_then(|d| HeaderValue::from_str(&d).ok()) else {
            continue;
        };
        let mut h = headers.clone();
        h.remove(http::header::CACHE_CONTROL);
        h.remove(http::header::EXPIRES);
        h.remove(http::header::PRAGMA);
        h.insert(http::header::CACHE_CONTROL, value);
        out = Some(h);
        break;
    }
    let current = out.as_ref().unwrap_or(headers);
    let cc: Vec<&str> = current
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if cc.iter().any(|v| v.bytes().any(|b| b.is_ascii_uppercase())) {
        let lowered = cc
            .iter()
            .flat_map(|v| v.split(','))
            .map(|d| match d.split_once('=') {
                Some((n, a)) => format!("{}={}", n.trim().to_ascii_lowercase(), a.trim()),
                None => d.trim().to_ascii_lowercase(),
            })
            .filter(|d| !d.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&lowered) {
            out.get_or_insert_with(|| headers.clone())
                .insert(http::header::CACHE_CONTROL, v);
        }
    }
    let current = out.as_ref().unwrap_or(headers);
    let age = normalized_age(current);
    if age.as_ref() != current.get(http::header::AGE)
        || current.get_all(http::header::AGE).iter().nth(1).is_some()
    {
        let h = out.get_or_insert_with(|| headers.clone());
        h.remove(http::header::AGE);
        if let Some(age) = age {
            h.insert(http::header::AGE, age);
        }
    }
    let current = out.as_ref().unwrap_or(headers);
    if let Some(expires) = current.get(http::header::EXPIRES) {
        // RFC 9111 §5.3: an invalid date means "already expired". `http-cache-semantics`
        // parses dates leniently (RFC 2822 allows runs of spaces), so caje decides validity
        // (RFC 9110 §5.6.7: IMF-fixdate and the two obsolete formats) and hands it a
        // canonical IMF-fixdate, or "0".
        let canonical = expires
            .to_str()
            .ok()
            .and_then(parse_http_date)
            .map(httpdate::fmt_http_date);
        let value = canonical
            .and_then(|v| HeaderValue::from_str(&v).ok())
            .unwrap_or(HeaderValue::from_static("0"));
        if current
            .get_all(http::header::EXPIRES)
            .iter()
            .nth(1)
            .is_some()
            || value != expires
        {
            out.get_or_insert_with(|| headers.clone())
                .insert(http::header::EXPIRES, value);
        }
    }
    if opts.store_set_cookie
        && out
            .as_ref()
            .unwrap_or(headers)
            .contains_key(http::header::SET_COOKIE)
    {
        // The operator opted in: the cookie does not make the response private.
        out.get_or_insert_with(|| headers.clone())
            .remove(http::header::SET_COOKIE);
    }
    match out {
        Some(h) => Cow::Owned(h),
        None => Cow::Borrowed(headers),
    }
}

/// An HTTP-date in any of the three formats of RFC 9110 §5.6.7, with the names of days,
/// months and the zone in any case (`THU`, `AUG`, `gmt`: many origins get the case wrong,
/// and such a date means the same). Anything else, such as runs of spaces, is invalid.
pub(super) fn parse_http_date(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(t) = httpdate::parse_http_date(value) {
        return Some(t);
    }
    let mut fixed = String::with_capacity(value.len());
    let mut word_start = true;
    for c in value.chars() {
        if c.is_ascii_alphabetic() {
            fixed.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            fixed.push(c);
            word_start = true;
        }
    }
    let fixed = fixed.replace("Gmt", "GMT");
    httpdate::parse_http_date(&fixed).ok()
}

/// The one `Age` value caje uses, or `None` to ignore the field: the first member of the
/// first field line, its parameters dropped. Too large saturates to 2^31, the same bound
/// [`super::clamp`] applies to every delta-seconds before `http-cache-semantics` sees it.
pub(super) fn normalized_age(headers: &HeaderMap) -> Option<HeaderValue> {
    let first = headers.get(http::header::AGE)?.to_str().ok()?;
    let item = first.split(',').next()?.split(';').next()?.trim();
    if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only: a parse failure can only be overflow, which saturates.
    let secs = item
        .parse::<u64>()
        .unwrap_or(super::clamp::MAX_DELTA_SECONDS)
        .min(super::clamp::MAX_DELTA_SECONDS);
    Some(HeaderValue::from(secs))
}

/// A copy of `headers` that owns its bytes. hyper parses header values as slices of the
/// connection's read buffer: keeping such a value in a stored policy would pin that whole
/// buffer (tens of KiB) in memory for as long as the entry lives.
pub fn detach(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut v = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        v.set_sensitive(value.is_sensitive());
        out.append(name.clone(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeted_fields_are_structured_dictionaries() {
        assert_eq!(
            targeted_directives("max-age=60, no-transform;x=1, private=?0").as_deref(),
            Some("max-age=60, no-transform")
        );
        assert_eq!(
            targeted_directives("MAX-AGE=60").as_deref(),
            Some("max-age=60")
        );
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age =100",
            "max-age= 100",
            "max-age=60,",
            "max-age=1.5",
            "max-age=9999999999999999",
            "",
        ] {
            assert_eq!(targeted_directives(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_dates_are_strict_about_spaces_but_not_about_case() {
        assert!(parse_http_date("Thu, 18 Aug 2050 02:01:18 GMT").is_some());
        assert!(parse_http_date("THU, 18 AUG 2050 02:01:18 gmt").is_some());
        assert!(parse_http_date("Thursday, 18-Aug-50 02:01:18 GMT").is_some());
        assert!(parse_http_date("Thu, 18  Aug  2050 02:01:18 GMT").is_none());
        assert!(parse_http_date("Thu, 18-Aug-2050 02:01:18 GMT").is_none());
        assert!(parse_http_date("0").is_none());
    }
}
