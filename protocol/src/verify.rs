//! Backends (key varieties) and incremental content verification.
//!
//! Hashing is pure computation, so it lives here; the store feeds bytes in as they
//! arrive and asks for a verdict at the end. SHA-2 and SHA-1 use the CPU's SHA
//! instructions when it has them (the `sha2`/`sha1` crates detect them at run time).

use digest::Digest;

use crate::key::Key;

/// The hash behind a backend name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha3_224,
    Sha3_256,
    Sha3_384,
    Sha3_512,
    Blake2b160,
    Blake2b224,
    Blake2b256,
    Blake2b384,
    Blake2b512,
    Blake2s160,
    Blake2s224,
    Blake2s256,
    Blake3,
    Sha1,
    Md5,
}

/// What a key's backend name says about its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A hash backend we can verify; `extension` for the `…E` form.
    Hashed { hash: Hash, extension: bool },
    /// A hash backend git-annex knows but we cannot compute (Skein, BLAKE2BP/SP,
    /// XXH3, external `X…` backends): only the size can be checked.
    UnverifiableHash { extension: bool },
    /// WORM, URL, VURL and anything unknown: no content check beyond size.
    Unverifiable,
}

impl Hash {
    fn from_base(name: &str) -> Option<Hash> {
        Some(match name {
            "SHA224" => Hash::Sha224,
            "SHA256" => Hash::Sha256,
            "SHA384" => Hash::Sha384,
            "SHA512" => Hash::Sha512,
            "SHA3_224" => Hash::Sha3_224,
            "SHA3_256" => Hash::Sha3_256,
            "SHA3_384" => Hash::Sha3_384,
            "SHA3_512" => Hash::Sha3_512,
            "BLAKE2B160" => Hash::Blake2b160,
            "BLAKE2B224" => Hash::Blake2b224,
            "BLAKE2B256" => Hash::Blake2b256,
            "BLAKE2B384" => Hash::Blake2b384,
            "BLAKE2B512" => Hash::Blake2b512,
            "BLAKE2S160" => Hash::Blake2s160,
            "BLAKE2S224" => Hash::Blake2s224,
            "BLAKE2S256" => Hash::Blake2s256,
            "BLAKE3_256" => Hash::Blake3,
            "SHA1" => Hash::Sha1,
            "MD5" => Hash::Md5,
            _ => return None,
        })
    }

    /// The backend name git-annex uses for this hash.
    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha224 => "SHA224",
            Hash::Sha256 => "SHA256",
            Hash::Sha384 => "SHA384",
            Hash::Sha512 => "SHA512",
            Hash::Sha3_224 => "SHA3_224",
            Hash::Sha3_256 => "SHA3_256",
            Hash::Sha3_384 => "SHA3_384",
            Hash::Sha3_512 => "SHA3_512",
            Hash::Blake2b160 => "BLAKE2B160",
            Hash::Blake2b224 => "BLAKE2B224",
            Hash::Blake2b256 => "BLAKE2B256",
            Hash::Blake2b384 => "BLAKE2B384",
            Hash::Blake2b512 => "BLAKE2B512",
            Hash::Blake2s160 => "BLAKE2S160",
            Hash::Blake2s224 => "BLAKE2S224",
            Hash::Blake2s256 => "BLAKE2S256",
            Hash::Blake3 => "BLAKE3_256",
            Hash::Sha1 => "SHA1",
            Hash::Md5 => "MD5",
        }
    }

    pub fn hasher(self) -> Hasher {
        use blake2::digest::consts::{U20, U28, U32, U48, U64};
        let state = match self {
            Hash::Sha224 => State::Sha224(sha2::Sha224::new()),
            Hash::Sha256 => State::Sha256(sha2::Sha256::new()),
            Hash::Sha384 => State::Sha384(sha2::Sha384::new()),
            Hash::Sha512 => State::Sha512(sha2::Sha512::new()),
            Hash::Sha3_224 => State::Sha3_224(sha3::Sha3_224::new()),
            Hash::Sha3_256 => State::Sha3_256(sha3::Sha3_256::new()),
            Hash::Sha3_384 => State::Sha3_384(sha3::Sha3_384::new()),
            Hash::Sha3_512 => State::Sha3_512(sha3::Sha3_512::new()),
            Hash::Blake2b160 => State::Blake2b160(blake2::Blake2b::<U20>::new()),
            Hash::Blake2b224 => State::Blake2b224(blake2::Blake2b::<U28>::new()),
            Hash::Blake2b256 => State::Blake2b256(blake2::Blake2b::<U32>::new()),
            Hash::Blake2b384 => State::Blake2b384(blake2::Blake2b::<U48>::new()),
            Hash::Blake2b512 => State::Blake2b512(blake2::Blake2b::<U64>::new()),
            Hash::Blake2s160 => State::Blake2s160(blake2::Blake2s::<U20>::new()),
            Hash::Blake2s224 => State::Blake2s224(blake2::Blake2s::<U28>::new()),
            Hash::Blake2s256 => State::Blake2s256(blake2::Blake2s::<U32>::new()),
            Hash::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
            Hash::Sha1 => State::Sha1(sha1::Sha1::new()),
            Hash::Md5 => State::Md5(md5::Md5::new()),
        };
        Hasher { state }
    }
}

impl Backend {
    pub fn from_name(name: &str) -> Backend {
        if let Some(hash) = Hash::from_base(name) {
            return Backend::Hashed {
                hash,
                extension: false,
            };
        }
        if let Some(base) = name.strip_suffix('E') {
            if let Some(hash) = Hash::from_base(base) {
                return Backend::Hashed {
                    hash,
                    extension: true,
                };
            }
            if is_other_hash(base) {
                return Backend::UnverifiableHash { extension: true };
            }
        }
        if is_other_hash(name) {
            return Backend::UnverifiableHash { extension: false };
        }
        Backend::Unverifiable
    }

    /// Whether key names of this backend end in a file extension.
    pub fn has_extension(self) -> bool {
        matches!(
            self,
            Backend::Hashed {
                extension: true,
                ..
            } | Backend::UnverifiableHash { extension: true }
        )
    }

    pub fn hash(self) -> Option<Hash> {
        match self {
            Backend::Hashed { hash, .. } => Some(hash),
            _ => None,
        }
    }

    /// True when the content of keys of this backend can be checked by hashing.
    pub fn verifiable(self) -> bool {
        matches!(self, Backend::Hashed { .. })
    }
}

fn is_other_hash(name: &str) -> bool {
    matches!(
        name,
        "SKEIN256" | "SKEIN512" | "BLAKE2BP512" | "BLAKE2SP224" | "BLAKE2SP256" | "XXH3"
    ) || (name.starts_with('X') && name.len() > 1 && name != "XXH3")
}

enum State {
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Sha3_224(sha3::Sha3_224),
    Sha3_256(sha3::Sha3_256),
    Sha3_384(sha3::Sha3_384),
    Sha3_512(sha3::Sha3_512),
    Blake2b160(blake2::Blake2b<blake2::digest::consts::U20>),
    Blake2b224(blake2::Blake2b<blake2::digest::consts::U28>),
    Blake2b256(blake2::Blake2b<blake2::digest::consts::U32>),
    Blake2b384(blake2::Blake2b<blake2::digest::consts::U48>),
    Blake2b512(blake2::Blake2b<blake2::digest::consts::U64>),
    Blake2s160(blake2::Blake2s<blake2::digest::consts::U20>),
    Blake2s224(blake2::Blake2s<blake2::digest::consts::U28>),
    Blake2s256(blake2::Blake2s<blake2::digest::consts::U32>),
    Blake3(Box<blake3::Hasher>),
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
}

/// An incremental hash of one of the supported algorithms.
pub struct Hasher {
    state: State,
}

macro_rules! each_state {
    ($s:expr, $h:ident => $e:expr, blake3 $b:ident => $eb:expr) => {
        match $s {
            State::Sha224($h) => $e,
            State::Sha256($h) => $e,
            State::Sha384($h) => $e,
            State::Sha512($h) => $e,
            State::Sha3_224($h) => $e,
            State::Sha3_256($h) => $e,
            State::Sha3_384($h) => $e,
            State::Sha3_512($h) => $e,
            State::Blake2b160($h) => $e,
            State::Blake2b224($h) => $e,
            State::Blake2b256($h) => $e,
            State::Blake2b384($h) => $e,
            State::Blake2b512($h) => $e,
            State::Blake2s160($h) => $e,
            State::Blake2s224($h) => $e,
            State::Blake2s256($h) => $e,
            State::Sha1($h) => $e,
            State::Md5($h) => $e,
            State::Blake3($b) => $eb,
        }
    };
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        each_state!(&mut self.state, h => Digest::update(h, bytes), blake3 b => {
            b.update(bytes);
        })
    }

    /// The digest as lowercase hex.
    pub fn finish_hex(self) -> String {
        each_state!(self.state, h => crate::hex::encode(&h.finalize()), blake3 b => {
            b.finalize().to_hex().to_string()
        })
    }
}

/// Verifies content against a key while it streams in.
///
/// Feed every byte of the content, from offset 0, in order; then call
/// [`Verifier::finish`]. For keys that cannot be hashed only the size is checked.
pub struct Verifier {
    key_size: Option<u64>,
    expected_hash: Option<String>,
    hasher: Option<Hasher>,
    seen: u64,
}

/// Whether the sender of `DATA` vouched for the bytes (`VALID`/`INVALID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// `VALID`: the file did not change while it was read.
    Valid,
    /// `INVALID`: it may have; accept only content whose hash proves it.
    Invalid,
    /// No verdict (protocol v0, or a malformed line in its place): verify fully.
    Unknown,
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Size and (for hash backends) hash match.
    Good,
    /// Only the size could be checked, and it matches (WORM, URL, unknown hashes).
    SizeOnly,
    WrongSize {
        expected: u64,
        got: u64,
    },
    WrongHash,
}

impl Verdict {
    pub fn accepted(&self) -> bool {
        matches!(self, Verdict::Good | Verdict::SizeOnly)
    }

    /// Whether to keep content the sender declared so: content that only a size
    /// check vouches for is refused when the sender said `INVALID`.
    pub fn accepted_given(&self, validity: Validity) -> bool {
        match self {
            Verdict::Good => true,
            Verdict::SizeOnly => validity != Validity::Invalid,
            Verdict::WrongSize { .. } | Verdict::WrongHash => false,
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("key_size", &self.key_size)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(key: &Key) -> Verifier {
        let backend = key.backend();
        let (expected_hash, hasher) = match backend.hash() {
            Some(hash) => (
                Some(key.hash_part().to_ascii_lowercase()),
                Some(hash.hasher()),
            ),
            None => (None, None),
        };
        Verifier {
            key_size: key.size(),
            expected_hash,
            hasher,
            seen: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.seen += bytes.len() as u64;
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
    }

    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    pub fn finish(self) -> Verdict {
        if let Some(expected) = self.key_size
            && expected != self.seen
        {
            return Verdict::WrongSize {
                expected,
                got: self.seen,
            };
        }
        match (self.hasher, self.expected_hash) {
            (Some(h), Some(expected)) => {
                if h.finish_hex() == expected {
                    Verdict::Good
                } else {
                    Verdict::WrongHash
                }
            }
            _ => Verdict::SizeOnly,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(backend: &str, content: &[u8], hex: &str) {
        let key = Key::parse(&format!("{backend}-s{}--{hex}", content.len())).unwrap();
        let mut v = Verifier::new(&key);
        v.update(content);
        assert_eq!(v.finish(), Verdict::Good, "{backend}");
    }

    #[test]
    fn known_digests() {
        // Digests of "foo" from coreutils / b2sum / b3sum.
        check(
            "SHA256",
            b"foo",
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        );
        check("SHA1", b"foo", "0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33");
        check("MD5", b"foo", "acbd18db4cc2f85cedef654fccc4a4d8");
        check(
            "SHA512",
            b"foo",
            "f7fbba6e0636f890e56fbbf3283e524c6fa3204ae298382d624741d0dc6638326e282c41be5e4254d8820772c5518a2c5a8c0c7f7eda19594a7eb539453e1ed7",
        );
        check(
            "SHA3_256",
            b"foo",
            "76d3bc41c9f588f7fcd0d5bf4718f8f84b1c41b20882703100b9eb9413807c01",
        );
        check(
            "BLAKE2B256",
            b"foo",
            "b8fe9f7f6255a6fa08f668ab632a8d081ad87983c77cd274e48ce450f0b349fd",
        );
        check(
            "BLAKE2B160",
            b"foo",
            "983ceba2afea8694cc933336b27b907f90c53a88",
        );
        check(
            "BLAKE2S224",
            b"foo",
            "9466668503ac415d87b8e1dfd7f348ab273ac1d5e4f774fced5fdb55",
        );
        check(
            "SHA3_384",
            b"foo",
            "665551928d13b7d84ee02734502b018d896a0fb87eed5adb4c87ba91bbd6489410e11b0fbcc06ed7d0ebad559e5d3bb5",
        );
        // Values above and below were computed by git-annex's `calckey`.
        check(
            "BLAKE3_256",
            b"foo",
            "04e0bb39f30b1a3feb89f536c93be15055482df748674b00d26e5a75777702e9",
        );
    }

    #[test]
    fn extension_keys_and_failures() {
        let key = Key::parse(
            "SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt",
        )
        .unwrap();
        let mut v = Verifier::new(&key);
        v.update(b"fo");
        v.update(b"o");
        assert_eq!(v.finish(), Verdict::Good);
        let mut v = Verifier::new(&key);
        v.update(b"bar");
        assert_eq!(v.finish(), Verdict::WrongHash);
        let mut v = Verifier::new(&key);
        v.update(b"fooo");
        assert_eq!(
            v.finish(),
            Verdict::WrongSize {
                expected: 3,
                got: 4
            }
        );
    }

    #[test]
    fn backends_classified() {
        assert!(Backend::from_name("SHA256E").has_extension());
        assert!(!Backend::from_name("SHA256").has_extension());
        assert_eq!(Backend::from_name("WORM"), Backend::Unverifiable);
        assert_eq!(Backend::from_name("URL"), Backend::Unverifiable);
        assert_eq!(
            Backend::from_name("XXH3E"),
            Backend::UnverifiableHash { extension: true }
        );
        let worm = Key::parse("WORM-s3-m5--foo").unwrap();
        let mut v = Verifier::new(&worm);
        v.update(b"abc");
        assert_eq!(v.finish(), Verdict::SizeOnly);
    }
}
