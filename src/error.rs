//! The JSON error responses the gateway itself sends, in the contract's shape:
//! `{"error":{"status":404,"code":"route_not_found","message":"...","request_id":"..."}}`.

use bytes::Bytes;
use pingora::{ErrorSource, ErrorType};

/// The `content-type` and `cache-control` of every error body.
pub const JSON: http::HeaderValue = http::HeaderValue::from_static("application/json");
pub const NO_STORE: http::HeaderValue = http::HeaderValue::from_static("no-store");

/// One kind of gateway error: its status, code and the message clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

pub const ROUTE_NOT_FOUND: GatewayError = GatewayError {
    status: 404,
    code: "route_not_found",
    message: "no route matches this request",
};
pub const METHOD_NOT_ALLOWED: GatewayError = GatewayError {
    status: 405,
    code: "method_not_allowed",
    message: "the route does not allow this method",
};
pub const UNAUTHORIZED: GatewayError = GatewayError {
    status: 401,
    code: "unauthorized",
    message: "valid credentials are required",
};
pub const FORBIDDEN: GatewayError = GatewayError {
    status: 403,
    code: "forbidden",
    message: "this consumer may not use this route",
};
pub const TOO_MANY_REQUESTS: GatewayError = GatewayError {
    status: 429,
    code: "rate_limited",
    message: "too many requests; retry later",
};

pub const BAD_REQUEST: GatewayError = GatewayError {
    status: 400,
    code: "bad_request",
    message: "the request could not be understood",
};
pub const REQUEST_TIMEOUT: GatewayError = GatewayError {
    status: 408,
    code: "request_timeout",
    message: "the request body did not arrive in time",
};
pub const LENGTH_REQUIRED: GatewayError = GatewayError {
    status: 411,
    code: "length_required",
    message: "a body this large needs a content-length on this route",
};
pub const PAYLOAD_TOO_LARGE: GatewayError = GatewayError {
    status: 413,
    code: "payload_too_large",
    message: "the request body is larger than this route accepts",
};
pub const REQUEST_HEADER_TOO_LARGE: GatewayError = GatewayError {
    status: 431,
    code: "request_header_too_large",
    message: "the request's header is larger than this gateway accepts",
};
pub const URI_TOO_LONG: GatewayError = GatewayError {
    status: 414,
    code: "uri_too_long",
    message: "the request's URI is longer than this gateway accepts",
};
pub const REQUEST_BLOCKED: GatewayError = GatewayError {
    status: 403,
    code: "request_blocked",
    message: "the request was blocked by a security policy",
};
pub const BAD_GATEWAY: GatewayError = GatewayError {
    status: 502,
    code: "bad_gateway",
    message: "the upstream failed to answer",
};
pub const UPSTREAM_UNAVAILABLE: GatewayError = GatewayError {
    status: 503,
    code: "upstream_unavailable",
    message: "no healthy upstream target is available",
};
pub const UPSTREAM_TIMEOUT: GatewayError = GatewayError {
    status: 504,
    code: "upstream_timeout",
    message: "the upstream did not answer in time",
};
pub const INTERNAL: GatewayError = GatewayError {
    status: 500,
    code: "internal_error",
    message: "the gateway failed to handle the request",
};

/// The contract's error body for any status, code and message (an upstream's own, passed on).
pub fn body(status: u16, code: &str, message: &str, request_id: &str) -> Bytes {
    serde_json::json!({
        "error": {
            "status": status,
            "code": code,
            "message": message,
            "request_id": request_id,
        }
    })
    .to_string()
    .into()
}

impl GatewayError {
    /// The JSON body, with the request id for correlation.
    pub fn body(&self, request_id: &str) -> Bytes {
        body(self.status, self.code, self.message, request_id)
    }

    /// The gateway error for a Pingora error that ended a request.
    pub fn from_pingora(e: &pingora::Error) -> Option<GatewayError> {
        use ErrorType::*;
        let mapped = match e.etype() {
            HTTPStatus(503) => UPSTREAM_UNAVAILABLE,
            HTTPStatus(504) => UPSTREAM_TIMEOUT,
            HTTPStatus(400) => BAD_REQUEST,
            HTTPStatus(_) => BAD_GATEWAY,
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                match e.esource() {
                    ErrorSource::Downstream => return None,
                    _ => UPSTREAM_TIMEOUT,
                }
            }
            _ => match e.esource() {
                ErrorSource::Upstream => BAD_GATEWAY,
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => return None,
                    _ => BAD_REQUEST,
                },
                ErrorSource::Internal | ErrorSource::Unset => INTERNAL,
            },
        };
        Some(mapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let v: serde_json::Value = serde_json::from_slice(&ROUTE_NOT_FOUND.body("abc\"")).unwrap();
        assert_eq!(v["error"]["status"], 404);
        assert_eq!(v["error"]["code"], "route_not_found");
        assert_eq!(v["error"]["request_id"], "abc\"");
    }

    #[test]
    fn mapping() {
        let e = pingora::Error::new(ErrorType::ConnectRefused).into_up();
        assert_eq!(GatewayError::from_pingora(&e), Some(BAD_GATEWAY));
        let e = pingora::Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(GatewayError::from_pingora(&e), Some(UPSTREAM_TIMEOUT));
        let e = pingora::Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(GatewayError::from_pingora(&e), None);
    }
}
