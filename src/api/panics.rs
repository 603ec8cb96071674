//! A panic while answering a request is a bug, but it must cost only that request: the client
//! gets a 500 with an OCI error body, the request log says what panicked (once), and the
//! connection and the server carry on.

use std::any::Any;

use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use super::ApiError;

/// `router` with every panic in its handlers (and the layers inside this one) answered as a 500.
pub fn catch_panics<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(CatchPanicLayer::custom(answer_panic))
}

fn answer_panic(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = if let Some(text) = payload.downcast_ref::<String>() {
        text.as_str()
    } else if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else {
        "a panic without a message"
    };
    ApiError::panicked(message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorMessage;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    async fn panicking_handler() -> &'static str {
        panic!("a deliberate panic: this test checks the 500")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_an_oci_error_and_logs_the_panic() {
        let router = catch_panics(
            Router::new()
                .route("/boom", get(panicking_handler))
                .route("/fine", get(|| async { "fine" })),
        );
        let response = router
            .clone()
            .oneshot(http::Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        let logged = response
            .extensions()
            .get::<ErrorMessage>()
            .unwrap()
            .0
            .clone();
        assert!(logged.contains("a deliberate panic"), "{logged}");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["errors"][0]["code"], "UNKNOWN");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            !message.contains("deliberate"),
            "internals stay in the log: {message}"
        );

        // The same router keeps answering.
        let response = router
            .oneshot(http::Request::get("/fine").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}
