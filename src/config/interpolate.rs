//! `${VAR}` and `${VAR:-default}` substitution, done on the raw text before
//! parsing so that line numbers in later errors still match the file.

use std::path::Path;

use super::ConfigError;

/// Replaces every `${NAME}` / `${NAME:-default}` with the value `lookup` gives;
/// `$$` stands for a literal `$`. Whole-line comments are left as they are, so a
/// commented-out `# security_token: ${STS}` needs no variable.
pub fn interpolate(
    text: &str,
    path: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            interpolate_line(line, path, index + 1, &lookup, &mut out)?;
        }
    }
    Ok(out)
}

fn interpolate_line(
    line_text: &str,
    path: &Path,
    line: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), ConfigError> {
    let mut rest = line_text;
    while let Some(pos) = rest.find('$') {
        let (before, after) = rest.split_at(pos);
        out.push_str(before);
        if let Some(tail) = after.strip_prefix("$$") {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(malformed(path, line, "`${` without a closing `}`"));
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(malformed(
                path,
                line,
                "a variable name is letters, digits and `_`",
            ));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(ConfigError::MissingVariable {
                    path: path.to_path_buf(),
                    line,
                    name: name.to_string(),
                })
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(())
}

fn malformed(path: &Path, line: usize, problem: &'static str) -> ConfigError {
    ConfigError::MalformedVariable {
        path: path.to_path_buf(),
        line,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, ConfigError> {
        interpolate(text, Path::new("t.yaml"), env)
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        assert_eq!(run("a: ${HOST}:5671").unwrap(), "a: example.com:5671");
        assert_eq!(run("a: ${NOPE:-x-y}").unwrap(), "a: x-y");
        assert_eq!(run("a: ${NOPE:-}").unwrap(), "a: ");
        assert_eq!(run("a: ${EMPTY:-d}").unwrap(), "a: ");
        assert_eq!(run("a: $$HOST $5").unwrap(), "a: $HOST $5");
        assert_eq!(run("  # t: ${NOPE}\nb: 1").unwrap(), "  # t: ${NOPE}\nb: 1");
    }

    #[test]
    fn missing_variable_names_it_and_its_line() {
        let err = run("a: 1\nb: 2\nc: ${SECRET_KEY}\n").unwrap_err();
        match &err {
            ConfigError::MissingVariable { line, name, .. } => {
                assert_eq!(*line, 3);
                assert_eq!(name, "SECRET_KEY");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("t.yaml:3: "), "{err}");
    }

    #[test]
    fn unterminated_reference_is_an_error() {
        let err = run("a: 1\nb: ${HOST\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::MalformedVariable { line: 2, .. }),
            "{err:?}"
        );
        let err = run("b: ${HO-ST}\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::MalformedVariable { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_secret_holding_dollar_brace_is_not_echoed() {
        let err = run("password: s3cr3t${tail-of-the-secret\n").unwrap_err();
        let text = err.to_string();
        assert!(
            !text.contains("s3cr3t") && !text.contains("tail-of"),
            "{text}"
        );
        let err = run("password: ab${not a name}cd\n").unwrap_err();
        assert!(!err.to_string().contains("not a name"), "{err}");
    }
}
