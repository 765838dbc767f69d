//! A value in a setting, a flag or a policy file that is not one the
//! setting takes: the error of every parser of operator input, saying what
//! was wrong and what would do.

/// What was wrong with a value, and what would do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(reason: String) -> Self {
        Invalid(reason)
    }
}

impl From<&str> for Invalid {
    fn from(reason: &str) -> Self {
        Invalid(reason.to_owned())
    }
}
