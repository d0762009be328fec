//! Test helpers (filled in with the CLI tests).
