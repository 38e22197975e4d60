//! Conformance: replays the byte-exact git-annex P2P transcripts
//! (`testdata/annex-transcripts/p2p-*.txt`, `v4-*.txt`) against a `git-annex-shell p2pstdio`
//! server and checks every reply byte for byte.
//!
//! Every scenario runs against two servers:
//! * `real::<scenario>`: the stock `git-annex-shell` (PyPI git-annex). This validates the
//!   harness: it must reproduce the recordings.
//! * `ours::<scenario>`: our `annexmesh`, run through a symlink named `git-annex-shell`
//!   (it dispatches on argv[0]).
//!
//! Run: `cargo test -p annexmesh-cli --test transcripts` (filter with `real::` / `ours::`).
//!
//! How a replay works: B is built with the real git-annex as the `# setup:` lines say; each
//! connection runs `git-annex-shell <recorded args>` (B's path substituted) in a clean
//! environment; the interleaved items are walked in order (writes, exact reads with a
//! timeout, `<EOF>`, closing stdin, out-of-band steps); when a connection is over its exit
//! status is compared (zero / non-zero; stderr is not compared). `TIMESTAMP <n>` matches any
//! number, and a later `REMOVE-BEFORE <t>` on that connection is shifted by the difference.
//! Our server's deliberate deviations from git-annex are in `OUR_DEVIATIONS`, with reasons.

mod support;

#[path = "transcripts/model.rs"]
mod model;
#[path = "transcripts/pylit.rs"]
mod pylit;
#[path = "transcripts/runner.rs"]
mod runner;

use model::{Action, Event, Transcript};

/// A place where our server deliberately answers differently from git-annex-shell. In the
/// connection `conn` of `scenario`, the consecutive interleaved items `transcript` (written
/// as in the transcript, without the `[tag] `) are replaced by `ours`, and the connection's
/// exit code by `exit_code`.
struct Deviation {
    scenario: &'static str,
    conn: &'static str,
    transcript: &'static [&'static str],
    ours: &'static [&'static str],
    exit_code: Option<i32>,
    reason: &'static str,
}

/// The ONE table of deliberate differences. Anything else that differs is a bug.
const OUR_DEVIATIONS: &[Deviation] = &[Deviation {
    scenario: "p2p-14-lock-blocks-remove",
    conn: "conn2",
    transcript: &["S->C | <EOF>", "-- client closes stdin --"],
    ours: &[
        "S->C | FAILURE",
        "-- client closes stdin --",
        "S->C | <EOF>",
    ],
    exit_code: Some(0),
    reason: "git-annex-shell dies (EOF, exit 1, `content is locked`) when asked to REMOVE \
             content another connection has locked; that kills the client's whole session. \
             Ours refuses just that request with FAILURE (the content stays, the lock holder \
             is safe) and keeps serving; the client then closes stdin and ours exits 0.",
}];

fn load(file: &str) -> Transcript {
    let path = support::transcripts_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let name = file.strip_suffix(".txt").unwrap_or(file);
    model::parse(name, &text).unwrap_or_else(|e| panic!("cannot parse transcript: {e}"))
}

/// Applies `OUR_DEVIATIONS` for this transcript; panics if an entry no longer fits it.
fn apply_deviations(t: &mut Transcript) {
    for dev in OUR_DEVIATIONS.iter().filter(|d| d.scenario == t.name) {
        let conn = t
            .conns
            .iter()
            .position(|c| c.tag == dev.conn)
            .unwrap_or_else(|| panic!("deviation: {} has no connection [{}]", t.name, dev.conn));
        let tagged = |item: &str| format!("[{}] {item}", dev.conn);
        let wanted: Vec<String> = dev.transcript.iter().map(|s| tagged(s)).collect();
        let start = (0..t.events.len())
            .find(|&i| {
                t.events[i..]
                    .iter()
                    .take(wanted.len())
                    .map(|e| &e.line)
                    .eq(wanted.iter())
            })
            .unwrap_or_else(|| {
                panic!(
                    "deviation for {} [{}]: items {:?} not found (table out of date?)",
                    t.name, dev.conn, dev.transcript
                )
            });
        let replacement: Vec<Event> = dev
            .ours
            .iter()
            .map(|item| Event {
                conn,
                action: model::parse_body_item(item)
                    .unwrap_or_else(|e| panic!("deviation item {item:?}: {e}")),
                line: tagged(item),
            })
            .collect();
        t.events.splice(start..start + wanted.len(), replacement);
        if let Some(code) = dev.exit_code {
            t.conns[conn].exit_code = code;
        }
    }
}

enum Server {
    Real,
    Ours,
}

fn replay(file: &str, server: Server) {
    replay_transcript(load(file), server);
}

fn replay_transcript(mut t: Transcript, server: Server) {
    let scratch = tempfile::Builder::new()
        .prefix("annexmesh-transcript-")
        .tempdir()
        .expect("create a scratch directory");
    let root = scratch.path();
    let home = root.join("home");
    std::fs::create_dir_all(&home).expect("create HOME for the test");

    let (label, program) = match server {
        Server::Real => ("real", support::git_annex_bin_dir().join("git-annex-shell")),
        Server::Ours => {
            apply_deviations(&mut t);
            let bin = root.join("bin");
            std::fs::create_dir_all(&bin).expect("create bin directory");
            let link = bin.join("git-annex-shell");
            let target = support::annexmesh_bin();
            assert!(
                target.exists(),
                "our binary {} does not exist",
                target.display()
            );
            std::os::unix::fs::symlink(&target, &link)
                .unwrap_or_else(|e| panic!("cannot symlink {}: {e}", link.display()));
            ("ours", link)
        }
    };

    let repo = runner::build_repo(&t, root, &home);
    runner::Replay {
        label,
        server: &program,
        root,
        home: &home,
        repo: &repo,
    }
    .run(&t);
}

macro_rules! scenarios {
    ($($name:ident => $file:literal,)*) => {
        /// Every replayed transcript (checked against the directory by `all_listed`).
        const SCENARIOS: &[&str] = &[$($file),*];

        /// Against the stock git-annex-shell: validates the harness.
        mod real {
            $(
                #[test]
                fn $name() {
                    super::replay($file, super::Server::Real);
                }
            )*
        }

        /// Against our annexmesh, invoked as `git-annex-shell`.
        mod ours {
            $(
                #[test]
                fn $name() {
                    super::replay($file, super::Server::Ours);
                }
            )*
        }
    };
}

scenarios! {
    p2p_01_version => "p2p-01-version.txt",
    p2p_02_version_malformed => "p2p-02-version-malformed.txt",
    p2p_03_checkpresent => "p2p-03-checkpresent.txt",
    p2p_04_put_v1 => "p2p-04-put-v1.txt",
    p2p_05_put_v0 => "p2p-05-put-v0.txt",
    p2p_06_put_assocfile => "p2p-06-put-assocfile.txt",
    p2p_07_put_invalid_trailer => "p2p-07-put-invalid-trailer.txt",
    p2p_08_put_wrong_content => "p2p-08-put-wrong-content.txt",
    p2p_09_get => "p2p-09-get.txt",
    p2p_10_get_v0 => "p2p-10-get-v0.txt",
    p2p_11_get_absent => "p2p-11-get-absent.txt",
    p2p_12_lockcontent => "p2p-12-lockcontent.txt",
    p2p_13_lockcontent_misuse => "p2p-13-lockcontent-misuse.txt",
    p2p_14_lock_blocks_remove => "p2p-14-lock-blocks-remove.txt",
    p2p_15_remove => "p2p-15-remove.txt",
    p2p_16_readonly_appendonly => "p2p-16-readonly-appendonly.txt",
    p2p_25_client_error => "p2p-25-client-error.txt",
    p2p_26_eof_midsession => "p2p-26-eof-midsession.txt",
    p2p_27_bad_invocation => "p2p-27-bad-invocation.txt",
    p2p_28_connect_upload_pack => "p2p-28-connect-upload-pack.txt",
    p2p_29_notifychange => "p2p-29-notifychange.txt",
    v4_01_version => "v4-01-version.txt",
    v4_02_checkpresent => "v4-02-checkpresent.txt",
    v4_03_put => "v4-03-put.txt",
    v4_04_put_resume => "v4-04-put-resume.txt",
    v4_05_get_offset => "v4-05-get-offset.txt",
    v4_06_lockcontent => "v4-06-lockcontent.txt",
    v4_07_remove => "v4-07-remove.txt",
    v4_08_timestamp_remove_before => "v4-08-timestamp-remove-before.txt",
    v4_09_data_present => "v4-09-data-present.txt",
    v4_10_bypass => "v4-10-bypass.txt",
    v4_11_unknown_command => "v4-11-unknown-command.txt",
    v4_12_long_line => "v4-12-long-line.txt",
}

/// No `p2p-*` / `v4-*` transcript is silently left out.
#[test]
fn all_listed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(support::transcripts_dir())
        .expect("read the transcripts directory")
        .map(|e| {
            e.expect("read a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| (n.starts_with("p2p-") || n.starts_with("v4-")) && n.ends_with(".txt"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SCENARIOS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "update the scenarios! list");
}

/// Every transcript parses, and its interleaved items add up to its raw byte streams.
/// (Needs no server.)
#[test]
fn transcripts_parse_and_match_raw_streams() {
    for file in SCENARIOS {
        let t = load(file);
        assert!(!t.events.is_empty(), "{file}: no events");
        assert!(
            t.events
                .iter()
                .any(|e| matches!(e.action, Action::Expect(_))),
            "{file}: expects nothing"
        );
    }
}

/// The deviation table still matches the transcripts it patches. (Needs no server.)
#[test]
fn deviation_table_applies() {
    for dev in OUR_DEVIATIONS {
        assert!(!dev.reason.is_empty());
        let file = format!("{}.txt", dev.scenario);
        assert!(
            SCENARIOS.contains(&file.as_str()),
            "deviation for unknown scenario {}",
            dev.scenario
        );
        let mut t = load(&file);
        let before = t.events.len();
        apply_deviations(&mut t);
        assert_eq!(
            t.events.len(),
            before - dev.transcript.len() + dev.ours.len(),
            "{}: deviation not applied",
            dev.scenario
        );
    }
}

/// The long-line items are synthesised to their recorded lengths (the raw streams are cut).
#[test]
fn long_lines_are_synthesised_to_their_recorded_length() {
    let t = load("v4-12-long-line.txt");
    let lens: Vec<usize> = t
        .events
        .iter()
        .filter_map(|e| match &e.action {
            Action::Send(b) if b.len() > 1000 => Some(b.len()),
            _ => None,
        })
        .collect();
    assert_eq!(lens, [32767, 32768, 32769, 40001]);
}

/// Runs `f`, which must panic; returns the panic message.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("the replay should have failed");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// The harness is not vacuous: one changed expected reply fails against the real server,
/// pinpointing the byte.
#[test]
fn real_server_fails_a_changed_reply() {
    let mut t = load("p2p-03-checkpresent.txt");
    let success = t
        .events
        .iter_mut()
        .find_map(|e| match &mut e.action {
            Action::Expect(model::Expect::Line(l)) if l.as_slice() == b"SUCCESS\n" => Some(l),
            _ => None,
        })
        .expect("p2p-03 has a SUCCESS reply");
    *success = b"FAILURE\n".to_vec();
    let msg = panic_message(|| replay_transcript(t, Server::Real));
    assert!(
        msg.contains("expected b'FAILURE\\n' but got b'SUCCESS\\n'"),
        "unexpected failure: {msg}"
    );
}

/// Every entry of `OUR_DEVIATIONS` really is a deviation: the patched transcript fails
/// against the real git-annex-shell.
#[test]
fn real_server_does_not_match_our_deviations() {
    for dev in OUR_DEVIATIONS {
        let mut t = load(&format!("{}.txt", dev.scenario));
        apply_deviations(&mut t);
        // Replaying with `Server::Real` skips apply_deviations, so hand it the patched
        // transcript directly.
        let msg = panic_message(|| replay_transcript(t, Server::Real));
        assert!(msg.contains("[real]"), "unexpected failure: {msg}");
    }
}
