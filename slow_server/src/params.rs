//! The query parameters of `/gen/*`, parsed and validated up front so the handler only deals
//! with typed values and every bad value becomes a 400 with a message naming the parameter.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::StatusCode;

use crate::query::{self, BadRequest};

/// Longest accepted `delay_ms` / `stream_delay_ms`: long enough for any test, short enough that
/// a typo cannot park a connection for years.
const MAX_DELAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Default size of the body chunks handed to hyper.
pub const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;
/// Upper bound for `chunk_bytes`: the generator keeps one chunk-sized buffer per response.
const MAX_CHUNK_BYTES: usize = 16 * 1024 * 1024;
/// 9999-12-31T23:59:59Z, the last instant an HTTP-date can express (httpdate panics beyond).
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

/// Parameters that may appear several times; every other known one at most once.
const REPEATABLE: &[&str] = &["header", "set_cookie"];

/// Everything `/gen/*` can be told to do. Unknown parameters are ignored so callers can add
/// cache-busting ones (`?x=1`).
#[derive(Debug)]
pub struct GenParams {
    /// Wait before the response head (literal, never scaled by --delay-scale).
    pub delay: Duration,
    pub cache_control: Option<HeaderValue>,
    /// Already quoted (`"v1"` or `W/"x"`).
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<SystemTime>,
    /// The raw Vary value; the body echoes the request headers it names.
    pub vary: Option<HeaderValue>,
    pub status: StatusCode,
    /// Body length; `None` means "just the descriptive prefix".
    pub bytes: Option<u64>,
    /// Omit Content-Length so hyper uses chunked transfer encoding.
    pub chunked: bool,
    pub set_cookies: Vec<HeaderValue>,
    pub expires: Option<HeaderValue>,
    /// `header=Name:Value` pairs, in request order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Pause between body chunks.
    pub stream_delay: Option<Duration>,
    pub chunk_bytes: usize,
    /// Send this many body bytes, then drop the connection.
    pub abort_after: Option<u64>,
    /// Declare this Content-Length but send only the real body, then drop the connection.
    pub lie_length: Option<u64>,
}

impl GenParams {
    /// Parses a raw (still percent-encoded) query string.
    pub fn parse(raw_query: &str) -> Result<Self, BadRequest> {
        let mut p = GenParams {
            delay: Duration::ZERO,
            cache_control: None,
            etag: None,
            last_modified: None,
            vary: None,
            status: StatusCode::OK,
            bytes: None,
            chunked: false,
            set_cookies: Vec::new(),
            expires: None,
            headers: Vec::new(),
            stream_delay: None,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            abort_after: None,
            lie_length: None,
        };
        let mut seen = HashSet::new();
        for (name, value) in query::parse(raw_query)? {
            let known = p.apply(&name, &value)?;
            if known && !REPEATABLE.contains(&name.as_str()) && !seen.insert(name.clone()) {
                return Err(BadRequest::new(format!("{name}: given more than once")));
            }
        }
        if p.chunked && p.lie_length.is_some() {
            return Err(BadRequest::new(
                "lie_length: cannot be combined with chunked=1 (there is no length to lie about)",
            ));
        }
        if p.abort_after.is_some() && p.lie_length.is_some() {
            return Err(BadRequest::new(
                "abort_after and lie_length cannot be combined",
            ));
        }
        Ok(p)
    }

    /// Applies one parameter; returns whether the name is known.
    fn apply(&mut self, name: &str, value: &str) -> Result<bool, BadRequest> {
        match name {
            "delay_ms" => self.delay = delay(name, value)?,
            "cc" => self.cache_control = Some(header_value(name, value)?),
            "etag" => self.etag = Some(etag(value)?),
            "last_modified" => self.last_modified = Some(last_modified(value)?),
            "vary" => self.vary = Some(header_value(name, value)?),
            "status" => self.status = status(value)?,
            "bytes" => self.bytes = Some(number(name, value)?),
            "chunked" => self.chunked = flag(name, value)?,
            "set_cookie" => self.set_cookies.push(header_value(name, value)?),
            "expires" => self.expires = Some(expires(value, SystemTime::now())?),
            "header" => self.headers.push(extra_header(value)?),
            "stream_delay_ms" => self.stream_delay = Some(delay(name, value)?),
            "chunk_bytes" => self.chunk_bytes = chunk_bytes(value)?,
            "abort_after" => self.abort_after = Some(number(name, value)?),
            "lie_length" => self.lie_length = Some(number(name, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the parameters that depend on the final body length.
    pub fn check_length(&self, len: u64) -> Result<(), BadRequest> {
        if let Some(cut) = self.abort_after {
            if cut >= len {
                return Err(BadRequest::new(format!(
                    "abort_after: must be less than the body length ({len})"
                )));
            }
        }
        if let Some(lie) = self.lie_length {
            if lie <= len {
                return Err(BadRequest::new(format!(
                    "lie_length: must be greater than the body length ({len})"
                )));
            }
        }
        Ok(())
    }
}

fn number(name: &str, value: &str) -> Result<u64, BadRequest> {
    // `u64::from_str` accepts a leading '+'; a plain digit string is the documented syntax.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadRequest::new(format!(
            "{name}: expected a non-negative integer, got {value:?}"
        )));
    }
    value
        .parse()
        .map_err(|_| BadRequest::new(format!("{name}: {value:?} is too large")))
}

fn delay(name: &str, value: &str) -> Result<Duration, BadRequest> {
    let ms = number(name, value)?;
    if ms > MAX_DELAY_MS {
        return Err(BadRequest::new(format!(
            "{name}: at most {MAX_DELAY_MS} ms (one day)"
        )));
    }
    Ok(Duration::from_millis(ms))
}

fn flag(name: &str, value: &str) -> Result<bool, BadRequest> {
    match value {
        "1" | "true" | "" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(BadRequest::new(format!(
            "{name}: expected 1 or 0, got {value:?}"
        ))),
    }
}

fn chunk_bytes(value: &str) -> Result<usize, BadRequest> {
    let n = number("chunk_bytes", value)?;
    usize::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_CHUNK_BYTES).contains(n))
        .ok_or_else(|| {
            BadRequest::new(format!(
                "chunk_bytes: must be between 1 and {MAX_CHUNK_BYTES}"
            ))
        })
}

fn status(value: &str) -> Result<StatusCode, BadRequest> {
    let code = number("status", value)?;
    // 1xx are not final responses; above 599 nothing (caje included) knows what they mean.
    u16::try_from(code)
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| BadRequest::new(format!("status: must be 200..=599, got {value:?}")))
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, BadRequest> {
    HeaderValue::from_str(value)
        .map_err(|_| BadRequest::new(format!("{name}: {value:?} is not a valid header value")))
}

/// Quotes a bare tag (`v1` → `"v1"`); a quoted or `W/"…"` tag is taken as given. The result must
/// be a valid entity-tag so If-None-Match comparison is well defined.
fn etag(value: &str) -> Result<HeaderValue, BadRequest> {
    let tag = if value.starts_with('"') || value.starts_with("W/\"") {
        value.to_owned()
    } else {
        format!("\"{value}\"")
    };
    let opaque = tag.strip_prefix("W/").unwrap_or(&tag);
    let inner = opaque
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'));
    match inner {
        Some(inner)
            if inner
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"') =>
        {
            header_value("etag", &tag)
        }
        _ => Err(BadRequest::new(format!(
            "etag: {value:?} is not a valid entity-tag (visible ASCII, no inner quotes)"
        ))),
    }
}

fn unix_secs(name: &str, secs: u64) -> Result<SystemTime, BadRequest> {
    if secs > MAX_HTTP_DATE_SECS {
        return Err(BadRequest::new(format!("{name}: date beyond year 9999")));
    }
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// An integer unix timestamp or an HTTP-date.
fn last_modified(value: &str) -> Result<SystemTime, BadRequest> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return unix_secs("last_modified", number("last_modified", value)?);
    }
    httpdate::parse_http_date(value).map_err(|_| {
        BadRequest::new(format!(
            "last_modified: {value:?} is neither a unix timestamp nor an HTTP-date"
        ))
    })
}

/// `+N` is N seconds from now; anything else is sent verbatim, so tests can also send past
/// dates and the invalid values (`0`, `-1`) that caches must treat as "already expired".
fn expires(value: &str, now: SystemTime) -> Result<HeaderValue, BadRequest> {
    match value.strip_prefix('+') {
        Some(secs) => {
            let secs = number("expires", secs)?;
            let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let when = unix_secs("expires", now_secs.saturating_add(secs))?;
            header_value("expires", &httpdate::fmt_http_date(when))
        }
        None => header_value("expires", value),
    }
}

/// `Name:Value`; the framing headers are refused because `bytes`, `chunked` and `lie_length`
/// own them (hyper would otherwise write a broken message).
fn extra_header(value: &str) -> Result<(HeaderName, HeaderValue), BadRequest> {
    let (name, val) = value
        .split_once(':')
        .ok_or_else(|| BadRequest::new(format!("header: expected Name:Value, got {value:?}")))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| BadRequest::new(format!("header: {name:?} is not a valid header name")))?;
    if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
        return Err(BadRequest::new(format!(
            "header: {name} is controlled by bytes / chunked / lie_length"
        )));
    }
    Ok((name, header_value("header", val.trim())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let p = GenParams::parse("").unwrap();
        assert_eq!(p.status, StatusCode::OK);
        assert_eq!(p.delay, Duration::ZERO);
        assert_eq!(p.chunk_bytes, DEFAULT_CHUNK_BYTES);
        assert!(p.bytes.is_none() && !p.chunked && p.etag.is_none());
    }

    #[test]
    fn unknown_parameters_are_ignored_but_duplicates_are_not() {
        assert!(GenParams::parse("x=1&x=2").is_ok());
        assert!(GenParams::parse("header=A:1&header=B:2&set_cookie=a=1&set_cookie=b=2").is_ok());
        assert!(GenParams::parse("cc=no-store&cc=no-cache").is_err());
    }

    #[test]
    fn etags_are_quoted_unless_already_quoted() {
        assert_eq!(etag("v1").unwrap(), "\"v1\"");
        assert_eq!(etag("\"v1\"").unwrap(), "\"v1\"");
        assert_eq!(etag("W/\"x\"").unwrap(), "W/\"x\"");
        assert!(etag("a\"b").is_err());
        assert!(etag("a b").is_err());
        assert!(etag("\"open").is_err());
    }

    #[test]
    fn last_modified_accepts_unix_and_http_dates() {
        let t = last_modified("784111777").unwrap();
        assert_eq!(t, last_modified("Sun, 06 Nov 1994 08:49:37 GMT").unwrap());
        assert!(last_modified("yesterday").is_err());
        assert!(last_modified("99999999999999").is_err());
    }

    #[test]
    fn expires_relative_and_verbatim() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            expires("+60", now).unwrap(),
            "Sun, 06 Nov 1994 08:50:37 GMT"
        );
        assert_eq!(expires("0", now).unwrap(), "0");
        assert_eq!(expires("-1", now).unwrap(), "-1");
        assert!(expires("+soon", now).is_err());
    }

    #[test]
    fn extra_headers() {
        let (n, v) = extra_header("Surrogate-Key: a b").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("surrogate-key", "a b"));
        assert!(extra_header("novalue").is_err());
        assert!(extra_header("bad name:x").is_err());
        assert!(extra_header("Content-Length:5").is_err());
    }

    #[test]
    fn numbers_and_ranges() {
        assert!(GenParams::parse("bytes=-1").is_err());
        assert!(GenParams::parse("bytes=+1").is_err());
        assert!(GenParams::parse("bytes=abc").is_err());
        assert!(GenParams::parse("status=99").is_err());
        assert!(GenParams::parse("status=600").is_err());
        assert!(GenParams::parse("status=503").is_ok());
        assert!(GenParams::parse("chunk_bytes=0").is_err());
        assert!(GenParams::parse("delay_ms=999999999999").is_err());
        assert!(GenParams::parse("chunked=maybe").is_err());
        assert!(GenParams::parse("chunked=1&lie_length=5").is_err());
    }

    #[test]
    fn length_dependent_checks() {
        let p = GenParams::parse("abort_after=10").unwrap();
        assert!(p.check_length(11).is_ok());
        assert!(p.check_length(10).is_err());
        let p = GenParams::parse("lie_length=10").unwrap();
        assert!(p.check_length(9).is_ok());
        assert!(p.check_length(10).is_err());
    }
}
