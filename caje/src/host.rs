//! The canonical host of a request, computed once.
//!
//! Routing, the cache key, the manifest row and the request to the origin must all agree on
//! which site a request is for. When each normalised the raw `Host` on its own, they drifted
//! apart (`a.example.:80` routed as `a.example.` but was keyed as `a.example`), and one
//! origin's answer was stored under another site's key. So the host is parsed here, strictly,
//! into a [`Host`] value, and everything downstream takes that value, never the raw header.
//!
//! The canonical form is lower case, without a trailing dot, without the scheme's default
//! port, and IPv6 literals keep their brackets: `A.Example.:80` → `a.example`,
//! `[::1]:8080` → `[::1]:8080`. Anything else that is not a valid `uri-host [ ":" port ]`
//! (RFC 9110 §7.2) is refused: two ports, an empty label, a character outside a host name.

use std::fmt;
use std::net::Ipv6Addr;

/// Longest host name accepted (RFC 1035 §2.3.4 allows 253 characters in text form).
const MAX_HOST_LEN: usize = 253;

/// A canonical host, `name` or `name:port` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host(String);

/// Why a host was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing before the port.
    #[error("the host is empty")]
    Empty,
    /// More than one `:` outside an IPv6 literal (`a.example:80:80`).
    #[error("the host has more than one port")]
    TwoPorts,
    /// A port that is not 1–65535 in decimal digits.
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
    /// `a..example`, `.example`.
    #[error("the host name has an empty label")]
    EmptyLabel,
    /// A character that cannot be in a host name.
    #[error("the host has a character that cannot be in a host name")]
    BadChar,
    /// Over [`MAX_HOST_LEN`] characters.
    #[error("the host name is longer than 253 characters")]
    TooLong,
    /// `[...]` that is not an IPv6 address.
    #[error("the IPv6 literal is not valid")]
    BadIpv6,
}

impl Host {
    /// Parses a raw `Host` value or URI authority for a request made with `scheme`
    /// (`http` or `https`, which decides the default port that is dropped).
    ///
    /// ```
    /// use caje::host::Host;
    /// assert_eq!(Host::parse("A.Example.:80", "http").unwrap().as_str(), "a.example");
    /// assert_eq!(Host::parse("a.example:8080", "http").unwrap().as_str(), "a.example:8080");
    /// assert!(Host::parse("a.example:80:80", "http").is_err());
    /// ```
    pub fn parse(raw: &str, scheme: &str) -> Result<Host, HostError> {
        let default_port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        // No userinfo, whitespace or path may ride along: `Host` is exactly host[:port].
        let (name, port) = split_port(raw)?;
        let port = match port {
            None | Some("") => None,
            Some(p) => {
                if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HostError::BadPort);
                }
                match p.parse::<u16>() {
                    Ok(0) | Err(_) => return Err(HostError::BadPort),
                    Ok(n) if n == default_port => None,
                    Ok(n) => Some(n),
                }
            }
        };
        let name = if let Some(inner) = name.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(HostError::BadIpv6)?;
            let addr: Ipv6Addr = inner.parse().map_err(|_| HostError::BadIpv6)?;
            format!("[{addr}]")
        } else {
            reg_name(name)?
        };
        Ok(Host(match port {
            Some(p) => format!("{name}:{p}"),
            None => name,
        }))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits `name[:port]`, keeping an IPv6 literal's colons in the name.
fn split_port(raw: &str) -> Result<(&str, Option<&str>), HostError> {
    if raw.starts_with('[') {
        let end = raw.find(']').ok_or(HostError::BadIpv6)?;
        let (name, rest) = raw.split_at(end + 1);
        return match rest {
            "" => Ok((name, None)),
            _ => match rest.strip_prefix(':') {
                Some(p) if !p.contains(':') => Ok((name, Some(p))),
                Some(_) => Err(HostError::TwoPorts),
                None => Err(HostError::BadChar),
            },
        };
    }
    let mut it = raw.splitn(3, ':');
    let name = it.next().unwrap_or("");
    let port = it.next();
    if it.next().is_some() {
        return Err(HostError::TwoPorts);
    }
    Ok((name, port))
}

/// A DNS name or IPv4 address: letters, digits, `-`, `_` (seen in real names), lower-cased,
/// one trailing dot dropped, no empty label.
fn reg_name(name: &str) -> Result<String, HostError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(HostError::BadChar);
    }
    if name.split('.').any(str::is_empty) {
        return Err(HostError::EmptyLabel);
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        Host::parse(raw, "http").unwrap().into_string()
    }

    #[test]
    fn one_canonical_form() {
        for raw in [
            "a.example",
            "A.EXAMPLE",
            "a.example.",
            "a.example:80",
            "a.example.:80",
            "a.example:",
        ] {
            assert_eq!(ok(raw), "a.example", "{raw}");
        }
        assert_eq!(ok("a.example:8080"), "a.example:8080");
        assert_eq!(ok("a.example:443"), "a.example:443");
        assert_eq!(
            Host::parse("a.example:443", "https").unwrap().as_str(),
            "a.example"
        );
        assert_eq!(ok("127.0.0.1:3000"), "127.0.0.1:3000");
        assert_eq!(ok("[::1]:80"), "[::1]");
        assert_eq!(ok("[0:0::1]:8080"), "[::1]:8080");
        assert_eq!(ok("under_score.example"), "under_score.example");
    }

    #[test]
    fn malformed_hosts_are_refused() {
        use HostError::*;
        let cases = [
            ("a.example:80:80", TwoPorts),
            ("a.example:8o", BadPort),
            ("a.example:0", BadPort),
            ("a.example:65536", BadPort),
            ("a.example:+80", BadPort),
            ("", Empty),
            (":80", Empty),
            (".", Empty),
            ("a..example", EmptyLabel),
            (".a.example", EmptyLabel),
            ("a.example..", EmptyLabel),
            ("a example", BadChar),
            ("a.example/x", BadChar),
            ("user@a.example", BadChar),
            ("a%2eexample", BadChar),
            ("[::1", BadIpv6),
            ("[zz]", BadIpv6),
            ("[::1]x", BadChar),
            ("[::1]:80:80", TwoPorts),
        ];
        for (raw, want) in cases {
            assert_eq!(Host::parse(raw, "http"), Err(want), "{raw:?}");
        }
        assert_eq!(Host::parse(&"a".repeat(254), "http"), Err(TooLong));
    }
}
