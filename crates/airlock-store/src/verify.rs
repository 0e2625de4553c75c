//! Hashing in flight: a stream adapter that fails at the end when the bytes were not the ones
//! expected, before the writer can commit them.

use airlock_oci::{Descriptor, DigestHasher};
use futures::StreamExt;

use crate::{BlobStream, Error, ErrorKind, Result, Store};

/// A small blob (an image config, a signature payload) read whole and verified. One whose
/// descriptor says more than `limit` bytes is refused unread: only small documents are ever
/// held in memory.
pub async fn read_small(store: &dyn Store, descriptor: &Descriptor, limit: u64) -> Result<Vec<u8>> {
    if descriptor.size() > limit {
        return Err(Error::from(ErrorKind::Protocol {
            location: store.to_string(),
            reason: format!("blob {} is {} bytes; at most {limit} are read into memory", descriptor.digest(), descriptor.size()),
        }));
    }
    let mut body = verify_stream(descriptor, store.get_blob(descriptor, 0).await?, store.to_string());
    let mut bytes = Vec::with_capacity(descriptor.size() as usize);
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    Ok(bytes)
}

/// Wraps `body` so that it yields an error instead of ending when its size or digest differs
/// from `descriptor`'s. A writer that commits only after the stream ended cleanly therefore never
/// commits corrupt content. `location` names the store for the error.
pub fn verify_stream(descriptor: &Descriptor, body: BlobStream, location: String) -> BlobStream {
    let expected = descriptor.digest().clone();
    let expected_size = descriptor.size();
    let Some(hasher) = DigestHasher::new(expected.algorithm()) else {
        let error = Error::from(ErrorKind::UnsupportedDigest { digest: expected.to_string(), location });
        return Box::pin(futures::stream::once(async move { Err(error) }));
    };
    struct State {
        body: BlobStream,
        /// `None` once the digest was checked or an error was yielded.
        hasher: Option<DigestHasher>,
        seen: u64,
        done: bool,
    }
    let state = State { body, hasher: Some(hasher), seen: 0, done: false };
    Box::pin(futures::stream::unfold(state, move |mut state| {
        let expected = expected.clone();
        let location = location.clone();
        async move {
            if state.done {
                return None;
            }
            let size_mismatch = |actual| Error::from(ErrorKind::SizeMismatch { digest: expected.clone(), expected: expected_size, actual, location: location.clone() });
            let item = match state.body.next().await {
                Some(Ok(chunk)) => {
                    state.seen += chunk.len() as u64;
                    match state.hasher.as_mut() {
                        Some(hasher) if state.seen <= expected_size => {
                            hasher.update(&chunk);
                            // Checked as the last byte arrives, before that chunk is passed on: a
                            // writer that stops reading at `size` bytes (an HTTP body with a
                            // Content-Length) never receives the end of corrupt content.
                            if state.seen == expected_size {
                                let actual = state.hasher.take().expect("checked above").finish();
                                if actual != expected {
                                    Err(Error::from(ErrorKind::DigestMismatch { expected, actual, location }))
                                } else {
                                    Ok(chunk)
                                }
                            } else {
                                Ok(chunk)
                            }
                        }
                        _ => Err(size_mismatch(state.seen)),
                    }
                }
                Some(Err(error)) => Err(error),
                None if state.seen == expected_size && state.hasher.is_none() => return None,
                None if expected_size == 0 && state.seen == 0 => {
                    let actual = state.hasher.take().expect("no bytes seen").finish();
                    state.done = true;
                    if actual == expected {
                        return None;
                    }
                    return Some((Err(Error::from(ErrorKind::DigestMismatch { expected, actual, location })), state));
                }
                None => Err(size_mismatch(state.seen)),
            };
            state.done = item.is_err();
            Some((item, state))
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
        assert!(matches!(err.map_err(|e| e.kind().to_string()), Err(e) if e.contains("digest mismatch")));
        let err = drain(verify_stream(&descriptor(b"hello"), body(&[b"hello ", b"world"]), "here".into())).await;
        assert!(matches!(err.map_err(|e| e.kind().to_string()), Err(e) if e.contains("size mismatch")));
        let err = drain(verify_stream(&descriptor(b"hello world"), body(&[b"hello"]), "here".into())).await;
        assert!(matches!(err.map_err(|e| e.kind().to_string()), Err(e) if e.contains("got 5")));
    }
}
