//! A bounded random-input run over the kernel-facing parsers: N generated on-demand messages
//! (random bytes, and valid messages with random mutations: truncated, `len` changed, key
//! sizes overflowing, unknown opcodes) through `proto::msg::decode`, plus status lines and
//! config files. Any panic fails the run. `cargo run --release --example fuzz_messages [N]`
//! (default 10 million); .ci/run runs it.

use cachefilesd_rs::config::Config;
use cachefilesd_rs::proto::msg::{decode, encode_close, encode_open, encode_read};
use cachefilesd_rs::proto::Status;
use std::path::Path;
use std::time::Instant;

/// xorshift64*: deterministic, seedable, fast; the run is reproducible from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn message(rng: &mut Rng, buf: &mut Vec<u8>) {
    buf.clear();
    match rng.below(4) {
        0 => {
            let len = rng.below(1100) as usize;
            buf.extend((0..len).map(|_| rng.next() as u8));
        }
        _ => {
            let id = rng.next() as u32;
            let base = match rng.below(3) {
                0 => {
                    let vol: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
                    let key: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
                    encode_open(id, rng.next() as u32, &vol, &key, rng.next() as u32)
                }
                1 => encode_read(id, rng.next() as u32, rng.next(), rng.next()),
                _ => encode_close(id, rng.next() as u32),
            };
            buf.extend_from_slice(&base);
            for _ in 0..rng.below(4) {
                match rng.below(4) {
                    0 if !buf.is_empty() => {
                        let at = rng.below(buf.len() as u64) as usize;
                        buf[at] = rng.next() as u8;
                    }
                    1 => {
                        let keep = rng.below(buf.len() as u64 + 1) as usize;
                        buf.truncate(keep);
                    }
                    2 if buf.len() >= 24 => {
                        // Key sizes or `len` set to extreme values.
                        let at = [8usize, 16, 20][rng.below(3) as usize];
                        let v = [0u32, 1, u32::MAX, u32::MAX / 2, 1024][rng.below(5) as usize];
                        buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    _ => buf.push(rng.next() as u8),
                }
            }
        }
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_u64);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut buf = Vec::with_capacity(2048);
    let (mut ok, mut rejected) = (0u64, 0u64);
    for _ in 0..n {
        message(&mut rng, &mut buf);
        match decode(&buf) {
            Ok(_) => ok += 1,
            Err(_) => rejected += 1,
        }
    }
    let mut lines = 0u64;
    for _ in 0..n / 10 {
        message(&mut rng, &mut buf);
        let _ = Status::parse(&buf);
        if rng.below(8) == 0 {
            let _ = Config::parse(Path::new("fuzz.conf"), &buf);
        }
        lines += 1;
    }
    println!(
        "fuzz_messages: seed {seed:#x}: {n} messages decoded ({ok} valid, {rejected} rejected), {lines} status lines/configs, no panic, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
