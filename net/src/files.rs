//! Where files named from outside may be written: under configured roots only.
//!
//! `dump_prefix` arrives over HTTP and is pasted into a path (`{prefix}{ingester}-{uuid}.cbors`
//! and the mapping and parameters beside it). Unchecked, it lets whoever may set a parameter
//! write into any folder the process can, dot-files included. So a prefix is refused when its
//! text has control characters or a `..` component, a hidden name (one starting with `.`) in
//! the file name or in a folder below its root, or
//! when its folder, with symbolic links resolved, is not under one of the [`Roots`]. The
//! controller checks when the parameter is set (a 422 naming the roots), and every writer
//! checks again before it opens a file, since a component may run with other roots or behind a
//! controller of another version.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// The folders files named from outside may be written under, with symbolic links resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots(Vec<PathBuf>);

/// Why a name given from outside cannot be a file of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfineError {
    /// The name has a control character (a newline, an escape, a NUL).
    #[error("{0:?} has a control character")]
    Control(String),
    /// The name climbs out of its folder.
    #[error("{0:?} has a `..` component")]
    Parent(String),
    /// The name has a hidden component.
    #[error("{prefix:?} has the hidden name {name:?}")]
    Hidden {
        /// The whole name.
        prefix: String,
        /// The component starting with a dot.
        name: String,
    },
    /// The folder does not exist (or cannot be resolved).
    #[error("{folder}: {error}")]
    Folder {
        /// The folder the file would be in.
        folder: PathBuf,
        /// Why it cannot be resolved.
        error: String,
    },
    /// The folder resolves outside every root.
    #[error("{folder} is not under {roots}")]
    Outside {
        /// The folder, resolved.
        folder: PathBuf,
        /// The roots.
        roots: Roots,
    },
}

impl Roots {
    /// These folders; each is resolved (symbolic links, `..`) now, so a check compares like
    /// with like. A folder that cannot be resolved is kept as given, made absolute.
    pub fn new(folders: impl IntoIterator<Item = PathBuf>) -> Self {
        Self(
            folders
                .into_iter()
                .map(|folder| {
                    folder
                        .canonicalize()
                        .or_else(|_| std::path::absolute(&folder))
                        .unwrap_or(folder)
                })
                .collect(),
        )
    }

    /// The system's temporary folder and the working directory, unless that is `/` (a
    /// container's usual one), which would confine nothing.
    pub fn default_roots() -> Self {
        let working = std::env::current_dir()
            .ok()
            .filter(|folder| folder.parent().is_some());
        Self::new([Some(std::env::temp_dir()), working].into_iter().flatten())
    }

    /// The roots.
    pub fn folders(&self) -> &[PathBuf] {
        &self.0
    }

    /// The folder a file named `{prefix}...` would be written in, resolved, if `prefix` may
    /// name files: a prefix ending in `/` is a folder, anything else a folder and the start of
    /// a file name. Relative prefixes are taken from the working directory.
    pub fn confine(&self, prefix: &str) -> Result<PathBuf, ConfineError> {
        self.check(prefix, true)
    }

    /// What a process that does not write the files can check of `prefix`: its text, and its
    /// folder as [`Roots::confine`] does where that folder exists here; where it does not (the
    /// controller of a cluster, whose ingesters mount the recordings' volume), only that the
    /// folder, made absolute, is under a root. The writer checks in full before it opens a file.
    pub fn admits(&self, prefix: &str) -> Result<(), ConfineError> {
        self.check(prefix, false).map(|_| ())
    }

    fn check(&self, prefix: &str, must_exist: bool) -> Result<PathBuf, ConfineError> {
        if prefix.chars().any(char::is_control) {
            return Err(ConfineError::Control(prefix.to_owned()));
        }
        if Path::new(prefix)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            return Err(ConfineError::Parent(prefix.to_owned()));
        }
        let hidden = |name: &std::ffi::OsStr| {
            let name = name.to_string_lossy();
            name.starts_with('.').then(|| ConfineError::Hidden {
                prefix: prefix.to_owned(),
                name: name.into_owned(),
            })
        };
        let (folder, stem) = if prefix.ends_with('/') || prefix.is_empty() {
            (Path::new(prefix), None)
        } else {
            let path = Path::new(prefix);
            (path.parent().unwrap_or(Path::new("")), path.file_name())
        };
        if let Some(error) = stem.and_then(hidden) {
            return Err(error);
        }
        let folder = if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        };
        let resolved = match folder.canonicalize() {
            Ok(resolved) => resolved,
            Err(_) if !must_exist => {
                std::path::absolute(folder).map_err(|error| ConfineError::Folder {
                    folder: folder.to_owned(),
                    error: error.to_string(),
                })?
            }
            Err(error) => {
                return Err(ConfineError::Folder {
                    folder: folder.to_owned(),
                    error: error.to_string(),
                });
            }
        };
        if must_exist && !resolved.is_dir() {
            return Err(ConfineError::Folder {
                folder: folder.to_owned(),
                error: "not a folder".to_owned(),
            });
        }
        let Some(below) = self
            .0
            .iter()
            .find_map(|root| resolved.strip_prefix(root).ok())
        else {
            return Err(ConfineError::Outside {
                folder: resolved,
                roots: self.clone(),
            });
        };
        // Hidden names below the root, not in it: a root may itself be hidden (a temporary
        // folder's `.tmpXXXX`), and the operator chose it.
        if let Some(error) = below.iter().find_map(hidden) {
            return Err(error);
        }
        Ok(resolved)
    }
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no root (set [security] roots)");
        }
        let names: Vec<String> = self.0.iter().map(|r| r.display().to_string()).collect();
        write!(f, "the roots {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_confined_to_the_roots() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let roots = Roots::new([root.path().to_owned()]);
        let inside = root.path().canonicalize().unwrap();
        std::fs::create_dir(inside.join("runs")).unwrap();
        std::fs::create_dir(inside.join(".cache")).unwrap();
        let text = |p: &Path| p.display().to_string();

        assert_eq!(
            roots.confine(&format!("{}/", text(&inside))),
            Ok(inside.clone())
        );
        assert_eq!(
            roots.confine(&format!("{}/runs/scan7-", text(&inside))),
            Ok(inside.join("runs"))
        );
        let refused = |prefix: String| roots.confine(&prefix).unwrap_err();
        assert!(matches!(
            refused(format!("{}/runs/../../", text(&inside))),
            ConfineError::Parent(_)
        ));
        assert!(matches!(
            refused(format!("{}/.hidden-", text(&inside))),
            ConfineError::Hidden { .. }
        ));
        assert!(matches!(
            refused(format!("{}/.cache/x-", text(&inside))),
            ConfineError::Hidden { .. }
        ));
        assert!(matches!(
            refused(format!("{}/runs/\nx", text(&inside))),
            ConfineError::Control(_)
        ));
        assert!(matches!(
            refused(format!("{}/missing/", text(&inside))),
            ConfineError::Folder { .. }
        ));
        // Where the folder is not here (another host's volume), what can be checked is.
        assert_eq!(roots.admits(&format!("{}/missing/", text(&inside))), Ok(()));
        assert!(
            roots
                .admits(&format!("{}/.missing/", text(&inside)))
                .is_err()
        );
        assert!(roots.admits("/elsewhere/missing/").is_err());
        let error = refused(format!("{}/", text(outside.path())));
        assert!(matches!(error, ConfineError::Outside { .. }), "{error}");
        assert!(
            error
                .to_string()
                .ends_with(&format!("is not under the roots {}", text(&inside))),
            "{error}"
        );
        #[cfg(unix)]
        {
            // A link inside the root to a folder outside it is outside.
            std::os::unix::fs::symlink(outside.path(), inside.join("link")).unwrap();
            assert!(matches!(
                refused(format!("{}/link/", text(&inside))),
                ConfineError::Outside { .. }
            ));
        }
    }
}
