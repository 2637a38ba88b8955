//! A response body made of the encoder's chunks: the JSON header, then each
//! binary output's own buffer, written as they are (no copy into one
//! contiguous body), with an exact length so HTTP/1.1 sends Content-Length.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Bodies up to this size are sent as one chunk.
pub const JOIN_BELOW: u64 = 64 * 1024;

#[derive(Debug)]
pub struct ChunksBody {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl ChunksBody {
    /// A small body (up to [`JOIN_BELOW`] bytes) is joined into one chunk:
    /// copying a few KiB is cheaper than a write per chunk. Larger ones keep
    /// their chunks, so big output tensors are never copied.
    pub fn new(chunks: Vec<Bytes>) -> ChunksBody {
        let remaining: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let chunks: VecDeque<Bytes> = if chunks.len() > 1 && remaining <= JOIN_BELOW {
            let mut joined = Vec::with_capacity(remaining as usize);
            for c in &chunks {
                joined.extend_from_slice(c);
            }
            VecDeque::from([Bytes::from(joined)])
        } else {
            chunks.into_iter().filter(|c| !c.is_empty()).collect()
        };
        ChunksBody { chunks, remaining }
    }

    /// Total bytes of the body.
    pub fn len(&self) -> u64 {
        self.remaining
    }
}

impl http_body::Body for ChunksBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.chunks.pop_front() {
            Some(chunk) => {
                self.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn concatenation_and_exact_length() {
        let body = ChunksBody::new(vec![
            Bytes::from_static(b"{}"),
            Bytes::new(),
            Bytes::from_static(b"abc"),
        ]);
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(5));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"{}abc");
        let big = Bytes::from(vec![7u8; 100_000]);
        let body = ChunksBody::new(vec![Bytes::from_static(b"{}"), big.clone()]);
        assert_eq!(body.chunks.len(), 2, "a large body keeps its chunks");
        assert_eq!(body.chunks[1].as_ptr(), big.as_ptr(), "and is not copied");
    }
}
