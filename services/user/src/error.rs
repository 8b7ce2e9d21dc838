//! The service's one error type and its one mapping to gRPC status codes.
//! Invalid input also names its field in a `BadRequest` error detail (the
//! standard `google.rpc` one), which callers read instead of the message text.

use callchain_domain::{Invalid, UserId};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("no user has id {0}")]
    NotFound(UserId),
    #[error("email is already registered")]
    EmailTaken,
    #[error("email or password is wrong")]
    BadCredentials,
    #[error("this idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("a request with this idempotency key is still in progress; retry once it has finished")]
    IdempotencyKeyInFlight,
    #[error("too many passwords are being checked at once; retry shortly")]
    HashingBusy,
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for UserError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() && db.constraint() == Some("users_email_key") => {
                UserError::EmailTaken
            }
            // Postgres restarting, out of connections, or a connection lost
            // mid-call: the caller may retry, so 503, not a 500 bug.
            _ if callchain_runtime::db::is_transient(&error) => UserError::Unavailable(error),
            _ => UserError::Internal(error.into()),
        }
    }
}

impl From<UserError> for Status {
    fn from(error: UserError) -> Self {
        let code = match &error {
            UserError::Invalid(_) => Code::InvalidArgument,
            UserError::IdempotencyKeyReused => Code::FailedPrecondition,
            UserError::IdempotencyKeyInFlight => Code::Aborted,
            UserError::NotFound(_) => Code::NotFound,
            UserError::EmailTaken => Code::AlreadyExists,
            UserError::BadCredentials => Code::Unauthenticated,
            UserError::Unavailable(_) | UserError::HashingBusy => Code::Unavailable,
            UserError::Internal(_) => Code::Internal,
        };
        match &error {
            // The field travels as a structured detail, so callers need not
            // read it out of the message text.
            UserError::Invalid(invalid) => Status::with_error_details(
                code,
                error.to_string(),
                ErrorDetails::with_bad_request_violation(invalid.field, &invalid.reason),
            ),
            // Failures of ours: logged once, here, with their cause chain and
            // (from the span) the trace id; the caller learns nothing internal.
            UserError::Unavailable(cause) => {
                tracing::warn!(error = cause as &dyn std::error::Error, "database unavailable");
                Status::new(code, error.to_string())
            }
            UserError::Internal(cause) => {
                tracing::error!(error = &**cause as &dyn std::error::Error, "internal error");
                Status::new(code, error.to_string())
            }
            _ => Status::new(code, error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_grpc_code() {
        let cases = [
            (UserError::Invalid(Invalid::new("email", "bad")), Code::InvalidArgument),
            (UserError::NotFound(UserId::new()), Code::NotFound),
            (UserError::EmailTaken, Code::AlreadyExists),
            (UserError::BadCredentials, Code::Unauthenticated),
            (UserError::IdempotencyKeyReused, Code::FailedPrecondition),
            (UserError::IdempotencyKeyInFlight, Code::Aborted),
            (UserError::Unavailable(sqlx::Error::PoolTimedOut), Code::Unavailable),
            (UserError::HashingBusy, Code::Unavailable),
            (UserError::Internal(anyhow::anyhow!("boom")), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let status = Status::from(UserError::Internal(anyhow::anyhow!("password column missing")));
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn invalid_input_names_the_field_in_a_bad_request_detail() {
        let status = Status::from(UserError::Invalid(Invalid::new("email", "must not be empty")));
        assert_eq!(status.message(), "email: must not be empty");
        let bad_request = status.get_details_bad_request().expect("a BadRequest detail");
        let [violation] = bad_request.field_violations.as_slice() else {
            panic!("one field violation: {bad_request:?}");
        };
        assert_eq!(violation.field, "email");
        assert_eq!(violation.description, "must not be empty");
    }

    #[test]
    fn other_errors_carry_no_field() {
        let status = Status::from(UserError::IdempotencyKeyReused);
        assert!(status.get_details_bad_request().is_none());
    }

    /// A database error with only a SQLSTATE: a fake of Postgres's answer,
    /// for the pure mapping.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn a_postgres_restart_is_unavailable_not_internal() {
        // 57P01: terminated by an administrator (a restart); 57P03: still
        // starting; 08006: the connection failed. 42P01 is a bug of ours.
        for (code, expected) in [
            ("57P01", Code::Unavailable),
            ("57P03", Code::Unavailable),
            ("08006", Code::Unavailable),
            ("42P01", Code::Internal),
        ] {
            let error = UserError::from(sqlx::Error::Database(Box::new(Coded(code))));
            assert_eq!(Status::from(error).code(), expected, "SQLSTATE {code}");
        }
    }
}
