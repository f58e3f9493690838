//! The server, relay-core, fault, bad-input, history, metrics and CLI tests again, on the epoll
//! engine: `$SWITCHBOARD_ENGINE` is set before they start, and the servers they start
//! (and the rings they make) take it from there. `cargo test` runs them on io_uring
//! (their own binaries) and here, so both engines pass the same suite.

#[ctor::ctor(unsafe)]
fn choose_epoll() {
    common::engine::choose_before_main(c"epoll");
}

#[test]
fn these_servers_run_on_epoll() {
    let line = common::engine::of_a_server();
    assert!(line.contains("serving on the epoll engine"), "{line}");
}

#[path = "../bad_input.rs"]
mod bad_input;
#[path = "../cli_attach.rs"]
mod cli_attach;
#[path = "../cli_run.rs"]
mod cli_run;
#[path = "../cli_serve.rs"]
mod cli_serve;
#[path = "../deadlines.rs"]
mod deadlines;
#[path = "../descriptors.rs"]
mod descriptors;
#[path = "../faults.rs"]
mod faults;
#[path = "../history.rs"]
mod history;
#[path = "../lifecycle.rs"]
mod lifecycle;
#[path = "../logs.rs"]
mod logs;
#[path = "../metrics.rs"]
mod metrics;
#[path = "../relay_core.rs"]
mod relay_core;
#[path = "../ring.rs"]
mod ring;
#[path = "../runtime_dir.rs"]
mod runtime_dir;
#[path = "../screen.rs"]
mod screen;
#[path = "../server.rs"]
mod server;
#[path = "../server_load.rs"]
mod server_load;
#[path = "../supervisor.rs"]
mod supervisor;
