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
