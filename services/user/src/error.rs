//! The service's one error type and its one mapping to gRPC status codes.

use callchain_domain::{Invalid, UserId};
use tonic::{Code, Status};

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
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => UserError::Unavailable(error),
            _ => UserError::Internal(error.into()),
        }
    }
}

impl From<UserError> for Status {
    fn from(error: UserError) -> Self {
        let code = match &error {
            UserError::Invalid(_) | UserError::IdempotencyKeyReused => Code::InvalidArgument,
            UserError::NotFound(_) => Code::NotFound,
            UserError::EmailTaken => Code::AlreadyExists,
            UserError::BadCredentials => Code::Unauthenticated,
            UserError::Unavailable(_) => Code::Unavailable,
            UserError::Internal(_) => Code::Internal,
        };
        match &error {
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
            (UserError::IdempotencyKeyReused, Code::InvalidArgument),
            (UserError::Unavailable(sqlx::Error::PoolTimedOut), Code::Unavailable),
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
    fn invalid_input_names_the_field() {
        let status = Status::from(UserError::Invalid(Invalid::new("email", "must not be empty")));
        assert_eq!(status.message(), "email: must not be empty");
    }
}
