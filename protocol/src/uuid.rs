//! Repository UUIDs and P2P auth tokens, as git-annex treats them.

use std::fmt;

/// Longest UUID we accept from a peer. git-annex UUIDs are 36 characters; the
/// bound only keeps hostile input small.
pub const MAX_UUID_LEN: usize = 128;

/// A repository UUID.
///
/// git-annex treats a UUID as an opaque string, so this accepts any non-empty
/// token without whitespace or control characters (bounded in length). Cluster
/// UUIDs are recognised by inspection, as git-annex does (`Types/Cluster.hs`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Uuid(String);

/// Why a string is not a usable UUID or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UuidError {
    #[error("empty uuid")]
    Empty,
    #[error("uuid longer than {MAX_UUID_LEN} bytes")]
    TooLong,
    #[error("uuid contains whitespace or a control character")]
    BadChar,
}

impl Uuid {
    pub fn parse(s: &str) -> Result<Uuid, UuidError> {
        if s.is_empty() {
            return Err(UuidError::Empty);
        }
        if s.len() > MAX_UUID_LEN {
            return Err(UuidError::TooLong);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UuidError::BadChar);
        }
        Ok(Uuid(s.to_owned()))
    }

    /// A random version-4 UUID made from 16 bytes of randomness supplied by the caller
    /// (this crate reads no OS randomness).
    pub fn new_v4(random: [u8; 16]) -> Uuid {
        let mut b = random;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(format_uuid_bytes(&b))
    }

    /// A cluster UUID as `git-annex initcluster` makes one: a random v4 UUID whose
    /// first two hex digits are `ac` and whose version digit is `8`.
    pub fn new_cluster(random: [u8; 16]) -> Uuid {
        let mut b = random;
        b[0] = 0xac;
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(format_uuid_bytes(&b))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// git-annex's test: first two characters `ac`, character 14 is `8`.
    pub fn is_cluster(&self) -> bool {
        let b = self.0.as_bytes();
        b.len() > 14 && b.starts_with(b"ac") && b[14] == b'8'
    }
}

fn format_uuid_bytes(b: &[u8; 16]) -> String {
    let hex = crate::hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({})", self.0)
    }
}

impl std::str::FromStr for Uuid {
    type Err = UuidError;
    fn from_str(s: &str) -> Result<Uuid, UuidError> {
        Uuid::parse(s)
    }
}

impl TryFrom<String> for Uuid {
    type Error = UuidError;
    fn try_from(s: String) -> Result<Uuid, UuidError> {
        Uuid::parse(&s)
    }
}

impl From<Uuid> for String {
    fn from(u: Uuid) -> String {
        u.0
    }
}

/// A P2P auth token (`Utility/AuthToken.hs`): ASCII letters and digits only,
/// upper case folded to lower case. May be empty (`nullAuthToken`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AuthToken(String);

/// Longest token accepted. git-annex's generated tokens are 128 characters.
pub const MAX_TOKEN_LEN: usize = 512;

impl AuthToken {
    pub fn parse(s: &str) -> Option<AuthToken> {
        if s.len() > MAX_TOKEN_LEN || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(AuthToken(s.to_ascii_lowercase()))
    }

    /// A new token the way git-annex makes one: SHA-512 of 512 random bytes, as
    /// lowercase hex, first 128 characters. The randomness comes from the caller.
    pub fn generate(random: &[u8; 512]) -> AuthToken {
        use sha2::Digest;
        let digest = sha2::Sha512::digest(random);
        let mut hex = crate::hex::encode(&digest);
        hex.truncate(128);
        AuthToken(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares in time independent of where the first difference is.
    pub fn constant_time_eq(&self, other: &AuthToken) -> bool {
        let a = self.0.as_bytes();
        let b = other.0.as_bytes();
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            diff |= usize::from(x ^ y);
        }
        diff == 0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_uuid_recognised() {
        let u = Uuid::parse("acae2ff6-6c1e-8bec-b8b9-397a3755f397").unwrap();
        assert!(u.is_cluster());
        let plain = Uuid::parse("9f514001-6dc0-4d83-9af3-c64c96626892").unwrap();
        assert!(!plain.is_cluster());
        // The wiki's example is not a valid cluster uuid (DOC≠CODE in the spec).
        assert!(
            !Uuid::parse("5b070cc8-29b8-11ef-80e1-0fd524be241b")
                .unwrap()
                .is_cluster()
        );
        let made = Uuid::new_cluster([7; 16]);
        assert!(made.is_cluster(), "{made}");
        assert_eq!(made.as_str().len(), 36);
        assert!(!Uuid::new_v4([0xac; 16]).is_cluster());
    }

    #[test]
    fn bad_uuids_rejected() {
        assert_eq!(Uuid::parse(""), Err(UuidError::Empty));
        assert_eq!(Uuid::parse("a b"), Err(UuidError::BadChar));
        assert_eq!(Uuid::parse("a\nb"), Err(UuidError::BadChar));
        assert_eq!(Uuid::parse(&"a".repeat(200)), Err(UuidError::TooLong));
    }

    #[test]
    fn tokens() {
        assert_eq!(AuthToken::parse("AbC1").unwrap().as_str(), "abc1");
        assert!(AuthToken::parse("").unwrap().is_empty());
        assert!(AuthToken::parse("a-b").is_none());
        let t = AuthToken::generate(&[1; 512]);
        assert_eq!(t.as_str().len(), 128);
        assert!(t.constant_time_eq(&AuthToken::parse(t.as_str()).unwrap()));
        assert!(!t.constant_time_eq(&AuthToken::parse("abc").unwrap()));
    }
}
