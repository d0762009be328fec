//! Reads DAG files: YAML text to validated [`updraft_core::Dag`]s, with every
//! problem reported as `path:line:column: message`; walks the DAGs folder with
//! `.updraftignore` and parses files in parallel.
//!
//! This crate reads files and nothing else: it never touches the store, the
//! network or the environment. One broken file never stops the others.

pub mod diagnostic;
pub mod folder;
pub mod parse;
mod pods;
pub mod templates;
pub mod yaml;

pub use diagnostic::Diagnostic;
pub use folder::{DagFile, DagLoader, Folder, FolderError, LoadedDag, version_of};
pub use parse::{ParseOptions, parse_dag, parse_dag_with};
pub use templates::TaskTemplates;
