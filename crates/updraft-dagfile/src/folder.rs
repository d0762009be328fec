//! The DAGs folder: discovery (recursive, `.updraftignore`), parallel parsing, a
//! cache keyed by file metadata, and the cross-file check for duplicate DAG ids.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use updraft_core::Dag;
use updraft_core::plan::DagVersion;

use crate::diagnostic::Diagnostic;
use crate::parse::{ParseOptions, parse_dag_with};
use crate::templates::{self, TaskTemplates, TemplateFile};
use crate::yaml::{LineIndex, Span};

pub const IGNORE_FILE: &str = ".updraftignore";

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("DAGs folder `{0}` does not exist")]
    Missing(String),
    #[error("DAGs folder `{0}` is not a folder")]
    NotAFolder(String),
    #[error("cannot read DAGs folder `{path}`")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One DAG file and what parsing it gave.
#[derive(Debug, Clone)]
pub struct DagFile {
    pub path: PathBuf,
    /// Relative to the DAGs folder, `/`-separated: the DAG's `fileloc`.
    pub fileloc: String,
    /// How messages name the file (relative to the working folder when inside it).
    pub display_path: String,
    pub dag: Option<LoadedDag>,
    pub diagnostics: Vec<Diagnostic>,
    /// Parse-level results before cross-file checks, kept for the cache.
    parsed: Arc<ParsedFile>,
}

#[derive(Debug, Clone)]
pub struct LoadedDag {
    pub dag: Arc<Dag>,
    pub version: DagVersion,
    /// The file's text, as read.
    pub source: Arc<str>,
}

#[derive(Debug)]
struct ParsedFile {
    dag: Option<LoadedDag>,
    diagnostics: Vec<Diagnostic>,
    /// Line and column of the `dag:` value, for duplicate-id reports.
    dag_id_at: Option<(usize, usize)>,
    stamp: Option<(SystemTime, u64)>,
    /// The task templates it was parsed with: a change to any parses it again.
    templates: [u8; 32],
}

/// Every DAG file of a folder, after cross-file checks.
#[derive(Debug, Clone, Default)]
pub struct Folder {
    pub files: Vec<DagFile>,
    /// Problems not tied to one DAG file (an unreadable sub-folder, a task
    /// template's file).
    pub folder_diagnostics: Vec<Diagnostic>,
    /// The task templates under `templates/`.
    pub templates: TaskTemplates,
}

impl Folder {
    pub fn dags(&self) -> impl Iterator<Item = (&LoadedDag, &DagFile)> {
        self.files.iter().filter_map(|file| file.dag.as_ref().map(|dag| (dag, file)))
    }

    pub fn find(&self, dag_id: &str) -> Option<(&LoadedDag, &DagFile)> {
        self.dags().find(|(dag, _)| dag.dag.dag_id().as_str() == dag_id)
    }

    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.folder_diagnostics.iter().chain(self.files.iter().flat_map(|file| &file.diagnostics))
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics().next().is_some()
    }
}

/// Loads a DAGs folder, re-parsing only files whose size or modification time
/// changed since the last load.
pub struct DagLoader {
    root: PathBuf,
    display_base: Option<PathBuf>,
    cache: HashMap<PathBuf, Arc<ParsedFile>>,
    notifiers: Option<BTreeSet<String>>,
}

impl DagLoader {
    /// `display_base`: the folder paths in messages are relative to, when inside it.
    pub fn new(root: impl Into<PathBuf>, display_base: Option<PathBuf>) -> DagLoader {
        DagLoader { root: root.into(), display_base, cache: HashMap::new(), notifiers: None }
    }

    /// Checks `alerts` against the notifiers configured (else any name passes).
    pub fn with_notifiers(mut self, notifiers: BTreeSet<String>) -> DagLoader {
        self.notifiers = Some(notifiers);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn load(&mut self) -> Result<Folder, FolderError> {
        let root_display = self.display(&self.root);
        match std::fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(FolderError::NotAFolder(root_display)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(FolderError::Missing(root_display));
            }
            Err(source) => {
                return Err(FolderError::Unreadable { path: root_display, source });
            }
        }
        let (paths, template_paths, mut folder_diagnostics) = self.discover();
        let (templates, template_problems) = self.read_templates(&template_paths);
        folder_diagnostics.extend(template_problems);
        let work: Vec<(PathBuf, String, String, Option<Arc<ParsedFile>>)> = paths
            .into_iter()
            .map(|path| {
                let fileloc = path
                    .strip_prefix(&self.root)
                    .unwrap_or(&path)
                    .components()
                    .map(|part| part.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                let display = self.display(&path);
                let cached = self.cache.get(&path).cloned();
                (path, fileloc, display, cached)
            })
            .collect();
        let parsed = parse_all(&work, &templates, self.notifiers.as_ref());
        self.cache = work.iter().zip(&parsed).map(|((path, ..), parsed)| (path.clone(), parsed.clone())).collect();
        let files = work
            .into_iter()
            .zip(parsed)
            .map(|((path, fileloc, display_path, _), parsed)| DagFile {
                path,
                fileloc,
                display_path,
                dag: parsed.dag.clone(),
                diagnostics: parsed.diagnostics.clone(),
                parsed,
            })
            .collect();
        let mut folder = Folder { files, folder_diagnostics, templates };
        report_duplicates(&mut folder);
        Ok(folder)
    }

    fn display(&self, path: &Path) -> String {
        let shown = match &self.display_base {
            Some(base) if path.is_absolute() => path.strip_prefix(base).unwrap_or(path),
            _ => path,
        };
        let text = shown.to_string_lossy();
        if text.is_empty() { ".".to_string() } else { text.into_owned() }
    }

    /// Task templates are read on every load: they are few and small, and a change
    /// to one must reach every DAG using it.
    fn read_templates(&self, paths: &[PathBuf]) -> (TaskTemplates, Vec<Diagnostic>) {
        let mut files = Vec::with_capacity(paths.len());
        let mut problems = Vec::new();
        for path in paths {
            let display_path = self.display(path);
            let name = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
            match std::fs::read_to_string(path) {
                Ok(text) => files.push(TemplateFile { name, display_path, text }),
                Err(error) => problems.push(Diagnostic {
                    path: display_path,
                    line: 1,
                    column: 1,
                    message: format!("cannot read task template: {error}"),
                }),
            }
        }
        let (templates, mut more) = TaskTemplates::parse(&files);
        problems.append(&mut more);
        (templates, problems)
    }

    /// DAG files, and task template files (under `templates/`).
    fn discover(&self) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<Diagnostic>) {
        let templates_folder = self.root.join(templates::FOLDER);
        let mut templates = Vec::new();
        let mut paths = Vec::new();
        let mut diagnostics = Vec::new();
        let walker = ignore::WalkBuilder::new(&self.root)
            .standard_filters(false)
            .hidden(true)
            .parents(false)
            .follow_links(true)
            .add_custom_ignore_filename(IGNORE_FILE)
            .sort_by_file_name(|a, b| a.cmp(b))
            .build();
        for entry in walker {
            match entry {
                Ok(entry) => {
                    let is_file = entry.file_type().is_some_and(|kind| kind.is_file() || kind.is_symlink());
                    let is_yaml = entry.path().extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
                    if is_file && is_yaml {
                        if entry.path().starts_with(&templates_folder) {
                            templates.push(entry.into_path());
                        } else {
                            paths.push(entry.into_path());
                        }
                    }
                }
                Err(error) => {
                    let path =
                        walk_error_path(&error).map_or_else(|| self.display(&self.root), |path| self.display(path));
                    diagnostics.push(Diagnostic { path, line: 1, column: 1, message: format!("cannot read: {error}") });
                }
            }
        }
        (paths, templates, diagnostics)
    }
}

fn walk_error_path(error: &ignore::Error) -> Option<&Path> {
    match error {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => walk_error_path(err),
        _ => None,
    }
}

/// Parses the files on all cores; a file whose size and modification time match
/// its cached parse is not read again.
fn parse_all(
    work: &[(PathBuf, String, String, Option<Arc<ParsedFile>>)],
    templates: &TaskTemplates,
    notifiers: Option<&BTreeSet<String>>,
) -> Vec<Arc<ParsedFile>> {
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(work.len().div_ceil(8)).max(1);
    let mut results: Vec<Option<Arc<ParsedFile>>> = vec![None; work.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let idx = next.fetch_add(1, Ordering::Relaxed);
                        let Some((path, fileloc, display, cached)) = work.get(idx) else {
                            break;
                        };
                        done.push((idx, parse_file(path, fileloc, display, cached.as_ref(), templates, notifiers)));
                    }
                    done
                })
            })
            .collect();
        for handle in handles {
            for (idx, parsed) in handle.join().expect("parsing never panics") {
                results[idx] = Some(parsed);
            }
        }
    });
    results.into_iter().map(|parsed| parsed.expect("every file was parsed")).collect()
}

fn parse_file(
    path: &Path,
    fileloc: &str,
    display: &str,
    cached: Option<&Arc<ParsedFile>>,
    templates: &TaskTemplates,
    notifiers: Option<&BTreeSet<String>>,
) -> Arc<ParsedFile> {
    let stamp = std::fs::metadata(path).ok().and_then(|meta| Some((meta.modified().ok()?, meta.len())));
    if let (Some(cached), Some(stamp)) = (cached, stamp)
        && cached.stamp == Some(stamp)
        && cached.templates == templates.fingerprint
    {
        return cached.clone();
    }
    let failed = |message: String| {
        Arc::new(ParsedFile {
            dag: None,
            diagnostics: vec![Diagnostic { path: display.to_string(), line: 1, column: 1, message }],
            dag_id_at: None,
            stamp,
            templates: templates.fingerprint,
        })
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) => return failed(format!("cannot read file: {error}")),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return failed("file is not valid UTF-8".to_string());
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let parsed = parse_dag_with(text, fileloc, ParseOptions { templates: Some(templates), notifiers });
    let index = LineIndex::new(text);
    let locate = |span: Span| index.line_col(span.start);
    let mut spans = parsed.diagnostics.clone();
    spans.sort_by_key(|diagnostic| diagnostic.span.start);
    let diagnostics = spans
        .iter()
        .map(|diagnostic| {
            let (line, column) = locate(diagnostic.span);
            Diagnostic { path: display.to_string(), line, column, message: diagnostic.message.clone() }
        })
        .collect();
    let dag = parsed.dag.map(|dag| {
        let version = version_of(&dag);
        LoadedDag { dag: Arc::new(dag), version, source: Arc::from(text) }
    });
    Arc::new(ParsedFile {
        dag,
        diagnostics,
        dag_id_at: parsed.dag_id_span.map(locate),
        stamp,
        templates: templates.fingerprint,
    })
}

/// The DAG's version: a hash of its canonical definition, so formatting and
/// comments do not make a new version but any change in meaning does.
pub fn version_of(dag: &Dag) -> DagVersion {
    let digest = Sha256::digest(dag.to_json().as_bytes());
    let hex: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
    DagVersion(hex)
}

/// Two files declaring one DAG id is an error on both; neither DAG loads.
fn report_duplicates(folder: &mut Folder) {
    let mut by_id: HashMap<String, Vec<usize>> = HashMap::new();
    for (idx, file) in folder.files.iter().enumerate() {
        if let Some(dag) = &file.dag {
            by_id.entry(dag.dag.dag_id().to_string()).or_default().push(idx);
        }
    }
    for (dag_id, idxs) in by_id.into_iter().filter(|(_, idxs)| idxs.len() > 1) {
        for &idx in &idxs {
            let others: Vec<String> = idxs
                .iter()
                .filter(|&&other| other != idx)
                .map(|&other| format!("`{}`", folder.files[other].display_path))
                .collect();
            let file = &mut folder.files[idx];
            let (line, column) = file.parsed.dag_id_at.unwrap_or((1, 1));
            file.dag = None;
            file.diagnostics.push(Diagnostic {
                path: file.display_path.clone(),
                line,
                column,
                message: format!("DAG id `{dag_id}` is also declared in {}", others.join(", ")),
            });
        }
    }
}
