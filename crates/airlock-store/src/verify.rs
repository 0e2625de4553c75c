//! Hashing in flight: a stream adapter that fails at the end when the bytes were not the ones
//! expected, before the writer can commit them.

use airlock_oci::{Descriptor, DigestHasher};
use futures::StreamExt;

use crate::{BlobStream, Error};

/// Wraps `body` so that it yields an error instead of ending when its size or digest differs
/// from `descriptor`'s. A writer that commits only after the stream ended cleanly therefore never
/// commits corrupt content. `location` names the store for the error.
pub fn verify_stream(descriptor: &Descriptor, body: BlobStream, location: String) -> BlobStream {
    let expected = descriptor.digest().clone();
    let expected_size = descriptor.size();
    let Some(hasher) = DigestHasher::new(expected.algorithm()) else {
        let error = Error::UnsupportedDigest { digest: expected.to_string(), location };
        return Box::pin(futures::stream::once(async move { Err(error) }));
    };
    let state = (body, Some(hasher), 0u64);
    Box::pin(futures::stream::unfold(state, move |(mut body, hasher, mut seen)| {
        let expected = expected.clone();
        let location = location.clone();
        async move {
            let mut hasher = hasher?;
            match body.next().await {
                Some(Ok(chunk)) => {
                    seen += chunk.len() as u64;
                    if seen > expected_size {
                        let error = Error::SizeMismatch { digest: expected, expected: expected_size, actual: seen, location };
                        return Some((Err(error), (body, None, seen)));
                    }
                    hasher.update(&chunk);
                    Some((Ok(chunk), (body, Some(hasher), seen)))
                }
                Some(Err(error)) => Some((Err(error), (body, None, seen))),
                None if seen != expected_size => {
                    let error = Error::SizeMismatch { digest: expected, expected: expected_size, actual: seen, location };
                    Some((Err(error), (body, None, seen)))
                }
                None => {
                    let actual = hasher.finish();
                    if actual == expected {
                        None
                    } else {
                        Some((Err(Error::DigestMismatch { expected, actual, location }), (body, None, seen)))
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_oci::digest_of;
    use bytes::Bytes;

    fn body(chunks: &[&'static [u8]]) -> BlobStream {
        let chunks: Vec<crate::Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures::stream::iter(chunks))
    }

    async fn drain(stream: BlobStream) -> crate::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    fn descriptor(content: &[u8]) -> Descriptor {
        Descriptor::new("application/octet-stream".into(), content.len() as u64, digest_of(content, None))
    }

    #[tokio::test]
    async fn passes_good_content_through() {
        let out = drain(verify_stream(&descriptor(b"hello world"), body(&[b"hello ", b"world"]), "here".into())).await;
        assert_eq!(out.unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn refuses_flipped_bytes_and_wrong_sizes() {
        let err = drain(verify_stream(&descriptor(b"hello world"), body(&[b"hello ", b"World"]), "here".into())).await;
        assert!(matches!(err, Err(Error::DigestMismatch { .. })), "{err:?}");
        let err = drain(verify_stream(&descriptor(b"hello"), body(&[b"hello ", b"world"]), "here".into())).await;
        assert!(matches!(err, Err(Error::SizeMismatch { .. })));
        let err = drain(verify_stream(&descriptor(b"hello world"), body(&[b"hello"]), "here".into())).await;
        assert!(matches!(err, Err(Error::SizeMismatch { actual: 5, .. })));
    }
}
