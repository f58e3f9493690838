//! The test pattern: a stream's bytes are a function of its seed and position, so a
//! checker verifies them as they come (nothing is stored), and producers that write it
//! into the container's pipes.

use std::os::fd::OwnedFd;
use std::time::Duration;

/// The period of the test pattern: a prime, so that it never lines up with chunk sizes.
const PERIOD: usize = 1_048_573;

fn block(seed: u64) -> &'static [u8] {
    static BLOCKS: std::sync::Mutex<Vec<(u64, &'static [u8])>> = std::sync::Mutex::new(Vec::new());
    let mut blocks = BLOCKS.lock().unwrap();
    if let Some((_, b)) = blocks.iter().find(|(s, _)| *s == seed) {
        return b;
    }
    let mut z = seed;
    let b: Vec<u8> = (0..PERIOD + 8)
        .map(|_| {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (x ^ (x >> 31)) as u8
        })
        .collect();
    let b: &'static [u8] = Box::leak(b.into_boxed_slice());
    blocks.push((seed, b));
    b
}

/// Byte `i` of the pattern of stream `seed`: any position can be checked on its own.
pub fn pattern(seed: u64, i: u64) -> u8 {
    block(seed)[(i % PERIOD as u64) as usize]
}

/// Fills `buf` with the pattern from position `start`.
pub fn fill_pattern(seed: u64, start: u64, buf: &mut [u8]) {
    let b = block(seed);
    let mut done = 0;
    while done < buf.len() {
        let at = ((start + done as u64) % PERIOD as u64) as usize;
        let n = (PERIOD - at).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&b[at..at + n]);
        done += n;
    }
}

/// Whether `bytes` are the pattern from position `start`.
pub fn is_pattern(seed: u64, start: u64, bytes: &[u8]) -> bool {
    let b = block(seed);
    let mut done = 0;
    while done < bytes.len() {
        let at = ((start + done as u64) % PERIOD as u64) as usize;
        let n = (PERIOD - at).min(bytes.len() - done);
        if bytes[done..done + n] != b[at..at + n] {
            return false;
        }
        done += n;
    }
    true
}

/// Payload bytes each reading client has verified, so that a producer can keep pace
/// with its readers (as a container's output normally does) instead of outrunning them
/// into the lag limit.
#[derive(Clone, Default)]
pub struct Progress(pub std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>>>);

impl Progress {
    pub fn counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        let c = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.0.lock().unwrap().push(c.clone());
        c
    }

    /// Waits until every counter is within `window` bytes of `produced`.
    pub fn wait_within(&self, produced: u64, window: u64) {
        loop {
            let behind = self
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|c| produced.saturating_sub(c.load(std::sync::atomic::Ordering::Relaxed)) > window);
            if !behind {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A tiny xorshift, so runs are repeatable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Writes `len` pattern bytes of each stream into its pipe, in chunks of random sizes
/// up to `max_chunk`, interleaving the streams; closes the pipes at the end. With a
/// `gate`, it waits while any reader is more than `window` bytes behind.
pub fn produce(writers: Vec<(OwnedFd, u64)>, len: u64, max_chunk: usize, seed: u64, gate: Option<(Progress, u64)>) {
    let mut rng = Rng(seed | 1);
    let mut next = || rng.next_u64();
    let mut pos = vec![0u64; writers.len()];
    let mut buf = vec![0u8; max_chunk];
    while pos.iter().any(|&p| p < len) {
        let s = (next() % writers.len() as u64) as usize;
        if pos[s] == len {
            continue;
        }
        let n = ((next() % max_chunk as u64) + 1).min(len - pos[s]) as usize;
        if let Some((progress, window)) = &gate {
            progress.wait_within(pos.iter().sum::<u64>(), *window);
        }
        fill_pattern(writers[s].1, pos[s], &mut buf[..n]);
        let mut written = 0;
        while written < n {
            written += nix::unistd::write(&writers[s].0, &buf[written..n]).unwrap();
        }
        pos[s] += n as u64;
    }
}
