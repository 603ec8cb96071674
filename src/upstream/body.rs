//! Reading a small upstream answer (manifest, tag list page, token) into memory, with a cap:
//! an oversized answer is refused as soon as it is known to be one, never buffered whole.

use bytes::{Bytes, BytesMut};

use super::content_length;
use super::error::{error_chain, strip_query};
use super::UpstreamError;

/// The body of `response`, refused as soon as it is known to exceed `limit` (from
/// `Content-Length`, or while reading a chunked body that has none). `what` names the answer
/// in the error ("manifest", "tag list"); `url` is where it came from.
///
/// A body that breaks off (cut connection, shorter than its `Content-Length`, the request's
/// deadline passing mid-body) is `Unreachable`: upstream failed to answer, it did not answer
/// wrongly.
pub async fn read_at_most(
    mut response: reqwest::Response,
    limit: u64,
    what: &str,
    url: &str,
) -> Result<Bytes, UpstreamError> {
    let too_large = || UpstreamError::BadResponse {
        url: strip_query(url),
        reason: format!("{what} is larger than {limit} bytes"),
    };
    if content_length(response.headers()).is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|e| UpstreamError::Unreachable {
                url: strip_query(url),
                reason: format!("{what} body broke off: {}", error_chain(e)),
            })?;
        let Some(chunk) = chunk else { break };
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
