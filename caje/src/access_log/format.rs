//! One access log line as JSON, appended to a byte buffer without allocating: JSON string
//! escaping, integers, milliseconds with three decimals, and the RFC 3339 time whose
//! date-and-seconds part is cached by the caller (it changes once a second, lines come by
//! the thousand).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::Line;

/// `YYYY-MM-DDTHH:MM:SS` of one second, cached: formatting the date is most of the cost of a
/// timestamp, and every line of the same second shares it.
#[derive(Debug, Clone, Copy)]
pub(super) struct SecondCache {
    secs: u64,
    text: [u8; 19],
}

impl Default for SecondCache {
    fn default() -> Self {
        SecondCache {
            secs: 0,
            text: civil(0),
        }
    }
}

impl SecondCache {
    /// The text of `secs` since the epoch, recomputed only when the second changed.
    fn get(&mut self, secs: u64) -> &[u8; 19] {
        if secs != self.secs {
            self.secs = secs;
            self.text = civil(secs);
        }
        &self.text
    }
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS` (UTC; years past 9999 wrap, which no
/// clock reaches).
fn civil(secs: u64) -> [u8; 19] {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    out
}

/// Appends `line` and its newline to `out`.
pub(super) fn line(out: &mut Vec<u8>, seconds: &mut SecondCache, line: &Line<'_>) {
    let since = line
        .time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(seconds.get(since.as_secs()));
    out.push(b'.');
    three_digits(out, since.subsec_millis());
    out.extend_from_slice(b"Z\",\"client\":");
    addr(out, line.client);
    out.extend_from_slice(b",\"method\":");
    string(out, line.method);
    out.extend_from_slice(b",\"host\":");
    string(out, line.host);
    out.extend_from_slice(b",\"path\":");
    string(out, line.path);
    out.extend_from_slice(b",\"status\":");
    int(out, u64::from(line.status));
    out.extend_from_slice(b",\"bytes\":");
    int(out, line.bytes);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, line.duration);
    out.extend_from_slice(b",\"origin_ms\":");
    match line.origin {
        Some(d) => millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"cache\":");
    string(out, line.cache);
    out.extend_from_slice(b",\"cache_status\":");
    match line.cache_status {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"origin_addr\":");
    match line.origin_addr {
        Some(a) => addr(out, a),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}\n");
}

fn int(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn three_digits(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&[
        b'0' + (v / 100 % 10) as u8,
        b'0' + (v / 10 % 10) as u8,
        b'0' + (v % 10) as u8,
    ]);
}

/// A duration as milliseconds with three decimals (microseconds), e.g. `12.345`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    int(out, micros / 1000);
    out.push(b'.');
    three_digits(out, (micros % 1000) as u32);
}

/// A socket address as a JSON string (`"127.0.0.1:5000"`, `"[::1]:5000"`): no character of
/// it needs escaping. IPv4 by hand: `core::fmt` was a sixth of the log's CPU time.
fn addr(out: &mut Vec<u8>, a: SocketAddr) {
    out.push(b'"');
    match a {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                int(out, u64::from(octet));
            }
            out.push(b':');
            int(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{a}");
        }
    }
    out.push(b'"');
}

/// `s` as a JSON string: `"` and `\` escaped, control characters as `\n`, `\t`... or
/// `\u00XX`; everything else (UTF-8 included) as is. Requests carry what clients sent, so
/// this is where a hostile path or host could break a line: nothing gets through unescaped.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Most strings need no escape: one pass without an early exit (which the compiler can
    // vectorise), then one copy.
    let clean = !bytes.iter().fold(false, |dirty, &b| {
        dirty | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if clean {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(l: &Line<'_>) -> (String, serde_json::Value) {
        let mut out = Vec::new();
        line(&mut out, &mut SecondCache::default(), l);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (text, v)
    }

    fn sample<'a>(host: &'a str, path: &'a str) -> Line<'a> {
        Line {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_251_199_123),
            client: "127.0.0.1:5000".parse().unwrap(),
            method: "GET",
            host,
            path,
            status: 200,
            bytes: 1024,
            duration: Duration::from_micros(1_234_567),
            origin: None,
            cache: "hit",
            cache_status: Some("caje; hit; ttl=59"),
            origin_addr: None,
        }
    }

    #[test]
    fn every_field() {
        let mut l = sample("example.com", "/a?b=c");
        l.origin = Some(Duration::from_micros(7));
        l.origin_addr = Some("[::1]:3000".parse().unwrap());
        let (text, _) = one(&l);
        assert_eq!(
            text,
            "{\"time\":\"2024-02-29T23:59:59.123Z\",\"client\":\"127.0.0.1:5000\",\
             \"method\":\"GET\",\"host\":\"example.com\",\"path\":\"/a?b=c\",\"status\":200,\
             \"bytes\":1024,\"duration_ms\":1234.567,\"origin_ms\":0.007,\"cache\":\"hit\",\
             \"cache_status\":\"caje; hit; ttl=59\",\"origin_addr\":\"[::1]:3000\"}\n"
        );
        let (_, v) = one(&sample("h", "/"));
        assert!(
            v["origin_ms"].is_null() && v["origin_addr"].is_null(),
            "{v}"
        );
    }

    #[test]
    fn addresses_as_display_writes_them() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.200.9:80",
            "[::1]:443",
            "[fe80::1%2]:8080",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            addr(&mut out, a);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{a}\""));
        }
    }

    #[test]
    fn dates() {
        assert_eq!(&civil(0), b"1970-01-01T00:00:00");
        assert_eq!(&civil(951_868_800), b"2000-03-01T00:00:00");
        assert_eq!(&civil(1_709_251_199), b"2024-02-29T23:59:59");
        assert_eq!(&civil(4_102_444_800), b"2100-01-01T00:00:00");
        // The cache follows the clock both ways.
        let mut c = SecondCache::default();
        assert_eq!(c.get(1_709_251_199), b"2024-02-29T23:59:59");
        assert_eq!(c.get(1_709_251_200), b"2024-03-01T00:00:00");
        assert_eq!(c.get(0), b"1970-01-01T00:00:00");
    }

    #[test]
    fn hostile_strings_stay_one_valid_line() {
        let mut every_control = String::new();
        for c in 0u8..0x20 {
            every_control.push(char::from(c));
        }
        let hostile = [
            "\"},{\"status\":500,\"x\":\"".to_owned(),
            "back\\slash\\\"".to_owned(),
            every_control,
            "\u{7f}\u{2028}\u{2029}é€😀\u{fffd}".to_owned(),
            "line\nbreak\r\n{\"time\":\"forged\"}".to_owned(),
        ];
        for h in &hostile {
            let (_, v) = one(&sample(h, h));
            assert_eq!(v["host"], h.as_str());
            assert_eq!(v["path"], h.as_str());
            assert_eq!(v["status"], 200);
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a client sends (any Unicode, controls included) comes back unchanged
        /// from one JSON line.
        #[test]
        fn any_string_round_trips(host in any::<String>(), path in "\\PC*|[\\x00-\\x7f]*") {
            let l = Line {
                time: SystemTime::now(),
                client: "[::1]:1".parse().unwrap(),
                method: "GET",
                host: &host,
                path: &path,
                status: 404,
                bytes: 0,
                duration: Duration::ZERO,
                origin: Some(Duration::MAX),
                cache: "miss",
                cache_status: None,
                origin_addr: None,
            };
            let mut out = Vec::new();
            line(&mut out, &mut SecondCache::default(), &l);
            prop_assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(v["host"].as_str(), Some(host.as_str()));
            prop_assert_eq!(v["path"].as_str(), Some(path.as_str()));
            prop_assert!(v["origin_ms"].as_f64().is_some());
        }
    }
}
