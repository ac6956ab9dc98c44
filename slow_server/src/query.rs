//! Query-string splitting and percent-decoding.
//!
//! `+` is kept as a literal plus (RFC 3986 query semantics, not HTML-form encoding) because
//! `expires=+60` must mean "now + 60 s"; callers encode a space as `%20`.

/// A request parameter that cannot be used; becomes a 400 whose body is this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl BadRequest {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Splits `a=1&b=x%3Dy` into decoded `(name, value)` pairs, in order. A pair without `=` has an
/// empty value; empty segments (`a=1&&b=2`) are skipped.
pub fn parse(query: &str) -> Result<Vec<(String, String)>, BadRequest> {
    query
        .split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// Decodes `%XX` escapes; the result must be UTF-8.
pub fn decode(raw: &str) -> Result<String, BadRequest> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| BadRequest::new(format!("bad percent-escape in {raw:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BadRequest::new(format!("{raw:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_decodes_pairs() {
        let pairs = parse("cc=max-age%3D60&x&&header=A:b%20c&expires=+5").unwrap();
        let expect = [
            ("cc", "max-age=60"),
            ("x", ""),
            ("header", "A:b c"),
            ("expires", "+5"),
        ];
        let pairs: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(pairs, expect);
    }

    #[test]
    fn first_equals_splits_name_from_value() {
        let pairs = parse("cc=private,max-age=60").unwrap();
        assert_eq!(pairs, [("cc".into(), "private,max-age=60".into())]);
    }

    #[test]
    fn rejects_bad_escapes_and_non_utf8() {
        assert!(decode("a%2").is_err());
        assert!(decode("a%zz").is_err());
        assert!(decode("%ff").is_err());
        assert_eq!(decode("%C3%A9").unwrap(), "é");
    }
}
