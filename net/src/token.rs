//! Where the HTTP bearer token comes from, for servers and clients alike: every process of one
//! user on one host finds the same token with no setup, and a cluster mounts it from a Secret.
//!
//! The order: a token file named by `BEAMFLOW_TOKEN_FILE` (or the pipeline's
//! `[security] token_file`), the token itself in `BEAMFLOW_TOKEN`, else the default file
//! `$XDG_CONFIG_HOME/beamflow/token` (`~/.config/beamflow/token`), made on first use: 32 random
//! bytes in hex, readable by its owner only. A file is what `curl -H "Authorization: Bearer
//! $(cat ~/.config/beamflow/token)"` reads, and, unlike an environment variable, it does not
//! show in `ps e` or a pod's description.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The environment variable naming a token file.
pub const TOKEN_FILE_ENV: &str = "BEAMFLOW_TOKEN_FILE";

/// The environment variable holding the token itself.
pub const TOKEN_ENV: &str = "BEAMFLOW_TOKEN";

/// Random bytes in a made token: 256 bits, beyond any guessing.
const TOKEN_BYTES: usize = 32;

/// A bearer token. Its `Debug` does not show it, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from its text (surrounding white space is not part of it).
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable);
        }
        Ok(Self(text.to_owned()))
    }

    /// The token's text, for a client's `Authorization: Bearer` header.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header's value.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file named by `BEAMFLOW_TOKEN_FILE` or the configuration.
    File(PathBuf),
    /// `BEAMFLOW_TOKEN`.
    Env,
    /// The per-user default file; `created` when this process made it.
    Default {
        /// The file.
        path: PathBuf,
        /// Whether it was made just now.
        created: bool,
    },
}

impl TokenSource {
    /// The file holding the token, if it is in one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::File(path) | Self::Default { path, .. } => Some(path),
            Self::Env => None,
        }
    }
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Env => write!(f, "${TOKEN_ENV}"),
            Self::Default {
                path,
                created: true,
            } => write!(f, "{} (made now)", path.display()),
            Self::Default { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is empty.
    #[error("the token is empty")]
    Empty,
    /// The token has white space or control characters inside it.
    #[error("the token must be printable ASCII without spaces")]
    NotPrintable,
    /// A token file cannot be read or made.
    #[error("{path}: {error}")]
    File {
        /// The file.
        path: PathBuf,
        /// The failure.
        error: std::io::Error,
    },
    /// A token file holds no usable token.
    #[error("{path}: {error}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: Box<TokenError>,
    },
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set, so there is no default file.
    #[error(
        "no token: set {TOKEN_FILE_ENV} or {TOKEN_ENV} (neither XDG_CONFIG_HOME nor HOME is set for the default file)"
    )]
    NoHome,
    /// The system gave no random bytes for a new token.
    #[error("cannot make a random token: {0}")]
    Random(String),
}

/// The token, from the first source that has one: `BEAMFLOW_TOKEN_FILE`, then `configured` (the
/// pipeline's `[security] token_file`), then `BEAMFLOW_TOKEN`, then the default file, made
/// when missing.
pub fn resolve(configured: Option<&Path>) -> Result<(Token, TokenSource), TokenError> {
    let from_env = std::env::var_os(TOKEN_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(path) = from_env.or_else(|| configured.map(Path::to_path_buf)) {
        return Ok((read(&path)?, TokenSource::File(path)));
    }
    if let Some(text) = std::env::var_os(TOKEN_ENV).filter(|v| !v.is_empty()) {
        return Ok((Token::new(&text.to_string_lossy())?, TokenSource::Env));
    }
    let path = default_path().ok_or(TokenError::NoHome)?;
    let (token, created) = read_or_make(&path)?;
    Ok((token, TokenSource::Default { path, created }))
}

/// `$XDG_CONFIG_HOME/beamflow/token`, or `~/.config/beamflow/token`.
pub fn default_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })?;
    Some(config.join("beamflow").join("token"))
}

/// The token in the file at `path`.
pub fn read(path: &Path) -> Result<Token, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|error| TokenError::File {
        path: path.to_owned(),
        error,
    })?;
    Token::new(&text).map_err(|error| TokenError::Content {
        path: path.to_owned(),
        error: Box::new(error),
    })
}

/// The token at `path`, made there first if there is none; whether it was made.
///
/// The new file is written under a temporary name and linked into place, which fails if the
/// file exists: two processes starting at once both end up reading the one that won, never a
/// half-written file.
fn read_or_make(path: &Path) -> Result<(Token, bool), TokenError> {
    let failed = |error| TokenError::File {
        path: path.to_owned(),
        error,
    };
    match std::fs::metadata(path) {
        Ok(_) => return Ok((read(path)?, false)),
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(failed(error)),
        Err(_) => {}
    }
    let mut bytes = [0_u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|error| TokenError::Random(error.to_string()))?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let folder = path.parent().unwrap_or(Path::new("."));
    private_folder(folder).map_err(failed)?;
    let temporary = folder.join(format!(".token-{}", std::process::id()));
    let written = private_file(&temporary)
        .and_then(|mut file| file.write_all(format!("{text}\n").as_bytes()))
        .and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match written {
        Ok(()) => Ok((Token(text), true)),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok((read(path)?, false)),
        Err(error) => Err(failed(error)),
    }
}

#[cfg(unix)]
fn private_folder(folder: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
}

#[cfg(not(unix))]
fn private_folder(folder: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_is_made_once_private_and_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beamflow/token");
        let (made, created) = read_or_make(&path).unwrap();
        assert!(created);
        assert_eq!(made.as_str().len(), 2 * TOKEN_BYTES);
        assert!(made.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, created) = read_or_make(&path).unwrap();
        assert!(!created);
        assert_eq!(again, made, "the next process reads the same token");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["token"]);
    }

    #[test]
    fn a_token_file_is_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read(&path).unwrap().as_str(), "s3cret");
        std::fs::write(&path, " \n").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.ends_with("token: the token is empty"), "{error}");
        assert!(read(&dir.path().join("missing")).is_err());
        assert!(matches!(Token::new("a b"), Err(TokenError::NotPrintable)));
        assert_eq!(format!("{:?}", Token::new("s3cret").unwrap()), "Token(..)");
    }
}
