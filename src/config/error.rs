//! Errors a configuration file can produce, always naming where they happened.

use std::path::PathBuf;

/// Why a configuration could not be loaded; every variant names the file and,
/// where the YAML parser knows it, the line, column and key path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{path}: cannot read configuration: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `${VAR}` was used without a default and `VAR` is not set.
    #[error("{path}:{line}: environment variable `{name}` is not set and has no default (write ${{{name}:-default}} to give one)")]
    MissingVariable {
        path: PathBuf,
        line: usize,
        name: String,
    },
    /// `${` without a closing brace or with an invalid name. The line's text
    /// is not repeated: it may be a secret that happens to contain `${`.
    #[error(
        "{path}:{line}: malformed variable reference: {problem} (write $${{ for a literal `${{`)"
    )]
    MalformedVariable {
        path: PathBuf,
        line: usize,
        problem: &'static str,
    },
    /// The YAML was malformed or a value broke a rule (unknown key, out of range,
    /// bad duration or URL, reference to a missing sink).
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A rule that spans several keys and has no single position.
    #[error("{path}: {message}")]
    Inconsistent { path: PathBuf, message: String },
}

impl ConfigError {
    pub(crate) fn from_yaml(path: &std::path::Path, err: yaml_serde::Error) -> Self {
        let (line, column) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        // The parser appends " at line L column C"; we print the position up front instead.
        let mut message = err.to_string();
        if let Some(idx) = message.rfind(" at line ") {
            message.truncate(idx);
        }
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    }
}
