//! Settings from environment variables, read the same way by every binary:
//! a variable set to an empty string counts as unset.

use std::str::FromStr;

/// The value of `name`, if it is set and not blank.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// A variable that must parse as `T`, or `default` when unset.
#[derive(Debug, thiserror::Error)]
#[error("{name} must be {expected}, not {value:?}")]
pub struct InvalidVar {
    pub name: String,
    pub expected: &'static str,
    pub value: String,
}

/// `name` parsed as `T` (described as `expected` in the error), or `default`.
pub fn parse_or<T: FromStr>(name: &str, expected: &'static str, default: T) -> Result<T, InvalidVar> {
    match var(name) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|_| InvalidVar {
            name: name.to_owned(),
            expected,
            value,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_is_unset_and_a_bad_number_names_the_variable() {
        // SAFETY: unit tests of this module are the only readers of these names.
        unsafe {
            std::env::set_var("CALLCHAIN_TEST_BLANK", "  ");
            std::env::set_var("CALLCHAIN_TEST_NUMBER", "12x");
        }
        assert_eq!(var("CALLCHAIN_TEST_BLANK"), None);
        assert_eq!(parse_or("CALLCHAIN_TEST_UNSET", "a whole number", 7u32).unwrap(), 7);
        let error = parse_or::<u32>("CALLCHAIN_TEST_NUMBER", "a whole number", 7).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"CALLCHAIN_TEST_NUMBER must be a whole number, not "12x""#
        );
    }
}
