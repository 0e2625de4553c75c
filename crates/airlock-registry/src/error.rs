//! The distribution spec's errors: a status, a code and a JSON body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::storage::StorageError;

/// An error answer; `IntoResponse` writes the spec's `{"errors":[{code,message,detail}]}`.
#[derive(Debug)]
pub struct RegistryError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl RegistryError {
    /// An error with the spec's `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RegistryError { status, code, message: message.into() }
    }

    pub(crate) fn name_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", message)
    }

    pub(crate) fn digest_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }

    /// Whether it says the manifest or the repository is not there (what a mirror fills in).
    pub(crate) fn is_unknown(&self) -> bool {
        matches!(self.code, "MANIFEST_UNKNOWN" | "NAME_UNKNOWN")
    }

    pub(crate) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
    }
}

impl From<StorageError> for RegistryError {
    fn from(error: StorageError) -> Self {
        let (status, code) = match &error {
            StorageError::BlobUnknown => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            StorageError::ManifestUnknown => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            StorageError::NameUnknown => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            StorageError::UploadUnknown => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            StorageError::DigestInvalid => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            StorageError::RangeInvalid { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            StorageError::ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            StorageError::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            StorageError::Body(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            StorageError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            StorageError::Busy(_) => (StatusCode::CONFLICT, "UNSUPPORTED"),
            StorageError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%error, "storage failure");
            return RegistryError::new(status, code, "internal storage error");
        }
        RegistryError::new(status, code, error.to_string())
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"errors": [{"code": self.code, "message": self.message, "detail": {}}]});
        (self.status, [("content-type", "application/json")], body.to_string()).into_response()
    }
}
