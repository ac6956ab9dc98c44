//! Listening sockets caje did not bind itself: one systemd passed (socket activation,
//! `LISTEN_FDS`/`LISTEN_PID`), or one the previous caje passed across a graceful upgrade
//! (`CAJE_LISTEN_FD`, see [`crate::upgrade`]).
//!
//! While a supervisor or the previous process keeps the socket open, connections that arrive
//! while no caje accepts wait in the kernel's accept queue instead of being refused: that is
//! what makes a restart or an upgrade lose nothing.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const SD_LISTEN_FDS_START: RawFd = 3;

/// The variable naming the listening socket's fd across a graceful upgrade.
pub const LISTEN_FD_ENV: &str = "CAJE_LISTEN_FD";

/// Where an inherited socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`).
    Systemd,
    /// The previous caje process, across a graceful upgrade.
    Upgrade,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Systemd => "systemd socket activation",
            Source::Upgrade => "the previous caje process",
        })
    }
}

/// Why an inherited socket cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A variable is set but is not a number.
    #[error("{name}={value:?} is not a file descriptor number")]
    BadVariable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// The fd is not an open, listening TCP socket.
    #[error("fd {fd} from {source_name} is not a listening TCP socket: {why}")]
    NotListening {
        /// The fd.
        fd: RawFd,
        /// Where it came from.
        source_name: Source,
        /// What is wrong with it.
        why: String,
    },
}

/// The inherited listening socket, if any, and where it came from. Reads and removes the
/// variables, so that nothing caje starts later takes them for its own.
///
/// Call it once, at start-up, before any other thread exists (it changes the environment).
/// `LISTEN_FDS` counts only when `LISTEN_PID` is this process (as `sd_listen_fds` does); with
/// several fds, the first one is used.
pub fn take_inherited() -> Result<Option<(TcpListener, Source)>, ListenError> {
    let systemd = systemd_fd()?;
    let upgrade = match std::env::var(LISTEN_FD_ENV) {
        Ok(v) => Some(v.parse::<RawFd>().map_err(|_| ListenError::BadVariable {
            name: LISTEN_FD_ENV,
            value: v.clone(),
        })?),
        Err(_) => None,
    };
    for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", LISTEN_FD_ENV] {
        std::env::remove_var(name);
    }
    let (fd, source) = match (upgrade, systemd) {
        // An upgrade names its fd explicitly; it wins over stale systemd variables.
        (Some(fd), _) => (fd, Source::Upgrade),
        (None, Some(fd)) => (fd, Source::Systemd),
        (None, None) => return Ok(None),
    };
    let not_listening = |why: String| ListenError::NotListening {
        fd,
        source_name: source,
        why,
    };
    check_listening(fd).map_err(not_listening)?;
    // SAFETY: the fd was handed to this process to own (systemd's protocol, or the previous
    // caje's), it is open and a listening socket (checked above), and nothing else in this
    // process uses it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    // A TCP socket has an IP local address; a Unix socket fails here.
    listener
        .local_addr()
        .map_err(|e| not_listening(e.to_string()))?;
    // The fd must not leak into processes caje starts (an upgrade passes it on explicitly).
    set_cloexec(fd, true).map_err(|e| not_listening(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| not_listening(e.to_string()))?;
    Ok(Some((listener, source)))
}

fn systemd_fd() -> Result<Option<RawFd>, ListenError> {
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    let number = |name: &'static str, value: &str| {
        value.parse::<u32>().map_err(|_| ListenError::BadVariable {
            name,
            value: value.to_owned(),
        })
    };
    let pid = number("LISTEN_PID", &pid)?;
    let fds = number("LISTEN_FDS", &fds)?;
    if pid != std::process::id() || fds == 0 {
        return Ok(None);
    }
    Ok(Some(SD_LISTEN_FDS_START))
}

/// Checks that `fd` is a socket in the listening state.
fn check_listening(fd: RawFd) -> Result<(), String> {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if accepting == 0 {
        return Err("the socket is not listening".into());
    }
    Ok(())
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd number only reads or changes that fd's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_but_not_listening_socket_is_refused() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        assert!(check_listening(socket.as_raw_fd()).is_err());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(check_listening(listener.as_raw_fd()).is_ok());
    }
}
