//! Who may do what. Passwords are hashed with argon2id; session and API tokens
//! are random and stored only as SHA-256 hashes; [`permits`] is the one
//! permission check: the UI and the API both ask it, so they cannot disagree.
//!
//! Roles have Airflow's meanings: a Viewer reads; a User also triggers, pauses,
//! clears and marks; an Op also manages pools, variables and connections; an
//! Admin also manages accounts and reads the audit log, and sees every team.
//! A DAG belongs to the team its `owner` names; everyone but an Admin sees and
//! acts only on their teams' DAGs.

pub mod oidc;

use std::fmt;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    #[error("unknown role `{0}`: use admin, op, user or viewer")]
    UnknownRole(String),
    #[error("a password needs at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("`core.fernet_key` key {0} is not a Fernet key (32 bytes, URL-safe base64)")]
    BadKey(usize),
    #[error("no `core.fernet_key` is set: secrets cannot be stored or read")]
    NoKey,
    #[error(
        "a stored secret cannot be decrypted with `core.fernet_key`: was the key changed without `updraft rotate-fernet-key`?"
    )]
    Undecryptable,
}

/// Encrypts secrets at rest (variables, connection passwords and extras) with
/// Fernet, as Airflow does, so an export moves between the two. Several keys,
/// comma-separated: the first encrypts, any decrypts (to rotate keys).
pub struct Cipher(fernet::MultiFernet);

impl Cipher {
    pub fn from_keys(keys: &str) -> Result<Cipher, AuthError> {
        let keys: Vec<&str> = keys.split(',').map(str::trim).filter(|key| !key.is_empty()).collect();
        if keys.is_empty() {
            return Err(AuthError::NoKey);
        }
        let fernets = keys
            .iter()
            .enumerate()
            .map(|(index, key)| fernet::Fernet::new(key).ok_or(AuthError::BadKey(index + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cipher(fernet::MultiFernet::new(fernets)))
    }

    /// A new random key.
    pub fn generate_key() -> String {
        fernet::Fernet::generate_key()
    }

    pub fn encrypt(&self, plain: &str) -> String {
        self.0.encrypt(plain.as_bytes())
    }

    pub fn decrypt(&self, token: &str) -> Result<String, AuthError> {
        let bytes = self.0.decrypt(token).map_err(|_| AuthError::Undecryptable)?;
        String::from_utf8(bytes).map_err(|_| AuthError::Undecryptable)
    }
}

/// Shorter passwords are refused.
pub const MIN_PASSWORD: usize = 10;

/// A PHC string (`$argon2id$v=19$...`) with a random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AuthError::ShortPassword);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|error| AuthError::Hash(error.to_string()))
}

/// Whether `password` matches `hash`. A malformed hash matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Whether two secrets are equal, in time that depends only on their length, so
/// timing does not tell how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Usernames: up to 64 letters, digits and `._@-` (an email address fits).
pub fn valid_username(username: &str) -> bool {
    !username.is_empty()
        && username.len() <= 64
        && username.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// A new secret token `<prefix>_<64 hex>` and the hash to store.
pub fn new_token(prefix: &str) -> Result<(String, String), AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| AuthError::Random(error.to_string()))?;
    let secret = format!("{prefix}_{}", hex(&bytes));
    let hash = token_hash(&secret);
    Ok((secret, hash))
}

/// What is stored for a token: its SHA-256, so a stolen table opens nothing.
pub fn token_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    User,
    Op,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::User, Role::Op, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::User => "user",
            Role::Op => "op",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, AuthError> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| AuthError::UnknownRole(text.to_string()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// See a DAG, its runs, tasks, logs and code.
    ReadDag { owner: &'a str },
    /// Trigger, pause, clear, mark, delete runs of a DAG.
    EditDag { owner: &'a str },
    /// Read pools, health, version, parse errors.
    ReadPlatform,
    /// Change pools, variables, connections.
    EditPlatform,
    /// Accounts, tokens of others, the audit log.
    Administer,
}

/// Someone known: a signed-in person or a token's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    pub role: Role,
    pub teams: Vec<String>,
}

/// The one permission check.
pub fn permits(principal: &Principal, action: Action<'_>) -> bool {
    let in_team = |owner: &str| principal.role == Role::Admin || principal.teams.iter().any(|team| team == owner);
    match action {
        Action::ReadDag { owner } => in_team(owner),
        Action::EditDag { owner } => principal.role >= Role::User && in_team(owner),
        Action::ReadPlatform => true,
        Action::EditPlatform => principal.role >= Role::Op,
        Action::Administer => principal.role == Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse battery!", &hash));
        assert!(!verify_password("anything", "not a hash"));
        assert_ne!(hash, hash_password("correct horse battery").unwrap(), "a fresh salt each time");
        assert!(matches!(hash_password("short"), Err(AuthError::ShortPassword)));
    }

    #[test]
    fn fernet_round_trips_and_rotates() {
        let (old, new) = (Cipher::generate_key(), Cipher::generate_key());
        let before = Cipher::from_keys(&old).unwrap();
        let token = before.encrypt("s3cret pa55");
        assert!(!token.contains("s3cret"));
        assert_eq!(before.decrypt(&token).unwrap(), "s3cret pa55");
        // New key first: old tokens still read; new ones use the new key only.
        let rotating = Cipher::from_keys(&format!("{new}, {old}")).unwrap();
        assert_eq!(rotating.decrypt(&token).unwrap(), "s3cret pa55");
        let fresh = rotating.encrypt("s3cret pa55");
        assert!(Cipher::from_keys(&new).unwrap().decrypt(&fresh).is_ok());
        assert!(matches!(before.decrypt(&fresh), Err(AuthError::Undecryptable)));
        assert!(matches!(Cipher::from_keys(&format!("{new},not-a-key")), Err(AuthError::BadKey(2))));
        assert!(matches!(Cipher::from_keys(" "), Err(AuthError::NoKey)));
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (secret, hash) = new_token("updraft").unwrap();
        assert!(secret.starts_with("updraft_") && secret.len() == "updraft_".len() + 64, "{secret}");
        assert_eq!(token_hash(&secret), hash);
        assert!(!hash.contains(&secret[8..]));
        assert_ne!(new_token("updraft").unwrap().0, secret);
    }

    #[test]
    fn roles_and_teams() {
        let person = |role, teams: &[&str]| Principal {
            username: "p".into(),
            role,
            teams: teams.iter().map(|team| team.to_string()).collect(),
        };
        let finance = Action::ReadDag { owner: "finance" };
        let edit_finance = Action::EditDag { owner: "finance" };
        // (principal, read finance, edit finance, edit platform, administer)
        for (principal, read, edit, platform, admin) in [
            (person(Role::Viewer, &["finance"]), true, false, false, false),
            (person(Role::User, &["finance"]), true, true, false, false),
            (person(Role::User, &["ml"]), false, false, false, false),
            (person(Role::Op, &["finance"]), true, true, true, false),
            (person(Role::Op, &[]), false, false, true, false),
            (person(Role::Admin, &[]), true, true, true, true),
        ] {
            assert_eq!(permits(&principal, finance), read, "{principal:?} reads");
            assert_eq!(permits(&principal, edit_finance), edit, "{principal:?} edits");
            assert_eq!(permits(&principal, Action::EditPlatform), platform, "{principal:?} platform");
            assert_eq!(permits(&principal, Action::Administer), admin, "{principal:?} administers");
            assert!(permits(&principal, Action::ReadPlatform));
        }
        assert_eq!(Role::parse(" Op ").unwrap(), Role::Op);
        assert!(Role::parse("root").is_err());
    }
}
