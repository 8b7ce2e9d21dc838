//! What breaks a call chain: the kinds of gap the rules of [`crate::traces`]
//! find, and one gap as they report it. The tree and its renderings carry
//! gaps too, so they live apart from the rules.

use serde::Serialize;

/// Which rule a gap breaks; see [`crate::traces`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    MissingParent,
    ExtraRoot,
    NoConsumer,
    NoServer,
    OtherTrace,
    ParentLoop,
}

/// One gap of a trace: which rule, the span it is found at, and a sentence
/// that names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub kind: GapKind,
    pub span_id: String,
    pub message: String,
}
