//! A unix-socket proxy in front of a switchboard, as an agent that proxies attach
//! connections is: the test can drop every connection through it (an agent restart), or
//! send new ones to another server.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Proxy {
    pub path: PathBuf,
    target: Arc<Mutex<PathBuf>>,
    /// Both ends of every connection made through it.
    open: Arc<Mutex<Vec<UnixStream>>>,
    stopping: Arc<AtomicBool>,
    accepter: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens at `path`, forwarding each connection to `target`.
    pub fn start(path: &Path, target: &Path) -> Proxy {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let target = Arc::new(Mutex::new(target.to_path_buf()));
        let open = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let accepter = {
            let (target, open, stopping) = (target.clone(), open.clone(), stopping.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let to = target.lock().unwrap().clone();
                    let Ok(server) = UnixStream::connect(&to) else { continue };
                    let mut held = open.lock().unwrap();
                    held.push(client.try_clone().unwrap());
                    held.push(server.try_clone().unwrap());
                    drop(held);
                    forward(client.try_clone().unwrap(), server.try_clone().unwrap());
                    forward(server, client);
                }
            })
        };
        Proxy {
            path: path.to_path_buf(),
            target,
            open,
            stopping,
            accepter: Some(accepter),
        }
    }

    /// Drops every connection made so far, both ends.
    pub fn drop_connections(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// New connections go to `target`.
    pub fn retarget(&self, target: &Path) {
        *self.target.lock().unwrap() = target.to_path_buf();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accepter.
        let _ = UnixStream::connect(&self.path);
        if let Some(a) = self.accepter.take() {
            let _ = a.join();
        }
        self.drop_connections();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copies `from` to `to` on a thread of its own until either ends.
fn forward(mut from: UnixStream, mut to: UnixStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
