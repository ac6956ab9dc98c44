//! The LiteFS mount directory: detection, role (`.primary`, `.lag`) and database discovery.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::database::Database;
use crate::error::{Error, Result};
use crate::lag::Lag;

/// The default LiteFS mount directory.
pub const DEFAULT_DIR: &str = "/litefs";

/// The environment variable [`Mount::from_env`] reads (the convention of litefs-js and the
/// LiteFS docs).
pub const DIR_ENV: &str = "LITEFS_DIR";

/// Suffixes of the files LiteFS and SQLite keep next to a database.
const SIDE_FILE_SUFFIXES: [&str; 5] = ["-pos", "-lock", "-wal", "-shm", "-journal"];

/// This node's place in the cluster.
///
/// ```
/// use litefs::Role;
/// let r = Role::Replica { primary: "node-a".into() };
/// assert!(!r.is_primary());
/// assert_eq!(r.primary_hostname(), Some("node-a"));
/// assert_eq!(Role::Primary.to_string(), "primary");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// This node accepts writes without HALT.
    Primary,
    /// A replica connected to `primary` (its hostname, as in `.primary`).
    Replica {
        /// The primary's hostname; on Fly this is the machine ID used by `fly-replay`.
        primary: String,
    },
    /// No primary is known: a replica disconnected from the cluster, during failover, or
    /// (for `PrimaryMonitor`) while the HTTP API is unreachable.
    Unknown,
}

impl Role {
    /// Whether this node is the primary.
    ///
    /// ```
    /// assert!(litefs::Role::Primary.is_primary());
    /// ```
    pub fn is_primary(&self) -> bool {
        matches!(self, Role::Primary)
    }

    /// The primary's hostname when this node is a connected replica.
    ///
    /// ```
    /// assert_eq!(litefs::Role::Unknown.primary_hostname(), None);
    /// ```
    pub fn primary_hostname(&self) -> Option<&str> {
        match self {
            Role::Replica { primary } => Some(primary),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Primary => f.write_str("primary"),
            Role::Replica { primary } => write!(f, "replica of {primary}"),
            Role::Unknown => f.write_str("unknown (no primary known)"),
        }
    }
}

/// A LiteFS mount directory (or a plain directory standing in for one).
///
/// Cheap to clone. Opening detects whether the directory really is a LiteFS FUSE mount (from
/// `/proc/self/mountinfo`); everything else is read from the files on each call, so values are
/// always current.
///
/// # Without LiteFS
///
/// On a plain directory (a developer machine, tests):
/// - [`Mount::role`] is [`Role::Primary`] unless a `.primary` file exists (write one to
///   simulate a replica);
/// - [`Mount::lag`] is `None` unless a `.lag` file exists;
/// - HALT ([`Database::halt`]) takes a real OFD lock on `<db>-lock` (created if needed), so
///   local processes sharing the database are serialised, and reports
///   [`crate::HaltKind::Local`];
/// - [`Database::pos`] fails with [`Error::PosUnavailable`] unless a `-pos` file exists.
///
/// [`Mount::open_as_litefs`] marks a plain directory as LiteFS for [`Mount::is_litefs`] and
/// enables the `.lag`-based primary detection; lock files are still created on demand because
/// the directory is not really FUSE.
///
/// ```
/// use litefs::{Mount, Role};
/// let dir = tempfile::tempdir().unwrap();
/// let mount = Mount::open(dir.path()).unwrap();
/// assert!(!mount.is_litefs());
/// assert_eq!(mount.role().unwrap(), Role::Primary);
///
/// std::fs::write(dir.path().join(".primary"), "node-a\n").unwrap();
/// assert_eq!(mount.primary().unwrap().as_deref(), Some("node-a"));
/// ```
#[derive(Clone)]
pub struct Mount {
    inner: Arc<MountInner>,
}

struct MountInner {
    /// Canonical path, so that two handles on the same directory share HALT coordination.
    dir: PathBuf,
    /// Really a LiteFS FUSE mount: decides whether the lock file may be created.
    fuse: bool,
    /// Declared LiteFS by the caller (`open_as_litefs`).
    forced: bool,
}

impl fmt::Debug for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mount")
            .field("dir", &self.inner.dir)
            .field("fuse", &self.inner.fuse)
            .field("forced", &self.inner.forced)
            .finish()
    }
}

impl Mount {
    /// Opens the mount at `path`, detecting whether it is a LiteFS FUSE mount.
    ///
    /// Fails if `path` is not an existing directory.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let mount = litefs::Mount::open(dir.path()).unwrap();
    /// assert!(!mount.is_fuse_mount());
    /// assert!(litefs::Mount::open(dir.path().join("nope")).is_err());
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Mount> {
        Mount::open_inner(path.as_ref(), false)
    }

    /// Opens `path` and treats it as a LiteFS mount even if it is a plain directory (for
    /// tests and local setups that simulate a cluster with `.primary` / `.lag` files).
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let mount = litefs::Mount::open_as_litefs(dir.path()).unwrap();
    /// assert!(mount.is_litefs());
    /// assert!(!mount.is_fuse_mount());
    /// ```
    pub fn open_as_litefs(path: impl AsRef<Path>) -> Result<Mount> {
        Mount::open_inner(path.as_ref(), true)
    }

    /// Opens the directory named by `LITEFS_DIR`, or `/litefs` when unset or empty.
    ///
    /// ```no_run
    /// let mount = litefs::Mount::from_env()?;
    /// println!("{}", mount.role()?);
    /// # Ok::<(), litefs::Error>(())
    /// ```
    pub fn from_env() -> Result<Mount> {
        let dir = std::env::var_os(DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        Mount::open(dir)
    }

    fn open_inner(path: &Path, forced: bool) -> Result<Mount> {
        let dir = std::fs::canonicalize(path).map_err(|e| Error::io("open", path, e))?;
        let meta = std::fs::metadata(&dir).map_err(|e| Error::io("open", &dir, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                "open",
                &dir,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        let fuse = crate::mountinfo::is_litefs_mount(&dir);
        Ok(Mount {
            inner: Arc::new(MountInner { dir, fuse, forced }),
        })
    }

    /// The mount directory (canonicalised).
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert_eq!(m.path(), dir.path().canonicalize().unwrap());
    /// ```
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether the directory is a LiteFS mount: really (FUSE), or declared with
    /// [`Mount::open_as_litefs`].
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// assert!(!litefs::Mount::open(dir.path()).unwrap().is_litefs());
    /// ```
    pub fn is_litefs(&self) -> bool {
        self.inner.fuse || self.inner.forced
    }

    /// Whether `/proc/self/mountinfo` shows a LiteFS FUSE file system at this directory.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// assert!(!litefs::Mount::open_as_litefs(dir.path()).unwrap().is_fuse_mount());
    /// ```
    pub fn is_fuse_mount(&self) -> bool {
        self.inner.fuse
    }

    /// The primary's hostname from `.primary` (newline removed), or `None` when the file is
    /// absent — on the primary itself, on a disconnected replica, and on a plain directory.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert_eq!(m.primary().unwrap(), None);
    /// ```
    pub fn primary(&self) -> Result<Option<String>> {
        let path = self.inner.dir.join(".primary");
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let host = s.trim_end_matches(['\n', '\r']).trim();
                Ok((!host.is_empty()).then(|| host.to_owned()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Replication lag from `.lag`, or `None` when the file is absent (plain directory).
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// std::fs::write(dir.path().join(".lag"), "+000000118\n").unwrap();
    /// let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert_eq!(m.lag().unwrap().unwrap().millis(), 118);
    /// ```
    pub fn lag(&self) -> Result<Option<Lag>> {
        let path = self.inner.dir.join(".lag");
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.parse()?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// This node's role.
    ///
    /// - `.primary` present ⇒ [`Role::Replica`].
    /// - Absent on a LiteFS mount: `.primary` alone cannot tell the primary from a
    ///   disconnected replica, so `.lag` decides: LiteFS writes exactly `+000000000` on the
    ///   primary, and a replica's lag is measured from the last message it received (non-zero,
    ///   growing while disconnected, `+2147483647` before the first one) ⇒ [`Role::Primary`]
    ///   for a zero lag (or no `.lag` file on a simulated mount), [`Role::Unknown`] otherwise.
    ///   For a definitive answer use `/info` or `PrimaryMonitor` (feature `http`).
    /// - Absent on a plain directory ⇒ [`Role::Primary`]: without LiteFS, this node is its own
    ///   primary.
    ///
    /// ```
    /// use litefs::{Mount, Role};
    /// let dir = tempfile::tempdir().unwrap();
    /// let m = Mount::open_as_litefs(dir.path()).unwrap();
    /// std::fs::write(dir.path().join(".lag"), "+000000000\n").unwrap();
    /// assert_eq!(m.role().unwrap(), Role::Primary);
    /// std::fs::write(dir.path().join(".lag"), "+000004000\n").unwrap();
    /// assert_eq!(m.role().unwrap(), Role::Unknown);
    /// ```
    pub fn role(&self) -> Result<Role> {
        if let Some(primary) = self.primary()? {
            return Ok(Role::Replica { primary });
        }
        if !self.is_litefs() {
            return Ok(Role::Primary);
        }
        Ok(match self.lag()? {
            Some(lag) if lag.millis() != 0 => Role::Unknown,
            _ => Role::Primary,
        })
    }

    /// Shorthand for `role()?.is_primary()`.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// assert!(litefs::Mount::open(dir.path()).unwrap().is_primary().unwrap());
    /// ```
    pub fn is_primary(&self) -> Result<bool> {
        Ok(self.role()?.is_primary())
    }

    /// A handle on database `name` in this mount. The file need not exist yet.
    ///
    /// `name` must be a plain file name: not empty, no `/`, not starting with `.`.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let m = litefs::Mount::open(dir.path()).unwrap();
    /// let db = m.database("caje.db").unwrap();
    /// assert!(db.lock_path().ends_with("caje.db-lock"));
    /// assert!(m.database("../etc/passwd").is_err());
    /// ```
    pub fn database(&self, name: &str) -> Result<Database> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains(['/', '\0'])
            && (cfg!(not(windows)) || !name.contains('\\'));
        if !valid {
            return Err(Error::InvalidDatabaseName {
                name: name.to_owned(),
            });
        }
        Ok(Database::new(self.clone(), name.to_owned()))
    }

    /// The databases in this mount, sorted by name.
    ///
    /// On LiteFS every visible file that is not a dot file or a side file (`-pos`, `-wal`,
    /// `-shm`, `-journal`, `-lock`) is a database. On a plain directory a file counts only if it
    /// starts with the SQLite header or has a `-pos` file next to it, so unrelated files are
    /// not reported.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// std::fs::write(dir.path().join("a.db"), b"SQLite format 3\0rest").unwrap();
    /// std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    /// let m = litefs::Mount::open(dir.path()).unwrap();
    /// let names: Vec<String> = m.databases().unwrap().iter().map(|d| d.name().to_owned()).collect();
    /// assert_eq!(names, ["a.db"]);
    /// ```
    pub fn databases(&self) -> Result<Vec<Database>> {
        let dir = &self.inner.dir;
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // LiteFS names are UTF-8; anything else is not ours.
            };
            if name.starts_with('.') || SIDE_FILE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !is_file {
                continue;
            }
            if self.inner.fuse || looks_like_database(dir, &name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names
            .into_iter()
            .map(|n| Database::new(self.clone(), n))
            .collect())
    }
}

fn looks_like_database(dir: &Path, name: &str) -> bool {
    use std::io::Read;
    if dir.join(format!("{name}-pos")).is_file() {
        return true;
    }
    let mut header = [0u8; 16];
    std::fs::File::open(dir.join(name))
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| &header == b"SQLite format 3\0")
}
