//! `${VAR}` and `${VAR:-default}` in the pipeline file, replaced before parsing: a value is pasted
//! as what its place in the TOML needs (escaped inside a string, a single scalar where a bare value
//! stands), so a variable can only ever become a value, never new keys or tables.

use super::report::Report;
use super::{ConfigError, Location};

/// Where a `${VAR}` stands in TOML text, which decides how its value is pasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Context {
    /// Outside any string: the value must be one whole TOML scalar (a number, a boolean…).
    Bare,
    /// Inside a basic string (`"…"`, or `"""…"""` when multi-line): the value is escaped.
    Basic { multiline: bool },
    /// Inside a literal string (`'…'`, or three quotes when multi-line): the value must not
    /// close it.
    Literal { multiline: bool },
    /// In a comment: pasted as it is (it means nothing there).
    Comment,
}

impl Context {
    /// The context after the template text `text`, starting in `self`.
    fn after(mut self, text: &str) -> Context {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            match self {
                Context::Comment => return self,
                Context::Bare => match rest[0] {
                    b'#' => self = Context::Comment,
                    b'"' if rest.starts_with(b"\"\"\"") => {
                        self = Context::Basic { multiline: true };
                        i += 2;
                    }
                    b'"' => self = Context::Basic { multiline: false },
                    b'\'' if rest.starts_with(b"'''") => {
                        self = Context::Literal { multiline: true };
                        i += 2;
                    }
                    b'\'' => self = Context::Literal { multiline: false },
                    _ => {}
                },
                Context::Basic { multiline } => match rest[0] {
                    b'\\' => i += 1,
                    b'"' if multiline && rest.starts_with(b"\"\"\"") => {
                        self = Context::Bare;
                        i += 2;
                    }
                    b'"' if !multiline => self = Context::Bare,
                    _ => {}
                },
                Context::Literal { multiline } => match rest[0] {
                    b'\'' if multiline && rest.starts_with(b"'''") => {
                        self = Context::Bare;
                        i += 2;
                    }
                    b'\'' if !multiline => self = Context::Bare,
                    _ => {}
                },
            }
            i += 1;
        }
        self
    }

    /// At the end of a line: single-line strings and comments end there.
    fn at_line_end(self) -> Context {
        match self {
            Context::Basic { multiline: true } | Context::Literal { multiline: true } => self,
            _ => Context::Bare,
        }
    }

    /// `value` as it must be pasted here, or why it cannot be: interpolation only ever
    /// produces a value, never a key, a comment or the end of a string.
    fn paste(self, value: &str) -> Result<String, String> {
        match self {
            Context::Comment => Ok(value
                .chars()
                .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                .collect()),
            Context::Basic { .. } => {
                let mut escaped = String::with_capacity(value.len());
                for c in value.chars() {
                    match c {
                        '"' => escaped.push_str("\\\""),
                        '\\' => escaped.push_str("\\\\"),
                        c if c.is_control() => escaped.push_str(&format!("\\u{:04X}", c as u32)),
                        c => escaped.push(c),
                    }
                }
                Ok(escaped)
            }
            Context::Literal { multiline } => {
                // A literal string holds no escapes: a quote would end it, and TOML allows no
                // control character in it but a tab (and, multi-line, line breaks).
                let control = |c: char| c.is_control() && c != '\t' && (!multiline || c != '\n');
                let closes = match multiline {
                    true => value.contains("'''"),
                    false => value.contains('\''),
                } || value.chars().any(control);
                match closes {
                    true => Err(
                        "would end the literal string it is in (it holds a quote or a \
                                 control character); write it inside \"…\" there"
                            .into(),
                    ),
                    false => Ok(value.to_string()),
                }
            }
            Context::Bare => {
                let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"));
                let scalar = parsed
                    .ok()
                    .filter(|t| t.len() == 1)
                    .and_then(|t| t.get("v").cloned());
                match scalar {
                    Some(v) if !v.is_table() && !v.is_array() && !value.contains(['#', '\n']) => {
                        Ok(value.to_string())
                    }
                    _ => Err(format!(
                        "holds {value:?}, which is not one TOML value; outside quotes a \
                         variable must hold a number, a boolean or a date, or be written \
                         inside \"…\""
                    )),
                }
            }
        }
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` from `env`; `$$` is a literal `$`. A value is pasted
/// as a value only: escaped inside a `"…"` string, refused where it would end a `'…'` string,
/// and outside quotes only if it is one whole TOML scalar.
pub(super) fn substitute_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut Report,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut context = Context::Bare;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            context = context.after(&rest[..at]);
            let column = line.len() - rest.len() + at + 1;
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let location = Some(Location {
                line: index + 1,
                column,
            });
            let Some(end) = body.find('}') else {
                report.errors.push(ConfigError {
                    file: report.file.clone(),
                    location,
                    key: String::new(),
                    message: "`${` without its closing `}`".into(),
                });
                rest = "";
                break;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            let value = env(name).filter(|v| default.is_none() || !v.is_empty());
            let problem = match value.as_deref().or(default) {
                Some(value) => match context.paste(value) {
                    Ok(pasted) => {
                        out.push_str(&pasted);
                        None
                    }
                    Err(why) => Some(format!("environment variable `{name}` {why}")),
                },
                None => Some(format!(
                    "environment variable `{name}` is not set; set it or write `${{{name}:-default}}`"
                )),
            };
            if let Some(message) = problem {
                report.errors.push(ConfigError {
                    file: report.file.clone(),
                    location,
                    key: String::new(),
                    message,
                });
            }
            rest = &body[end + 1..];
        }
        context = context.after(rest).at_line_end();
        out.push_str(rest);
    }
    out
}
