//! Socket activation: the listening socket systemd passes to a service started by a `.socket`
//! unit (`listener.address = "systemd"`), following `sd_listen_fds(3)`.
//!
//! systemd binds the socket itself (so port 443 needs no capability in the daemon), puts it at
//! file descriptor 3, and sets `LISTEN_PID` to the service's pid and `LISTEN_FDS` to the number
//! of descriptors. `LISTEN_PID` guards against a variable inherited by some other process.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// An inherited listening socket, in blocking mode as passed.
pub enum Inherited {
    Tcp(std::net::TcpListener, SocketAddr),
    /// The socket path; `None` for an abstract or unnamed socket.
    Unix(std::os::unix::net::UnixListener, Option<PathBuf>),
}

/// Why no inherited socket could be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error(
        "no socket was passed (LISTEN_FDS/LISTEN_PID unset): start the daemon through \
         airlockd.socket, or give an address"
    )]
    NotActivated,
    #[error("LISTEN_PID={0} is not this process ({1}): the sockets were meant for another one")]
    OtherPid(String, u32),
    #[error("{0}={1:?} is not a number")]
    Malformed(&'static str, String),
    #[error(
        "systemd passed {0} sockets ({1}); airlockd serves exactly one: give airlockd.socket a \
         single ListenStream="
    )]
    Count(usize, String),
    #[error("file descriptor 3 is not a listening TCP or Unix stream socket")]
    NotASocket,
}

/// Takes the single socket systemd passed. Call once: the descriptor is owned afterwards.
pub fn take() -> Result<Inherited, ActivationError> {
    let var = |name| std::env::var(name).ok();
    let (Some(pid), Some(fds)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else {
        return Err(ActivationError::NotActivated);
    };
    let pid_n: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::Malformed("LISTEN_PID", pid.clone()))?;
    if pid_n != std::process::id() {
        return Err(ActivationError::OtherPid(pid, std::process::id()));
    }
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| ActivationError::Malformed("LISTEN_FDS", fds.clone()))?;
    if count != 1 {
        let names = var("LISTEN_FDNAMES").unwrap_or_default().replace(':', ", ");
        return Err(ActivationError::Count(count, names));
    }
    if !is_socket(LISTEN_FDS_START) {
        return Err(ActivationError::NotASocket);
    }
    #[expect(
        unsafe_code,
        reason = "sd_listen_fds: fd 3 is handed over by systemd and owned by nobody else here"
    )]
    // SAFETY: LISTEN_PID names this process, so fd 3 was passed to us by the service manager
    // for exactly this purpose; it was just checked to be an open socket, and this function
    // is called once per process (server start), so no other owner of the descriptor exists.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    classify(fd)
}

/// An open socket: `/proc/self/fd/N` links to `socket:[inode]` (readable under
/// `ProtectProc=invisible`/`ProcSubsetPid=pid`: they hide other processes, not our own).
fn is_socket(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
}

/// Tells a TCP listener from a Unix one by the address family `getsockname` reports.
fn classify(fd: OwnedFd) -> Result<Inherited, ActivationError> {
    let tcp = std::net::TcpListener::from(fd);
    if let Ok(addr) = tcp.local_addr() {
        return Ok(Inherited::Tcp(tcp, addr));
    }
    let unix = std::os::unix::net::UnixListener::from(OwnedFd::from(tcp));
    match unix.local_addr() {
        Ok(addr) => {
            let path = addr.as_pathname().map(PathBuf::from);
            Ok(Inherited::Unix(unix, path))
        }
        Err(_) => Err(ActivationError::NotASocket),
    }
}
