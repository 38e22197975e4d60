use proptest::prelude::*;

use super::*;

const K: &str = "SHA256E-s6--5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03.txt";

fn key() -> Key {
    Key::parse(K).unwrap()
}

fn parse(s: &str) -> Result<Message, ParseError> {
    Message::parse(s.as_bytes())
}

#[test]
fn empty_tokens_keep_their_separator() {
    let put = Message::Put(AssociatedFile::none(), key());
    assert_eq!(put.to_line(), format!("PUT  {K}\n").into_bytes());
    assert_eq!(parse(&format!("PUT  {K}")), Ok(put));
    let auth = Message::Auth(
        Some(Uuid::parse("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").unwrap()),
        AuthToken::parse("").unwrap(),
    );
    assert_eq!(
        auth.to_string(),
        "AUTH aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa "
    );
    assert_eq!(
        parse("AUTH aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa "),
        Ok(auth)
    );
    assert_eq!(Message::SuccessPlus(vec![]).to_string(), "SUCCESS-PLUS");
    // A new clone has no uuid yet: `AUTH  <token>`.
    let anonymous = Message::Auth(None, AuthToken::parse("abc").unwrap());
    assert_eq!(anonymous.to_string(), "AUTH  abc");
    assert_eq!(parse("AUTH  abc"), Ok(anonymous));
}

#[test]
fn version_parsing_is_lenient_like_reads() {
    // From the p2p-02 transcript.
    assert_eq!(parse("VERSION"), Err(ParseError));
    assert_eq!(parse("VERSION abc"), Err(ParseError));
    assert_eq!(parse("VERSION -1"), Ok(Message::Version(-1)));
    assert_eq!(parse("VERSION 1 2"), Ok(Message::Version(1)));
    assert_eq!(parse("VERSION  1"), Ok(Message::Version(1)));
    assert_eq!(parse("version 1"), Err(ParseError));
    assert_eq!(
        parse("VERSION 99999999999999999999999"),
        Ok(Message::Version(i64::MAX))
    );
}

#[test]
fn arity_rules() {
    assert_eq!(parse("SUCCESS"), Ok(Message::Success));
    assert_eq!(parse("SUCCESS\r"), Ok(Message::Success));
    assert_eq!(parse("SUCCESS  "), Err(ParseError));
    assert_eq!(parse(&format!("UNLOCKCONTENT {K}")), Err(ParseError));
    assert_eq!(parse("BYPASS"), Ok(Message::Bypass(vec![])));
    assert_eq!(parse("BYPASS "), Ok(Message::Bypass(vec![])));
    assert_eq!(
        parse("BYPASS  u1   u2 "),
        Ok(Message::Bypass(vec![
            Uuid::parse("u1").unwrap(),
            Uuid::parse("u2").unwrap()
        ]))
    );
    assert_eq!(
        parse("ERROR two  words "),
        Ok(Message::Error("two  words ".into()))
    );
    assert_eq!(parse(&format!("REMOVE-BEFORE abc {K}")), Err(ParseError));
    assert_eq!(parse("CHECKPRESENT not-a-key"), Err(ParseError));
    assert_eq!(parse("FROBNICATE x"), Err(ParseError));
    assert_eq!(
        parse("CHANGED 0123abc refs/heads/master"),
        Ok(Message::Changed(vec![
            "0123abc".into(),
            "refs/heads/master".into()
        ]))
    );
    assert_eq!(
        parse("CONNECT git-upload-pack"),
        Ok(Message::Connect(Service::UploadPack))
    );
    assert_eq!(parse("CONNECT git-shell"), Err(ParseError));
    assert_eq!(parse("DATA -1"), Err(ParseError));
}

#[test]
fn associated_file_encoding_is_lossy_like_git_annex() {
    let af = AssociatedFile::new("my holiday.jpg");
    assert_eq!(af.encode(), "my%holiday.jpg");
    let back = AssociatedFile::decode(&af.encode()).unwrap();
    assert_eq!(back.as_deref(), Some("my_holiday.jpg"));
    assert_eq!(
        AssociatedFile::decode("100%%.txt").unwrap().as_deref(),
        Some("100%.txt")
    );
    assert_eq!(AssociatedFile::decode("/etc/passwd"), None);
    let get = parse(&format!("GET 5 a%b.txt {K}")).unwrap();
    assert_eq!(get, Message::Get(5, AssociatedFile::new("a_b.txt"), key()));
    assert_eq!(parse(&format!("GET 0 /abs {K}")), Err(ParseError));
}

#[test]
fn errors_never_break_lines() {
    let line = Message::Error("a\nb".into()).to_line();
    assert_eq!(line, b"ERROR a b\n");
}

#[test]
fn line_decoder_bounds() {
    assert_eq!(LineDecoder::decode(b"abc"), Decoded::Incomplete);
    assert_eq!(
        LineDecoder::decode(b"abc\nrest"),
        Decoded::Line { consumed: 4 }
    );
    let mut long = vec![b'A'; MAX_LINE];
    long.push(b'\n');
    assert_eq!(
        LineDecoder::decode(&long),
        Decoded::Line {
            consumed: MAX_LINE + 1
        }
    );
    let mut too_long = vec![b'A'; MAX_LINE + 1];
    assert_eq!(LineDecoder::decode(&too_long), Decoded::TooLong);
    too_long.push(b'\n');
    assert_eq!(LineDecoder::decode(&too_long), Decoded::TooLong);
}

fn arb_uuid() -> impl Strategy<Value = Uuid> + Clone {
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
        .prop_map(|s| Uuid::parse(&s).unwrap())
}

fn arb_key() -> impl Strategy<Value = Key> {
    prop_oneof![
        ("[0-9]{1,12}", "[0-9a-f]{64}", "(\\.[a-z0-9]{1,4}){0,2}").prop_map(|(s, h, e)| {
            Key::parse(&format!("SHA256E-s{}--{h}{e}", s.parse::<u64>().unwrap())).unwrap()
        }),
        ("[0-9]{1,6}", "[0-9]{1,10}", "[!-~ ]{1,40}").prop_map(|(s, m, n)| {
            Key::parse(&format!(
                "WORM-s{}-m{}--{n}",
                s.parse::<u64>().unwrap(),
                m.parse::<i64>().unwrap()
            ))
            .unwrap()
        }),
    ]
}

fn arb_afile() -> impl Strategy<Value = AssociatedFile> {
    // Only files that survive git-annex's lossy encoding unchanged round-trip.
    prop_oneof![
        Just(AssociatedFile::none()),
        "[a-zA-Z0-9._%/-]{1,30}"
            .prop_filter("relative", |s| !s.starts_with('/'))
            .prop_map(|s| AssociatedFile::new(&s)),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    use Message as M;
    let uuids = prop::collection::vec(arb_uuid(), 0..4);
    prop_oneof![
        (arb_uuid(), "[a-z0-9]{0,128}")
            .prop_map(|(u, t)| M::Auth(Some(u), AuthToken::parse(&t).unwrap())),
        arb_uuid().prop_map(M::AuthSuccess),
        Just(M::AuthFailure),
        (-5i64..100).prop_map(M::Version),
        uuids.clone().prop_map(M::Bypass),
        arb_key().prop_map(M::CheckPresent),
        arb_key().prop_map(M::LockContent),
        Just(M::UnlockContent),
        arb_key().prop_map(M::Remove),
        (any::<i64>(), arb_key()).prop_map(|(t, k)| M::RemoveBefore(t, k)),
        Just(M::GetTimestamp),
        any::<i64>().prop_map(M::Timestamp),
        (any::<u64>().prop_map(|n| n / 2), arb_afile(), arb_key())
            .prop_map(|(o, a, k)| M::Get(o, a, k)),
        (arb_afile(), arb_key()).prop_map(|(a, k)| M::Put(a, k)),
        (0u64..i64::MAX as u64).prop_map(M::PutFrom),
        Just(M::AlreadyHave),
        uuids.clone().prop_map(M::AlreadyHavePlus),
        (0u64..i64::MAX as u64).prop_map(M::Data),
        Just(M::DataPresent),
        Just(M::Valid),
        Just(M::Invalid),
        Just(M::Success),
        uuids.clone().prop_map(M::SuccessPlus),
        Just(M::Failure),
        uuids.prop_map(M::FailurePlus),
        Just(M::Connect(Service::UploadPack)),
        Just(M::Connect(Service::ReceivePack)),
        any::<i32>().prop_map(M::ConnectDone),
        Just(M::NotifyChange),
        prop::collection::vec("[0-9a-f]{40}", 0..3).prop_map(M::Changed),
        "[ -~]{0,80}".prop_map(M::Error),
    ]
}

proptest! {
    #[test]
    fn encode_then_parse_round_trips(msg in arb_message()) {
        let line = msg.to_line();
        prop_assert_eq!(line.last(), Some(&b'\n'));
        prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let parsed = Message::parse(&line[..line.len() - 1]);
        prop_assert_eq!(parsed, Ok(msg));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Message::parse(&bytes);
        let decoded = decode_all(&bytes);
        prop_assert!(decoded.len() <= bytes.len());
    }

    #[test]
    fn arbitrary_lines_of_known_words_never_panic(
        word in prop::sample::select(vec![
            "AUTH", "VERSION", "BYPASS", "CHECKPRESENT", "GET", "PUT", "REMOVE-BEFORE",
            "DATA", "PUT-FROM", "CONNECTDONE", "SUCCESS-PLUS", "CHANGED", "TIMESTAMP",
        ]),
        rest in "[ -~\t\r]{0,200}",
    ) {
        let _ = parse(&format!("{word} {rest}"));
    }
}

/// A bounded, deterministic fuzz run of the decoder over mutated real traffic:
/// the same entry point as `fuzz/fuzz_targets/decode.rs`, so the fuzz target's
/// harness is exercised in every test run.
#[test]
fn bounded_fuzz_of_decoder() {
    let seeds: Vec<Vec<u8>> = vec![
        format!("VERSION 4\nPUT world.txt {K}\nDATA 6\nhello\nVALID\n").into_bytes(),
        format!("GET 0  {K}\nCHECKPRESENT {K}\nBYPASS a b\nERROR x\n").into_bytes(),
        b"AUTH u t\nREMOVE-BEFORE 12 WORM-s1-m2--x\nCONNECTDONE 1\nDATA 99999999999999999999\n"
            .to_vec(),
    ];
    // xorshift: deterministic, no dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let mut input = seeds[round % seeds.len()].clone();
        let mutations = 1 + (next() % 8) as usize;
        for _ in 0..mutations {
            let r = next();
            let pos = (r as usize >> 8) % (input.len() + 1);
            match r % 4 {
                0 if !input.is_empty() => {
                    let p = pos.min(input.len() - 1);
                    input[p] = (r >> 32) as u8;
                }
                1 => input.insert(pos, (r >> 24) as u8),
                2 if pos < input.len() => {
                    input.remove(pos);
                }
                _ => input.insert(pos, b"\n \r0-"[(r >> 40) as usize % 5]),
            }
        }
        let decoded = crate::fuzz::decode_input(&input);
        assert!(decoded <= input.len());
    }
}
