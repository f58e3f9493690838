//! Directories and records nobody else controls. The runtime directory holds what the
//! supervisor and the CLI trust: pids they signal, sockets they connect to and remove,
//! logs they append to. Another local user who could create it first, or swap something
//! in it, could make them signal a process of their choosing or hand them the
//! keystrokes meant for a container. So, as tmux and ssh-agent do: each level is made
//! on its own (never "recursively", which accepts whatever is there), then looked at
//! without following links, and must be a directory of ours that nobody else may use;
//! its ancestors must be writable only by us or root (or sticky, as `/tmp` is); records
//! are read only from files of ours, never through a link.

use std::fs::Metadata;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The sticky bit: in a directory, only a file's owner may remove or rename it.
const STICKY: u32 = 0o1000;

fn refuse(path: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing {}: {why}", path.display()),
    )
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Makes `path` (and any missing parent, each 0700) and checks that it is private: see
/// [`check_private`].
pub fn make_private(path: &Path) -> io::Result<()> {
    make_levels(path)?;
    check_private(path)?;
    Ok(())
}

/// Checks that `path`, if it exists, is a directory (not a link to one) owned by us that
/// nobody else may read, write or enter, under ancestors that only we or root may
/// change. `Ok(false)` when it does not exist.
pub fn check_private(path: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    ours(path, &meta)?;
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(
            path,
            format!(
                "other users may use it (mode {:o}; it must be 700)",
                meta.mode() & 0o7777
            ),
        ));
    }
    if let Some(parent) = path.parent() {
        safe_ancestors(parent)?;
    }
    Ok(true)
}

/// Makes `path` (and any missing parent) and checks that it is a directory of ours or
/// root's that nobody else may write to, sticky or not (a log directory may be readable
/// by others), under ancestors only we or root may change.
pub fn make_safe(path: &Path) -> io::Result<()> {
    make_levels(path)?;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_dir() {
        return Err(refuse(path, "it is not a directory (or is a symbolic link)".into()));
    }
    if meta.uid() != euid() && meta.uid() != 0 {
        return Err(refuse(path, format!("it belongs to uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(
            path,
            format!("other users may write to it (mode {:o})", meta.mode() & 0o7777),
        ));
    }
    safe_ancestors(path)
}

/// Opens (creating it, mode 0600) a log file to append to: never through a link, never
/// a FIFO or device someone put there (opening does not wait for a reader), and only a
/// regular file of ours.
pub fn open_log(path: &Path) -> io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() || meta.uid() != euid() {
        return Err(refuse(
            path,
            format!("it is not a regular file of ours (owner uid {})", meta.uid()),
        ));
    }
    Ok(f)
}

/// Checks a container's directory: a directory of ours, not a link.
pub fn check_owned_dir(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    ours(path, &meta)
}

/// Reads a record of ours: a regular file we own, opened without following a link.
pub fn read_owned(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() || meta.uid() != euid() {
        return Err(refuse(
            path,
            format!("it is not a file of ours (owner uid {})", meta.uid()),
        ));
    }
    let mut out = Vec::new();
    // Records are small: a larger one is not ours either.
    f.by_ref().take(1 << 20).read_to_end(&mut out)?;
    Ok(out)
}

/// A directory (not a link) that we own.
fn ours(path: &Path, meta: &Metadata) -> io::Result<()> {
    if meta.file_type().is_symlink() {
        return Err(refuse(path, "it is a symbolic link".into()));
    }
    if !meta.file_type().is_dir() {
        return Err(refuse(path, "it is not a directory".into()));
    }
    if meta.uid() != euid() {
        return Err(refuse(
            path,
            format!("it belongs to uid {}, not to us (uid {})", meta.uid(), euid()),
        ));
    }
    Ok(())
}

/// Every directory from `path` up to `/` may be changed only by us or root: owned by one
/// of us, and not writable by others unless sticky; so may every link on the way (a
/// link another user owns could be pointed elsewhere after the check), and then the
/// directories it resolves to.
fn safe_ancestors(path: &Path) -> io::Result<()> {
    let absolute = std::path::absolute(path)?;
    for p in absolute.ancestors() {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.file_type().is_symlink() && meta.uid() != 0 && meta.uid() != euid() {
            return Err(refuse(path, format!("{} is a link of uid {}", p.display(), meta.uid())));
        }
    }
    let resolved = std::fs::canonicalize(path)?;
    for dir in resolved.ancestors() {
        let meta = std::fs::metadata(dir)?;
        let owner_ok = meta.uid() == 0 || meta.uid() == euid();
        let writable_by_others = meta.mode() & 0o022 != 0 && meta.mode() & STICKY == 0;
        if !owner_ok || writable_by_others {
            return Err(refuse(
                path,
                format!(
                    "{} may be changed by other users (owner uid {}, mode {:o})",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// Makes the missing levels of `path`, top down, each on its own with mode 0700; a level
/// that appears meanwhile is left to the checks.
fn make_levels(path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p);
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    for level in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(level) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sb-dirs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        dir
    }

    #[test]
    fn private_directories_are_made_and_checked() {
        let base = temp("private");
        let runtime = base.join("a/b");
        make_private(&runtime).unwrap();
        assert_eq!(std::fs::metadata(&runtime).unwrap().mode() & 0o777, 0o700);
        assert!(check_private(&runtime).unwrap());
        assert!(!check_private(&base.join("none")).unwrap());
        // Open to others: refused (and not "fixed" behind the user's back).
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = make_private(&runtime).unwrap_err().to_string();
        assert!(e.contains("other users may use it (mode 777"), "{e}");
        // A link to a directory of ours: refused.
        let link = base.join("link");
        std::os::unix::fs::symlink(base.join("a"), &link).unwrap();
        let e = check_private(&link).unwrap_err().to_string();
        assert!(e.ends_with("it is a symbolic link"), "{e}");
        // Under a directory others may write to (and not sticky): refused.
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = make_private(&open.join("rt")).unwrap_err().to_string();
        assert!(e.contains("may be changed by other users"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn records_are_read_only_from_files_of_ours() {
        let base = temp("records");
        let file = base.join("info.json");
        std::fs::write(&file, b"{}").unwrap();
        assert_eq!(read_owned(&file).unwrap(), b"{}");
        let link = base.join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_owned(&link).is_err(), "a link is not followed");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
