//! How errors reach people: `error: <message>`, each cause on its own line, then a
//! hint when there is something to do.

use std::fmt;

/// An error whose message is already written for the user, with an optional hint.
#[derive(Debug)]
pub struct UserError {
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

pub fn user_error(message: impl Into<String>, hint: Option<&str>) -> anyhow::Error {
    anyhow::Error::new(UserError { message: message.into(), hint: hint.map(str::to_string) })
}

/// Renders an error for stderr.
pub fn render(error: &anyhow::Error) -> String {
    let mut out = format!("error: {error}");
    let mut hint = error.downcast_ref::<UserError>().and_then(|user| user.hint.clone());
    for cause in error.chain() {
        if let Some(user) = cause.downcast_ref::<UserError>()
            && hint.is_none()
        {
            hint = user.hint.clone();
        }
    }
    for cause in error.chain().skip(1) {
        out.push_str(&format!("\n  caused by: {cause}"));
    }
    if let Some(hint) = hint {
        out.push_str(&format!("\n\nhint: {hint}"));
    }
    out
}

/// Exit codes: 0 ok, 1 failure (including a run that failed), 2 usage errors.
pub mod exit {
    pub const FAILURE: u8 = 1;
}
