//! Validated identifiers. A value of these types always satisfies the contract's
//! pattern, so code that holds one never re-checks it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than 250 characters")]
    TooLong,
    #[error("must start with a letter, digit or `_`, not `{0}`")]
    BadStart(char),
    #[error("may only contain letters, digits, `_`, `.` and `-`, not `{0}`")]
    BadChar(char),
}

/// Checks `[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}`, the pattern of DAG and task ids.
fn check_id(text: &str) -> Result<(), IdError> {
    let mut chars = text.chars();
    let first = chars.next().ok_or(IdError::Empty)?;
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(IdError::BadStart(first));
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(IdError::BadChar(bad));
    }
    if text.len() > 250 {
        return Err(IdError::TooLong);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                $check(&text)?;
                Ok(Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::new(text)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::new(text).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A DAG id: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}`.
    DagId,
    check_id
);
id_type!(
    /// A task id, unique within its DAG; same pattern as [`DagId`].
    TaskId,
    check_id
);
id_type!(
    /// A run id, unique within its DAG. Generated ids look like Airflow's
    /// (`scheduled__2024-01-01T00:00:00+00:00`); it becomes a folder name for logs,
    /// so it may not contain `/` or control characters.
    RunId,
    check_run_id
);

fn check_run_id(text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if text.len() > 250 {
        return Err(IdError::TooLong);
    }
    if text == "." || text == ".." {
        return Err(IdError::BadStart('.'));
    }
    if let Some(bad) = text.chars().find(|c| *c == '/' || *c == '\\' || c.is_control()) {
        return Err(IdError::BadChar(bad));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: &str) {
        let actual = match DagId::new(text) {
            Ok(id) => format!("ok {id}"),
            Err(error) => format!("error {error}"),
        };
        assert_eq!(actual, expect, "input {text:?}");
    }

    #[test]
    fn dag_ids() {
        check("public_listings", "ok public_listings");
        check("_x.y-z9", "ok _x.y-z9");
        check("9lives", "ok 9lives");
        check("", "error must not be empty");
        check("-x", "error must start with a letter, digit or `_`, not `-`");
        check("a b", "error may only contain letters, digits, `_`, `.` and `-`, not ` `");
        check("é", "error must start with a letter, digit or `_`, not `é`");
        check(&"a".repeat(250), &format!("ok {}", "a".repeat(250)));
        check(&"a".repeat(251), "error is longer than 250 characters");
    }

    #[test]
    fn run_ids() {
        assert!(RunId::new("manual__2024-01-01T00:00:00+00:00").is_ok());
        assert!(RunId::new("my run").is_ok());
        assert_eq!(RunId::new("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(RunId::new(".."), Err(IdError::BadStart('.')));
        assert_eq!(RunId::new(""), Err(IdError::Empty));
    }
}
