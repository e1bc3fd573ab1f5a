//! Who may read the dashboard, its API and `/metrics`: admin and metrics tokens, and the
//! dashboard's session cookie.
//!
//! Owns the comparison of a presented token with the configured ones and the making and
//! checking of session cookies. Hands on yes/no answers and cookie values. Never compares a
//! token with `==` (a presented token is MACed under a per-process random key and the tags
//! are compared by [`ring::hmac::verify`], in constant time, against every configured token
//! without stopping at the first match), never stores a session anywhere (a cookie carries
//! its expiry and a MAC, so any replica with the same configuration accepts it), and never
//! logs a token or a cookie.
//!
//! # Session cookie
//!
//! `cadence_session=v1.EXPIRES.MAC`, where `EXPIRES` is the verifier clock (ms since the Unix
//! epoch) after which it is refused, and `MAC` the lowercase hex HMAC-SHA256 of
//! `cadence-dashboard-session v1 EXPIRES` under a key derived from the admin token that signed
//! in (SHA-256 of `cadence dashboard session key v1`, a NUL byte, and the token). Removing a
//! token from the configuration ends its sessions; a session lasts [`SESSION_MS`] at most (a
//! replica accepts an expiry up to [`CLOCK_SLACK_MS`] further away, for clock differences
//! between replicas).
//! Sent with `Path=/dashboard; HttpOnly; Secure; SameSite=Strict`: scripts cannot read it and
//! no other site can make the browser send it.

use ring::hmac;
use ring::rand::SystemRandom;

use crate::Error;
use crate::config::SecretToken;
use crate::keys::hex;

/// The session cookie's name.
pub const COOKIE: &str = "cadence_session";
/// How long a dashboard session lasts: a working day.
pub const SESSION_MS: u64 = 8 * 60 * 60 * 1000;
/// How far ahead of this replica's clock another replica's clock may be: a cookie it signed
/// may expire up to this much later than [`SESSION_MS`] from now here and is still accepted.
pub const CLOCK_SLACK_MS: u64 = 5 * 60 * 1000;

/// The configured tokens, ready to compare against.
pub struct AdminAuth {
    /// Random per process: presented tokens are MACed under it and compared as tags, so the
    /// time taken says nothing about how much of a real token was guessed.
    compare: hmac::Key,
    /// Per admin token: its tag under `compare`, and its session-cookie key.
    admin: Vec<(hmac::Tag, hmac::Key)>,
    /// Per metrics token: its tag under `compare`.
    metrics: Vec<hmac::Tag>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("admin_tokens", &self.admin.len())
            .field("metrics_tokens", &self.metrics.len())
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// Prepares the configured admin and metrics tokens.
    pub fn new(admin: &[SecretToken], metrics: &[SecretToken]) -> Result<AdminAuth, Error> {
        let compare = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| Error::Key("system random source failed".to_owned()))?;
        let admin = admin
            .iter()
            .map(|t| {
                (
                    hmac::sign(&compare, t.expose().as_bytes()),
                    session_key(t.expose()),
                )
            })
            .collect();
        let metrics = metrics
            .iter()
            .map(|t| hmac::sign(&compare, t.expose().as_bytes()))
            .collect();
        Ok(AdminAuth {
            compare,
            admin,
            metrics,
        })
    }

    /// Whether any admin token is configured (without one the dashboard is closed).
    pub fn dashboard_open(&self) -> bool {
        !self.admin.is_empty()
    }

    /// The index of the admin token `presented` is, if it is one.
    fn admin_index(&self, presented: &str) -> Option<usize> {
        let mut found = None;
        // Every tag is checked, match or not: the time taken does not say which one matched.
        for (i, (tag, _)) in self.admin.iter().enumerate() {
            if hmac::verify(&self.compare, presented.as_bytes(), tag.as_ref()).is_ok() {
                found = Some(i);
            }
        }
        found
    }

    /// Whether `presented` is an admin token.
    pub fn is_admin(&self, presented: &str) -> bool {
        self.admin_index(presented).is_some()
    }

    /// Whether `presented` may read `/metrics`: a metrics token or an admin token.
    pub fn may_scrape(&self, presented: &str) -> bool {
        let mut ok = self.is_admin(presented);
        for tag in &self.metrics {
            ok |= hmac::verify(&self.compare, presented.as_bytes(), tag.as_ref()).is_ok();
        }
        ok
    }

    /// A session cookie value for the admin token `presented`, valid until `now_ms` +
    /// [`SESSION_MS`]; `None` when it is not an admin token.
    pub fn sign_in(&self, presented: &str, now_ms: u64) -> Option<String> {
        let i = self.admin_index(presented)?;
        let expires = now_ms.saturating_add(SESSION_MS);
        let tag = hmac::sign(&self.admin[i].1, &session_message(expires));
        Some(format!("v1.{expires}.{}", hex(tag.as_ref())))
    }

    /// Whether `cookie` is a session this configuration signed that has not expired.
    pub fn session_valid(&self, cookie: &str, now_ms: u64) -> bool {
        let mut parts = cookie.split('.');
        let (Some("v1"), Some(expires), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(expires) = expires.parse::<u64>() else {
            return false;
        };
        let Some(mac) = unhex(mac) else {
            return false;
        };
        // Never longer than a session from now, give or take the replicas' clock difference.
        let latest = now_ms
            .saturating_add(SESSION_MS)
            .saturating_add(CLOCK_SLACK_MS);
        if expires <= now_ms || expires > latest {
            return false;
        }
        let message = session_message(expires);
        let mut ok = false;
        for (_, key) in &self.admin {
            ok |= hmac::verify(key, &message, &mac).is_ok();
        }
        ok
    }
}

/// The key session cookies of `token` are signed with: the same on every replica that has the
/// token configured, and not the token itself.
fn session_key(token: &str) -> hmac::Key {
    let mut material = b"cadence dashboard session key v1\0".to_vec();
    material.extend_from_slice(token.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &material);
    hmac::Key::new(hmac::HMAC_SHA256, digest.as_ref())
}

fn session_message(expires: u64) -> Vec<u8> {
    format!("cadence-dashboard-session v1 {expires}").into_bytes()
}

/// Lowercase or uppercase hex to bytes; `None` for anything else.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// The token of an `Authorization: Bearer TOKEN` header value, if it is one.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name` in a `Cookie` header value, if present.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-0123456789abcdef0123456789";
    const OTHER: &str = "other-token-0123456789abcdef0123456789";
    const METRICS: &str = "metrics-token-0123456789abcdef012345678";

    fn auth(admin: &[&str]) -> AdminAuth {
        let admin: Vec<SecretToken> = admin.iter().map(|t| SecretToken::new(*t)).collect();
        AdminAuth::new(&admin, &[SecretToken::new(METRICS)]).unwrap()
    }

    #[test]
    fn only_configured_tokens_are_accepted() {
        let a = auth(&[ADMIN, OTHER]);
        assert!(a.dashboard_open());
        assert!(a.is_admin(ADMIN) && a.is_admin(OTHER));
        assert!(!a.is_admin(METRICS), "a metrics token opens only /metrics");
        assert!(!a.is_admin(&ADMIN[..ADMIN.len() - 1]));
        assert!(!a.is_admin(""));
        assert!(a.may_scrape(METRICS) && a.may_scrape(ADMIN));
        assert!(!a.may_scrape("metrics-token"));
        assert!(!auth(&[]).dashboard_open());
        assert!(!auth(&[]).is_admin(""));
    }

    #[test]
    fn sessions_expire_and_end_with_their_token() {
        let now = 1_767_225_600_000;
        let a = auth(&[ADMIN]);
        assert!(a.sign_in(OTHER, now).is_none());
        let cookie = a.sign_in(ADMIN, now).unwrap();
        assert!(a.session_valid(&cookie, now));
        assert!(a.session_valid(&cookie, now + SESSION_MS - 1));
        assert!(!a.session_valid(&cookie, now + SESSION_MS));
        // Another replica with the same configuration accepts it; without the token, none does.
        assert!(auth(&[OTHER, ADMIN]).session_valid(&cookie, now));
        // Even when that replica's clock is a few minutes behind the one that signed it in;
        // a cookie claiming to last longer than a session plus that slack is refused.
        let ahead = a.sign_in(ADMIN, now + CLOCK_SLACK_MS).unwrap();
        assert!(auth(&[ADMIN]).session_valid(&ahead, now));
        let too_far = a.sign_in(ADMIN, now + CLOCK_SLACK_MS + 1).unwrap();
        assert!(!a.session_valid(&too_far, now));
        assert!(!auth(&[OTHER]).session_valid(&cookie, now));
        // A stretched expiry or an altered MAC is refused.
        let parts: Vec<&str> = cookie.split('.').collect();
        let later = format!("v1.{}.{}", now + 1000, parts[2]);
        assert!(!a.session_valid(&later, now));
        let mut flipped = parts[2].to_owned();
        let last = if flipped.ends_with('0') { "1" } else { "0" };
        flipped.replace_range(flipped.len() - 1.., last);
        assert!(!a.session_valid(&format!("v1.{}.{flipped}", parts[1]), now));
        for junk in [
            "",
            "v1",
            "v1.x.00",
            "v2.1.00",
            "v1.1.zz",
            &format!("{cookie}.x"),
        ] {
            assert!(!a.session_valid(junk, now), "{junk}");
        }
    }

    #[test]
    fn headers_are_read_strictly() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(
            cookie("a=1; cadence_session=v1.2.3", COOKIE),
            Some("v1.2.3")
        );
        assert_eq!(cookie("xcadence_session=1", COOKIE), None);
    }
}
