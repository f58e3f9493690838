//! The listening socket (docs/protocol.md §3.2): bind `<path>_provisional`, listen,
//! then rename to `<path>`, so the final path appears only once connections work. Unlike
//! Mesos we remove a stale provisional file first, and create the socket with mode 0600
//! (umask 0177 around the bind), so it is never reachable by other users, not even for a
//! moment. With `--allowed_uids` it is born 0666 and the server checks each peer instead.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
use nix::sys::stat::{Mode, umask};

/// `sun_path` holds 108 bytes including the terminating NUL.
const SUN_PATH: usize = 108;

/// The provisional path Mesos binds first.
pub fn provisional(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("_provisional");
    PathBuf::from(p)
}

/// Creates the listening socket at `path`; errors carry Mesos's texts where it has them.
pub fn listen_at(path: &Path, backlog: i32, mode: u32) -> io::Result<OwnedFd> {
    let temp = provisional(path);
    if temp.as_os_str().len() >= SUN_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "Path too long, must be less than 108 bytes",
        ));
    }
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let addr = UnixAddr::new(&temp)?;
    match std::fs::remove_file(&temp) {
        Ok(()) => tracing::warn!("removed a stale {}", temp.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let old = umask(Mode::from_bits_truncate(!mode & 0o777));
    let bound = bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr);
    umask(old);
    bound.map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("Failed to bind to '{}': {e}", temp.display()),
        )
    })?;
    listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))?;
    std::fs::rename(&temp, path).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        io::Error::new(
            e.kind(),
            format!("Failed to rename '{}' to '{}': {e}", temp.display(), path.display()),
        )
    })?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_is_private_and_renamed() {
        let dir = std::env::temp_dir().join(format!("sb-socket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        // A stale provisional file does not stop us.
        std::fs::write(provisional(&path), b"stale").unwrap();
        let _fd = listen_at(&path, 16, 0o600).unwrap();
        assert!(!provisional(&path).exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        let long = dir.join("x".repeat(100));
        assert_eq!(
            listen_at(&long, 16, 0o600).unwrap_err().to_string(),
            "Path too long, must be less than 108 bytes"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
