//! The verifier's secrets on disk: its HPKE key pair and enrollment tokens.
//!
//! Owns `hpke.key` in the data directory (the 32 private-key bytes of the X25519 key agents
//! seal to, raw, file mode 0600, made on first start and never replaced) and the making and
//! hashing of enrollment tokens. Hands on a [`VerifierKeyPair`] and [`Token`]s. Never prints or
//! logs a private key or a token: [`Token`]'s `Debug` is redacted, and only a token's SHA-256
//! is ever stored.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

use cadence_wire::VerifierKeyPair;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::Error;

/// The HPKE private key's file name in the data directory.
pub const HPKE_KEY_FILE: &str = "hpke.key";
/// Random bytes in a token (shown as twice as many hex digits).
const TOKEN_BYTES: usize = 24;

/// Loads the verifier's HPKE key pair from the data directory, or makes and keeps one on first
/// start. Returns the pair and whether it was just made.
pub fn load_or_create_hpke(data_dir: &Path) -> Result<(VerifierKeyPair, bool), Error> {
    let path = data_dir.join(HPKE_KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let pair = VerifierKeyPair::from_bytes(&bytes).map_err(|e| {
                Error::Key(format!("{} is not a verifier key: {e}", path.display()))
            })?;
            Ok((pair, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pair = VerifierKeyPair::generate().map_err(|e| Error::Key(e.to_string()))?;
            write_secret_file(&path, pair.to_private_bytes().as_ref())?;
            Ok((pair, true))
        }
        Err(e) => Err(Error::io("reading", path)(e)),
    }
}

/// Creates the data directory (and parents), owner-only on Unix.
pub fn create_data_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(Error::io("creating", dir))
}

/// Writes a new file that only its owner can read (mode 0600 on Unix), fsynced. Refuses to
/// replace an existing file: a key once handed out must never change under the agents.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(Error::io("creating", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(Error::io("writing", path))
}

/// An enrollment token: what an MDM profile hands the agent so it may enroll. Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh random token from the operating system's random source.
    pub fn generate() -> Result<Token, Error> {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| Error::Key("system random source failed".to_owned()))?;
        Ok(Token(hex(bytes.as_ref())))
    }

    /// The token's text, to print once for the operator or send in an enrollment request.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What is stored and compared: SHA-256 of the token's text.
    pub fn hash(&self) -> [u8; 32] {
        token_hash(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// SHA-256 of a token's text, as stored in the token table.
pub fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(digest.as_ref()) {
        *o = *b;
    }
    out
}

/// SHA-256 of any bytes (envelopes are deduplicated by it).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(digest.as_ref()) {
        *o = *b;
    }
    out
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpke_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create_hpke(dir.path()).unwrap();
        assert!(created);
        let (b, created) = load_or_create_hpke(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(HPKE_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(HPKE_KEY_FILE), b"short").unwrap();
        assert!(matches!(
            load_or_create_hpke(dir.path()),
            Err(Error::Key(_))
        ));
    }

    #[test]
    fn tokens_are_random_hex_and_never_debug_printed() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 2 * TOKEN_BYTES);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(format!("{a:?}"), "Token(<redacted>)");
        assert_eq!(a.hash(), token_hash(a.expose()));
        assert_eq!(
            hex(&token_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
