//! tests/fd_leaks.rs on the epoll engine (a binary of its own, as that test needs: no
//! other test may open descriptors meanwhile).

#[ctor::ctor(unsafe)]
fn choose_epoll() {
    common::engine::choose_before_main(c"epoll");
}

#[path = "fd_leaks.rs"]
mod fd_leaks;
