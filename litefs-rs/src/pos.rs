//! Transaction IDs and database positions, as LiteFS writes them in `<db>-pos`.

use std::fmt;
use std::str::FromStr;

use crate::error::ParseError;

/// A LiteFS transaction ID: increases by one with every committed transaction of a database.
///
/// Displayed and parsed as 16 lowercase hex digits, the form used by `-pos`, `/events` and the
/// LiteFS proxy's `__txid` cookie.
///
/// ```
/// use litefs::Txid;
/// let t: Txid = "00000000002df417".parse().unwrap();
/// assert_eq!(t.get(), 0x2df417);
/// assert_eq!(t.to_string(), "00000000002df417");
/// assert!(Txid::new(1) < t);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Txid(u64);

impl Txid {
    /// Wraps a raw transaction ID.
    ///
    /// ```
    /// assert_eq!(litefs::Txid::new(39).to_string(), "0000000000000027");
    /// ```
    pub const fn new(txid: u64) -> Txid {
        Txid(txid)
    }

    /// The raw value.
    ///
    /// ```
    /// assert_eq!(litefs::Txid::new(7).get(), 7);
    /// ```
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Parses the 16-hex-digit form (`%016x`), as LiteFS prints it.
    ///
    /// ```
    /// assert!(litefs::Txid::from_hex16("27").is_err()); // must be exactly 16 digits
    /// ```
    pub fn from_hex16(s: &str) -> Result<Txid, ParseError> {
        parse_hex16(s, "TXID").map(Txid)
    }
}

impl From<u64> for Txid {
    fn from(v: u64) -> Txid {
        Txid(v)
    }
}

impl From<Txid> for u64 {
    fn from(t: Txid) -> u64 {
        t.0
    }
}

impl fmt::Display for Txid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Txid {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Txid, ParseError> {
        Txid::from_hex16(s)
    }
}

/// A database's replication position: TXID and the checksum of the database after applying it.
///
/// Parsed from the content of `<db>-pos`: `%016x/%016x\n` (34 bytes).
///
/// ```
/// use litefs::Pos;
/// let pos: Pos = "00000000002df417/ce552e44f23fbbdd\n".parse().unwrap();
/// assert_eq!(pos.txid().get(), 0x2df417);
/// assert_eq!(pos.checksum(), 0xce552e44f23fbbdd);
/// assert_eq!(pos.to_string(), "00000000002df417/ce552e44f23fbbdd");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pos {
    txid: Txid,
    checksum: u64,
}

impl Pos {
    /// A position from its parts.
    ///
    /// ```
    /// let p = litefs::Pos::new(litefs::Txid::new(1), 2);
    /// assert_eq!(p.checksum(), 2);
    /// ```
    pub const fn new(txid: Txid, checksum: u64) -> Pos {
        Pos { txid, checksum }
    }

    /// The last applied transaction.
    ///
    /// ```
    /// assert_eq!(litefs::Pos::default().txid().get(), 0);
    /// ```
    pub const fn txid(&self) -> Txid {
        self.txid
    }

    /// The post-apply checksum of the whole database at that transaction.
    ///
    /// ```
    /// assert_eq!(litefs::Pos::default().checksum(), 0);
    /// ```
    pub const fn checksum(&self) -> u64 {
        self.checksum
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:016x}", self.txid, self.checksum)
    }
}

impl FromStr for Pos {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Pos, ParseError> {
        // Exactly one trailing newline is what LiteFS writes; tolerate its absence so values
        // copied from logs parse too, but nothing else.
        let body = s.strip_suffix('\n').unwrap_or(s);
        let (txid, checksum) = body
            .split_once('/')
            .ok_or_else(|| ParseError::new("-pos", s, "expected TXID/CHECKSUM"))?;
        Ok(Pos {
            txid: Txid(parse_hex16(txid, "-pos").map_err(|e| e.with_input(s))?),
            checksum: parse_hex16(checksum, "-pos").map_err(|e| e.with_input(s))?,
        })
    }
}

fn parse_hex16(s: &str, what: &'static str) -> Result<u64, ParseError> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ParseError::new(what, s, "expected 16 hex digits"));
    }
    u64::from_str_radix(s, 16).map_err(|_| ParseError::new(what, s, "expected 16 hex digits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_parses_the_documented_example() {
        let p: Pos = "00000000002df417/ce552e44f23fbbdd\n".parse().unwrap();
        assert_eq!(p, Pos::new(Txid::new(0x2df417), 0xce552e44f23fbbdd));
        assert_eq!("00000000002df417/ce552e44f23fbbdd\n".len(), 34);
    }

    #[test]
    fn pos_accepts_uppercase_and_missing_newline() {
        let p: Pos = "00000000000000FF/0000000000000001".parse().unwrap();
        assert_eq!(p.txid().get(), 255);
    }

    #[test]
    fn pos_rejects_malformed_input() {
        for bad in [
            "",
            "\n",
            "00000000002df417",
            "00000000002df417/ce552e44f23fbbd",
            "0000000002df417/ce552e44f23fbbdd",
            "00000000002df41g/ce552e44f23fbbdd",
            "00000000002df417/ce552e44f23fbbdd\n\n",
            " 00000000002df417/ce552e44f23fbbdd",
            "+0000000002df417/ce552e44f23fbbdd",
        ] {
            let err = bad.parse::<Pos>().unwrap_err();
            assert_eq!(err.what(), "-pos", "{bad:?}");
            assert_eq!(err.input(), bad);
        }
    }

    #[test]
    fn txid_round_trips_and_orders() {
        let t = Txid::new(u64::MAX);
        assert_eq!(t.to_string(), "ffffffffffffffff");
        assert_eq!(t.to_string().parse::<Txid>().unwrap(), t);
        assert!(Txid::new(2) > Txid::new(1));
        assert!("-000000000000001".parse::<Txid>().is_err());
    }
}
