//! Who is calling. Every API handler takes a [`Caller`], so access control has
//! one place to plug in: until accounts exist, everyone is `anonymous` and may do
//! everything.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Names the caller in the transition log (`api:<name>`).
    pub name: String,
}

impl Caller {
    /// The actor recorded for changes this caller makes.
    pub fn actor(&self) -> String {
        format!("api:{}", self.name)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Caller, ApiError> {
        Ok(Caller { name: "anonymous".to_string() })
    }
}
