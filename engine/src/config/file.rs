//! Reading a configuration: one TOML file of `[section]`s, every key
//! optional, then `SEQSYNC_<SECTION>_<KEY>` environment variables on top.
//!
//! Written once for any configuration made of sections, so the engine's
//! ([`super::EngineConfig`]) and a host's that adds sections of its own
//! (the server's `HostConfig`) load, override and report errors the same
//! way. Which keys exist is never listed by hand: a key exists when the
//! configuration's types have it (`deny_unknown_fields` on every section),
//! and an environment variable may name exactly the keys the current
//! configuration serializes.
//!
//! Unknown keys are errors rather than silently ignored: a typo such as
//! `max_delta_byte` would otherwise leave a limit at its default without
//! anyone noticing. An environment override is applied to the TOML tree of
//! the current configuration and the tree is read again, so a bad value
//! from the environment fails with the same checks, and the error names the
//! variable.

use std::path::Path;
use std::sync::Arc;

use crate::error::ConfigError;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "SEQSYNC_";

/// A configuration read from one TOML file of sections: the engine's
/// [`super::EngineConfig`], or a host's that holds it and adds its own.
///
/// Implementors say how the configuration maps to a TOML table and back and
/// how it checks itself; [`load`], [`from_toml_str`] and [`with_env`] do
/// the rest the same way for all.
pub trait ConfigFile: Sized {
    /// Every key with its current value, as the file spells it.
    ///
    /// Errors: a value TOML cannot hold (none of the shipped sections has
    /// one).
    fn to_table(&self) -> Result<toml::Table, String>;

    /// Reads a table. A key no section has, or a value of the wrong type,
    /// is an error whose message names the key (between backticks, as
    /// serde names it).
    fn from_table(table: toml::Table) -> Result<Self, String>;

    /// Checks what the types cannot express (ranges, keys that must agree),
    /// each section its own keys. Errors name the key as `section.key`.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Reads `file` if given (else starts from `C::default()`), then applies
/// the process's `SEQSYNC_*` environment variables, then validates.
///
/// Blocking (reads a file). Errors: [`ConfigError`] naming the file, key or
/// variable at fault.
pub fn load<C: ConfigFile + Default>(file: Option<&Path>) -> Result<C, ConfigError> {
    let base = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.to_owned(),
                source: Arc::new(e),
            })?;
            from_toml_str(&text, &path.display().to_string())?
        }
        None => C::default(),
    };
    with_env(base, std::env::vars())
}

/// Parses and validates a TOML document. `origin` names it in errors, with
/// the line of the key at fault when it can be found.
pub fn from_toml_str<C: ConfigFile>(text: &str, origin: &str) -> Result<C, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        message: e.message().to_owned() + &span_hint(text, e.span()),
    })?;
    let config = C::from_table(table).map_err(|message| ConfigError::Parse {
        origin: origin.to_owned(),
        message: message.clone() + &key_line_hint(text, &message),
    })?;
    config.validate()?;
    Ok(config)
}

/// Applies every `SEQSYNC_<SECTION>_<KEY>` variable of `vars` (others are
/// ignored), in name order, and validates the result. A variable that names
/// no key, or a value of the wrong type, is an error naming the variable.
pub fn with_env<C: ConfigFile>(
    config: C,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<C, ConfigError> {
    let mut config = config;
    let mut overrides: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    overrides.sort();
    for (var, raw) in overrides {
        config = with_override(&config, &var, &raw)?;
    }
    config.validate()?;
    Ok(config)
}

fn with_override<C: ConfigFile>(config: &C, var: &str, raw: &str) -> Result<C, ConfigError> {
    let unknown = || ConfigError::UnknownEnv {
        var: var.to_owned(),
    };
    let parse_error = |message: String| ConfigError::Parse {
        origin: var.to_owned(),
        message,
    };
    let mut tree = config.to_table().map_err(parse_error)?;
    let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
    let (section, key) = rest.split_once('_').ok_or_else(unknown)?;
    let section = tree
        .get_mut(section)
        .and_then(|s| s.as_table_mut())
        .ok_or_else(unknown)?;
    let current = section.get(key).ok_or_else(unknown)?;
    // Strings stay verbatim (a path may look like a number); everything
    // else is read as a TOML value so `1024` is an integer.
    let value = if current.is_str() {
        toml::Value::String(raw.to_owned())
    } else {
        let parsed: toml::Table = toml::from_str(&format!("v = {raw}"))
            .map_err(|_| parse_error(format!("{raw:?} is not a valid {}", current.type_str())))?;
        parsed.get("v").cloned().ok_or_else(unknown)?
    };
    section.insert(key.to_owned(), value);
    C::from_table(tree).map_err(parse_error)
}

/// Reads one section (or a whole configuration) from a table, with the
/// parser's message on failure. For [`ConfigFile::from_table`]
/// implementations.
pub fn table_into<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())
}

/// A section (or a whole configuration) as a table. For
/// [`ConfigFile::to_table`] implementations.
pub fn table_of<T: serde::Serialize>(value: &T) -> Result<toml::Table, String> {
    toml::Table::try_from(value).map_err(|e| e.to_string())
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) if span.start <= text.len() => {
            let line = text[..span.start].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        _ => String::new(),
    }
}

/// ` (line N)` for the first line of `text` that sets the key a parser
/// message names between backticks (`unknown field `max_delta_byte``), or
/// nothing. A table read from a tree has lost its spans; this finds the
/// line again.
fn key_line_hint(text: &str, message: &str) -> String {
    let Some(key) = message.split('`').nth(1).filter(|k| !k.is_empty()) else {
        return String::new();
    };
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or_else(String::new, |i| format!(" (line {})", i + 1))
}

/// A config value with its full key name (`limits.max_update_bytes`), the
/// name taken from the field itself so the two cannot drift apart: a
/// renamed field renames its key in every error.
///
/// ```
/// # struct LimitsConfig { max_update_bytes: u64 }
/// # let limits = LimitsConfig { max_update_bytes: 5 };
/// let (key, value) = seqsync_engine::config_key!("limits", limits.max_update_bytes);
/// assert_eq!((key, value), ("limits.max_update_bytes", 5));
/// ```
#[macro_export]
macro_rules! config_key {
    ($section:literal, $owner:ident . $field:ident) => {
        (concat!($section, ".", stringify!($field)), $owner.$field)
    };
}

/// Checks that a key's value is within `min..=max`; the error names the key
/// and the range.
pub fn check_range(
    (key, value): (&'static str, u64),
    min: u64,
    max: u64,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::Invalid {
            key,
            message: format!("must be at least {min}"),
        });
    }
    if value > max {
        return Err(ConfigError::Invalid {
            key,
            message: format!("{value} is above the maximum of {max}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parser message names the key; the hint finds the line that set it.
    #[test]
    fn the_line_of_a_named_key_is_found_again() {
        let text = "[limits]\n\n  max_update_byte = 5\n";
        assert_eq!(
            key_line_hint(text, "unknown field `max_update_byte`, expected ..."),
            " (line 3)"
        );
        assert_eq!(key_line_hint(text, "no key named here"), "");
        assert_eq!(key_line_hint(text, "unknown field `other`"), "");
    }
}
