//! Settings from environment variables, read the same way by every binary:
//! a variable set to an empty string counts as unset.
//!
//! Settings are read from an [`Env`], not from the process directly: `main`
//! takes the process's variables once ([`Env::from_process`]) and passes
//! them on; tests give their own ([`Env::from_pairs`]) and never change the
//! process environment, which other threads may be reading.
//!
//! Each service lists what it reads as [`Setting`]s, each with its default
//! and meaning: the one place a default is written. The parser takes the
//! default from there ([`Env::setting`]), `docker-compose.yml` and
//! `docs/configuration.md` are checked against the lists.

use std::{collections::HashMap, fmt, str::FromStr};

pub use secrecy::{ExposeSecret, SecretString};

/// One environment variable a service reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The variable's name.
    pub name: &'static str,
    /// The value that applies when the variable is unset or blank, written
    /// as the variable would be (`"3600"`), and parsed as if it had been
    /// set. `None` when unset means something [`Setting::doc`] says: the
    /// setting is required, or optional, or its default is someone else's
    /// (the OpenTelemetry SDK's).
    pub default: Option<&'static str>,
    /// What it means, in Markdown, as `docs/configuration.md` shows it.
    pub doc: &'static str,
}

/// The names of `settings`, in their order.
pub fn names(settings: &[Setting]) -> Vec<&'static str> {
    settings.iter().map(|setting| setting.name).collect()
}

/// A set of environment variables to read settings from.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The variables of this process, as they are now. A variable whose name
    /// or value is not Unicode is left out, so it counts as unset.
    pub fn from_process() -> Self {
        Self::from_pairs(
            std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?))),
        )
    }

    /// Exactly the given variables.
    ///
    /// ```
    /// let env = callchain_runtime::env::Env::from_pairs([("MAX_BODY_BYTES", "4096")]);
    /// assert_eq!(env.parse_or("MAX_BODY_BYTES", "a whole number", 16384).unwrap(), 4096);
    /// ```
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        }
    }

    /// The value of `name`, if it is set and not blank.
    pub fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).filter(|value| !value.trim().is_empty()).cloned()
    }

    /// The value of `name` as a secret, which never prints: for keys,
    /// passwords and URLs that carry a password.
    pub fn secret(&self, name: &str) -> Option<SecretString> {
        self.var(name).map(SecretString::from)
    }

    /// `setting` parsed as `T` (described as `expected` in the error), or
    /// its default, parsed the same way, when it is unset or blank.
    ///
    /// # Panics
    ///
    /// When `setting` has no default, or one that does not parse as `T`: a
    /// mistake in the service's list of settings, which its tests meet
    /// first (every service's tests read a configuration with nothing set).
    pub fn setting<T: FromStr>(&self, setting: &Setting, expected: &'static str) -> Result<T, InvalidVar> {
        let default = || {
            let text = setting
                .default
                .unwrap_or_else(|| panic!("{} has no default", setting.name));
            text.parse()
                .unwrap_or_else(|_| panic!("the default of {}, {text:?}, is not {expected}", setting.name))
        };
        match self.var(setting.name) {
            None => Ok(default()),
            Some(value) => value.trim().parse().map_err(|_| InvalidVar {
                name: setting.name.to_owned(),
                expected,
                value,
            }),
        }
    }

    /// `name` parsed as `T` (described as `expected` in the error), or
    /// `default` when it is unset or blank.
    pub fn parse_or<T: FromStr>(&self, name: &str, expected: &'static str, default: T) -> Result<T, InvalidVar> {
        match self.var(name) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|_| InvalidVar {
                name: name.to_owned(),
                expected,
                value,
            }),
        }
    }
}

/// Names only: values may be secrets.
impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

/// A variable that is set but does not parse as what it must be.
#[derive(Debug, thiserror::Error)]
#[error("{name} must be {expected}, not {value:?}")]
pub struct InvalidVar {
    pub name: String,
    pub expected: &'static str,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_variable_is_unset() {
        let env = Env::from_pairs([("EMPTY", ""), ("BLANK", "  "), ("SET", " x ")]);
        assert_eq!(env.var("EMPTY"), None);
        assert_eq!(env.var("BLANK"), None);
        assert_eq!(env.var("UNSET"), None);
        assert_eq!(env.var("SET").as_deref(), Some(" x "));
        assert_eq!(env.parse_or("BLANK", "a whole number", 7u32).unwrap(), 7);
    }

    #[test]
    fn a_number_is_parsed_around_spaces_or_defaults_when_unset() {
        let env = Env::from_pairs([("NUMBER", " 12 ")]);
        assert_eq!(env.parse_or("NUMBER", "a whole number", 7u32).unwrap(), 12);
        assert_eq!(env.parse_or("UNSET", "a whole number", 7u32).unwrap(), 7);
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_was_expected() {
        let env = Env::from_pairs([("NUMBER", "12x")]);
        let error = env.parse_or::<u32>("NUMBER", "a whole number", 7).unwrap_err();
        assert_eq!(error.to_string(), r#"NUMBER must be a whole number, not "12x""#);
    }

    const TIMEOUT: Setting = Setting {
        name: "TIMEOUT_MS",
        default: Some("250"),
        doc: "How long to wait.",
    };

    #[test]
    fn a_setting_parses_its_value_or_else_its_default() {
        assert_eq!(Env::default().setting::<u64>(&TIMEOUT, "a whole number").unwrap(), 250);
        let env = Env::from_pairs([("TIMEOUT_MS", " 40 ")]);
        assert_eq!(env.setting::<u64>(&TIMEOUT, "a whole number").unwrap(), 40);
        let env = Env::from_pairs([("TIMEOUT_MS", "soon")]);
        let error = env.setting::<u64>(&TIMEOUT, "a whole number").unwrap_err();
        assert_eq!(error.to_string(), r#"TIMEOUT_MS must be a whole number, not "soon""#);
    }

    #[test]
    #[should_panic(expected = "the default of TIMEOUT_MS, \"250\", is not a letter")]
    fn a_default_that_does_not_parse_is_a_mistake_in_the_list() {
        let _ = Env::default().setting::<char>(&TIMEOUT, "a letter");
    }

    #[test]
    fn debug_shows_names_but_never_values() {
        let env = Env::from_pairs([("JWT_SECRET", "hunter2")]);
        let debug = format!("{env:?}");
        assert!(debug.contains("JWT_SECRET"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
