//! The long fuzz campaign on stable Rust: every entry point of
//! `protocol::fuzz::TARGETS` (the same functions the cargo-fuzz targets and
//! the property tests run) fed inputs from a seeded generator: fresh random
//! bytes, and mutations (flips, inserts, cuts, splices) of earlier inputs.
//! No coverage feedback, unlike libFuzzer: the harnesses draw every decision
//! from the bytes, so random bytes already reach deep states.
//!
//! `cargo run --release -p annexmesh-protocol --example fuzz_campaign --
//! [--inputs N] [--seconds T] [--seed S] [--target NAME] [--findings DIR]`:
//! N inputs in all (default 10 000 000), split evenly among the targets, or
//! with `--seconds`, T seconds per target whatever the count. Prints inputs/s per
//! target and each finding (its input goes to DIR as hex); exits 1 if any.

use std::panic;
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn fresh(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = rng.below(max + 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

fn mutate(rng: &mut Rng, base: &[u8], other: &[u8], max: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i + 1);
                v.drain(i..i + n);
            }
            _ if !other.is_empty() => {
                let i = rng.below(v.len() + 1);
                let j = rng.below(other.len());
                let n = rng.below(other.len() - j + 1).min(64);
                v.splice(i..i, other[j..j + n].iter().copied());
            }
            _ => {}
        }
    }
    v.truncate(max);
    v
}

fn main() {
    let mut inputs: u64 = 10_000_000;
    let mut seed: u64 = 1;
    let mut only: Option<String> = None;
    let mut findings_dir = String::from("fuzz-findings");
    let mut seconds: Option<f64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&a));
        match a.as_str() {
            "--inputs" => inputs = value().parse().unwrap_or_else(|_| usage("--inputs")),
            "--seed" => seed = value().parse().unwrap_or_else(|_| usage("--seed")),
            "--target" => only = Some(value()),
            "--findings" => findings_dir = value(),
            "--seconds" => seconds = Some(value().parse().unwrap_or_else(|_| usage("--seconds"))),
            _ => usage(&a),
        }
    }
    let targets: Vec<_> = protocol::fuzz::TARGETS
        .iter()
        .filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n))
        .collect();
    if targets.is_empty() {
        usage("--target");
    }
    let per = inputs / targets.len() as u64;
    let message: Arc<Mutex<String>> = Arc::default();
    let m = message.clone();
    panic::set_hook(Box::new(move |info| {
        if let Ok(mut s) = m.lock() {
            *s = info.to_string();
        }
    }));
    match seconds {
        Some(s) => println!("seed {seed}, {s} s per target"),
        None => println!("seed {seed}, {per} inputs per target"),
    }
    println!(
        "{:<12} {:>12} {:>9} {:>12} {:>9}",
        "target", "inputs", "seconds", "inputs/s", "findings"
    );
    let mut total_findings = 0;
    for (name, f) in targets {
        let max = match *name {
            "repair" => 1024,
            "server" | "client" | "decode" => 2048,
            _ => 512,
        };
        let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15 ^ (name.len() as u64) << 32 | 1);
        let mut pool: Vec<Vec<u8>> = Vec::new();
        let mut found: Vec<String> = Vec::new();
        let start = Instant::now();
        let mut n = 0u64;
        loop {
            let done = match seconds {
                Some(s) => n.is_multiple_of(1024) && start.elapsed().as_secs_f64() >= s,
                None => n >= per,
            };
            if done {
                break;
            }
            n += 1;
            let input = if pool.len() < 2 || rng.below(2) == 0 {
                fresh(&mut rng, max)
            } else {
                let a = rng.below(pool.len());
                let b = rng.below(pool.len());
                mutate(&mut rng, &pool[a], &pool[b], max)
            };
            if panic::catch_unwind(|| f(&input)).is_err() {
                let what = message.lock().map(|s| s.clone()).unwrap_or_default();
                if !found.contains(&what) {
                    let _ = std::fs::create_dir_all(&findings_dir);
                    let path = format!("{findings_dir}/{name}-{n}.hex");
                    let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                    let _ = std::fs::write(&path, hex);
                    println!("FINDING {name} #{n}: {what}\n  input: {path}");
                    found.push(what);
                }
            }
            if pool.len() < 256 {
                pool.push(input);
            } else {
                let i = rng.below(pool.len());
                pool[i] = input;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<12} {:>12} {:>9.1} {:>12.0} {:>9}",
            name,
            n,
            secs,
            n as f64 / secs.max(1e-9),
            found.len()
        );
        total_findings += found.len();
    }
    println!("findings: {total_findings}");
    if total_findings > 0 {
        std::process::exit(1);
    }
}

fn usage(what: &str) -> ! {
    eprintln!(
        "fuzz_campaign: bad argument {what}\nusage: fuzz_campaign [--inputs N] [--seconds T] [--seed S] [--target NAME] [--findings DIR]"
    );
    std::process::exit(2)
}
