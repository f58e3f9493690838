//! Which event engine the servers and rings of a test binary run on: the binaries under
//! `tests/on_epoll*` set `$SWITCHBOARD_ENGINE` before their tests start, and everything
//! they start (or build in-process with the default ring settings) takes it from there.

use std::ffi::CStr;

/// Sets `$SWITCHBOARD_ENGINE` for this process and what it starts. Only for a
/// constructor (`#[ctor]`), which runs before `main` and before any other thread.
pub fn choose_before_main(engine: &CStr) {
    // SAFETY: called before main, while this is the only thread, so nothing reads the
    // environment meanwhile; setenv copies both strings.
    unsafe { nix::libc::setenv(c"SWITCHBOARD_ENGINE".as_ptr(), engine.as_ptr(), 1) };
}

/// The engine a drop-in started the way the tests start it runs on, as its log says.
pub fn of_a_server() -> String {
    let dir = crate::sb::temp_dir("engine");
    let log = dir.join("switchboard.log");
    let mut sb = crate::sb::Sb::start(crate::sb::Opts {
        extra: vec![format!("--log_file={}", log.display())],
        ..Default::default()
    });
    sb.close_output();
    assert!(sb.wait(20).success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(" engine"))
        .unwrap_or_else(|| panic!("the log names no engine: {text}"));
    line.to_string()
}

/// How a seccomp filter answers `io_uring_setup`, `io_uring_enter` and
/// `io_uring_register` (as container runtimes' default profiles do).
#[derive(Debug, Clone, Copy)]
pub enum Refuse {
    /// Fail with this errno (`EPERM` as Docker's profile, `ENOSYS` as others).
    Errno(i32),
    /// Kill the process: proof that it never makes the call.
    Kill,
}

/// Starts `cmd` (and everything it starts) under a seccomp filter that refuses io_uring.
pub fn refuse_io_uring(cmd: &mut std::process::Command, how: Refuse) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and makes only prctl
    // calls on a filter that lives on its stack for the duration of the call.
    unsafe { cmd.pre_exec(move || install_filter(how)) };
}

fn install_filter(how: Refuse) -> std::io::Result<()> {
    use nix::libc::{self, sock_filter, sock_fprog};
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: i64, jt: u8| sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf: 0,
        k: k as u32,
    };
    let action = match how {
        Refuse::Errno(e) => libc::SECCOMP_RET_ERRNO | (e as u32 & 0xffff),
        Refuse::Kill => libc::SECCOMP_RET_KILL_PROCESS,
    };
    // The syscall number (offset 0 of seccomp_data); the three io_uring calls jump to
    // the refusal, everything else is allowed. (Their numbers are the same on every
    // architecture.)
    let mut filter = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jeq(libc::SYS_io_uring_setup, 3),
        jeq(libc::SYS_io_uring_enter, 2),
        jeq(libc::SYS_io_uring_register, 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(libc::BPF_RET | libc::BPF_K, action),
    ];
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments, then with a pointer to `prog`, which points
    // to `filter`; both outlive the calls (the kernel copies the program).
    let ok = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const sock_fprog,
            ) == 0
    };
    match ok {
        true => Ok(()),
        false => Err(std::io::Error::last_os_error()),
    }
}
