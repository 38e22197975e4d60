//! Architecture invariant: `protocol` does no I/O, so it depends on no async
//! runtime, no networking and no git library; and its sources call no clock,
//! filesystem, process or socket API.

use std::path::Path;

#[test]
fn manifest_has_no_runtime_dependencies() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("read Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] section");
    for banned in [
        "tokio",
        "libp2p",
        "futures",
        "gix",
        "async-std",
        "mio",
        "rand",
    ] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(banned)),
            "protocol must not depend on {banned}"
        );
    }
}

#[test]
fn sources_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            for banned in [
                "std::fs",
                "std::net",
                "std::process",
                "SystemTime",
                "Instant::now",
                "std::env",
                "thread_rng",
            ] {
                assert!(!text.contains(banned), "{} uses {banned}", path.display());
            }
        }
    }
}
