//! Renaming a request to the model's Triton-side name, for the rare model the routing table
//! says replicas know by another name (a version loaded by an update, see
//! [`mm_wire::TableEntry::upstream`]): the model segment of the HTTP path (V2, and V1
//! whose path was already turned into V2's), and field 1 (`model_name`) of every gRPC
//! request message, with each message's length prefix re-encoded: all at once for a unary
//! call, frame by frame as they pass for a stream ([`FrameRename`]). Plain functions over
//! bytes that never panic; a request for any other model never comes here.

use crate::grpc::{frame_length, GrpcError, FRAME_HEADER_LEN};

/// The `:path` of `path` (already classified as a per-model path) with its model segment
/// replaced by `upstream`; the rest (version, endpoint, `:predict`, query) is kept.
/// `None` if the path does not have the `/v1/models/` or `/v2/models/` shape.
pub(super) fn http_path(path: &[u8], upstream: &str) -> Option<String> {
    let path = std::str::from_utf8(path).ok()?;
    let rest = path
        .strip_prefix("/v2/models/")
        .map(|rest| ("/v2/models/", rest))
        .or_else(|| path.strip_prefix("/v1/models/").map(|r| ("/v1/models/", r)));
    let (prefix, rest) = rest?;
    let end = rest.find(['/', ':', '?']).unwrap_or(rest.len());
    let tail = rest.get(end..)?;
    Some(format!("{prefix}{upstream}{tail}"))
}

/// The gRPC request body `body` (complete, uncompressed messages, each already checked to
/// name the call's model) with field 1 of every message set to `upstream`, and each
/// length prefix re-encoded. Other fields are copied byte for byte.
///
/// Errors: a compressed or cut frame, or malformed protobuf (which the message check
/// refuses before this runs, so only a body that changed under it gets here).
pub(super) fn grpc_body(body: &[u8], upstream: &str) -> Result<Vec<u8>, GrpcError> {
    let mut out = Vec::with_capacity(body.len().saturating_add(upstream.len()));
    let mut rest = body;
    while !rest.is_empty() {
        let (prefix, after) = rest
            .split_first_chunk::<FRAME_HEADER_LEN>()
            .ok_or(GrpcError::Malformed("the body ends inside a message"))?;
        let len = usize::try_from(frame_length(*prefix)?).unwrap_or(usize::MAX);
        let message = after
            .get(..len)
            .ok_or(GrpcError::Malformed("the body ends inside a message"))?;
        rest = after.get(len..).unwrap_or_default();
        let renamed = message_renamed(message, upstream)?;
        let renamed_len = u32::try_from(renamed.len())
            .map_err(|_| GrpcError::Malformed("message too long once renamed"))?;
        out.push(0);
        out.extend_from_slice(&renamed_len.to_be_bytes());
        out.extend_from_slice(&renamed);
    }
    Ok(out)
}

/// Renames a streaming call's messages as they pass: each chunk of the body gives back the
/// frames it completes, renamed, and keeps the start of a frame it cuts until the rest
/// arrives. What it keeps is at most one message, and the call's body is bounded by
/// `max_request_bytes` (413 past it), so no more than that is ever held.
#[derive(Debug, Default)]
pub(super) struct FrameRename {
    /// The start of a frame whose end has not arrived yet.
    cut: Vec<u8>,
}

impl FrameRename {
    /// The bytes to send on for `chunk`, the next bytes of the body: every frame that ends
    /// in it (with the kept start of the first), renamed to `upstream`. Empty when the
    /// chunk ends no frame.
    ///
    /// Errors: as [`grpc_body`] for a frame that cannot be rewritten.
    pub(super) fn chunk(&mut self, chunk: &[u8], upstream: &str) -> Result<Vec<u8>, GrpcError> {
        self.cut.extend_from_slice(chunk);
        let whole = complete_frames(&self.cut)?;
        if whole == 0 {
            return Ok(Vec::new());
        }
        let renamed = grpc_body(self.cut.get(..whole).unwrap_or_default(), upstream)?;
        self.cut.drain(..whole);
        Ok(renamed)
    }

    /// Bytes of a cut frame held: at the end of the body, a message the client never
    /// finished.
    pub(super) fn held(&self) -> usize {
        self.cut.len()
    }
}

/// Length of the longest run of complete frames at the start of `bytes`, reading only
/// their prefixes. Errors: a compressed frame, or a flag byte that is neither 0 nor 1.
fn complete_frames(bytes: &[u8]) -> Result<usize, GrpcError> {
    let mut end = 0usize;
    while let Some(prefix) = bytes
        .get(end..)
        .and_then(|rest| rest.first_chunk::<FRAME_HEADER_LEN>())
    {
        let len = usize::try_from(frame_length(*prefix)?).unwrap_or(usize::MAX);
        let frame_end = end.saturating_add(FRAME_HEADER_LEN).saturating_add(len);
        if frame_end > bytes.len() {
            break;
        }
        end = frame_end;
    }
    Ok(end)
}

/// One protobuf message with every field 1 replaced by the string `upstream`.
fn message_renamed(mut message: &[u8], upstream: &str) -> Result<Vec<u8>, GrpcError> {
    let mut out = Vec::with_capacity(message.len().saturating_add(upstream.len()));
    while !message.is_empty() {
        let start = message;
        let (key, after_key) = varint(message)?;
        let field = key >> 3;
        let value_len = match key & 7 {
            0 => {
                let (_, after) = varint(after_key)?;
                after_key.len() - after.len()
            }
            1 => 8,
            5 => 4,
            2 => {
                let (len, after) = varint(after_key)?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                (after_key.len() - after.len()).saturating_add(len)
            }
            _ => return Err(GrpcError::Malformed("unsupported wire type")),
        };
        if field == 0 {
            return Err(GrpcError::Malformed("field number 0"));
        }
        let field_len = (start.len() - after_key.len()).saturating_add(value_len);
        let whole = start
            .get(..field_len)
            .ok_or(GrpcError::Malformed("field runs past the message"))?;
        if field == 1 && key & 7 == 2 {
            out.push(0x0a);
            put_varint(&mut out, upstream.len() as u64);
            out.extend_from_slice(upstream.as_bytes());
        } else {
            out.extend_from_slice(whole);
        }
        message = start.get(field_len..).unwrap_or_default();
    }
    Ok(out)
}

/// A varint from the start of `bytes`, and the bytes after it.
fn varint(bytes: &[u8]) -> Result<(u64, &[u8]), GrpcError> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, bytes.get(i + 1..).unwrap_or_default()));
        }
    }
    Err(GrpcError::Malformed("truncated or over-long varint"))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(field: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, field << 3 | 2);
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        out
    }

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(msg);
        out
    }

    #[test]
    fn renames_the_model_segment_of_every_model_path() {
        let rows = [
            ("/v2/models/m/infer", "/v2/models/m--0123abcd/infer"),
            ("/v2/models/m", "/v2/models/m--0123abcd"),
            ("/v2/models/m/ready", "/v2/models/m--0123abcd/ready"),
            (
                "/v2/models/m/versions/3/infer?x=1",
                "/v2/models/m--0123abcd/versions/3/infer?x=1",
            ),
            ("/v2/models/m?x", "/v2/models/m--0123abcd?x"),
            ("/v1/models/m:predict", "/v1/models/m--0123abcd:predict"),
            ("/v1/models/m", "/v1/models/m--0123abcd"),
        ];
        for (path, want) in rows {
            assert_eq!(
                http_path(path.as_bytes(), "m--0123abcd").as_deref(),
                Some(want),
                "{path}"
            );
        }
        for path in ["/v2/health/ready", "/v2", "", "/v3/models/m"] {
            assert_eq!(http_path(path.as_bytes(), "x"), None, "{path}");
        }
        assert_eq!(http_path(b"/v2/models/\xff", "x"), None);
    }

    #[test]
    fn renames_field_one_of_every_message_and_keeps_the_rest() {
        // version (2), model_name (1), a varint (3), fixed64 (4), fixed32 (5), model_name again.
        let mut msg = string(2, b"7");
        msg.extend(string(1, b"m"));
        msg.extend([3 << 3, 0x96, 0x01]);
        msg.extend([(4 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        msg.extend([(5 << 3) | 5, 1, 2, 3, 4]);
        msg.extend(string(1, b"m"));
        let mut want = string(2, b"7");
        want.extend(string(1, b"m--0123abcd"));
        want.extend([3 << 3, 0x96, 0x01]);
        want.extend([(4 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend([(5 << 3) | 5, 1, 2, 3, 4]);
        want.extend(string(1, b"m--0123abcd"));
        let second = string(1, b"m");
        let body = [frame(&msg), frame(&second)].concat();
        let renamed = grpc_body(&body, "m--0123abcd").unwrap();
        let expected = [frame(&want), frame(&string(1, b"m--0123abcd"))].concat();
        assert_eq!(renamed, expected);
        // A large field keeps its bytes, and a name that needs a 2-byte length works.
        let long = "n".repeat(128);
        let big = [string(1, b"m"), string(9, &[7u8; 300])].concat();
        let renamed = grpc_body(&frame(&big), &long).unwrap();
        let want = frame(&[string(1, long.as_bytes()), string(9, &[7u8; 300])].concat());
        assert_eq!(renamed, want);
        assert_eq!(grpc_body(b"", "x").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn refuses_what_it_cannot_rewrite() {
        let msg = string(1, b"m");
        let mut compressed = frame(&msg);
        compressed[0] = 1;
        let mut bad_flag = frame(&msg);
        bad_flag[0] = 9;
        let cut = frame(&msg)[..6].to_vec();
        let rows: [(&[u8], GrpcError); 7] = [
            (&compressed, GrpcError::Compressed),
            (&bad_flag, GrpcError::BadFrame),
            (&cut, GrpcError::Malformed("the body ends inside a message")),
            (
                &[0, 0, 0],
                GrpcError::Malformed("the body ends inside a message"),
            ),
            (
                &frame(&[0x0a, 0x05, b'm']),
                GrpcError::Malformed("field runs past the message"),
            ),
            (
                &frame(&[(1 << 3) | 3]),
                GrpcError::Malformed("unsupported wire type"),
            ),
            (
                &frame(&[
                    0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ]),
                GrpcError::Malformed("truncated or over-long varint"),
            ),
        ];
        for (body, err) in rows {
            assert_eq!(grpc_body(body, "x"), Err(err), "{body:?}");
        }
        assert_eq!(
            grpc_body(&frame(&[0x02, 0x00]), "x"),
            Err(GrpcError::Malformed("field number 0"))
        );
    }

    #[test]
    fn renames_a_stream_frame_by_frame_whatever_the_chunks() {
        let first = frame(&[string(1, b"m"), string(2, b"1"), string(9, &[5u8; 40])].concat());
        let second = frame(&[string(9, &[6u8; 3]), string(1, b"m")].concat());
        let body = [first.clone(), second.clone()].concat();
        let want = grpc_body(&body, "m--0123abcd").unwrap();
        let want_first = grpc_body(&first, "m--0123abcd").unwrap();
        // (chunk boundaries, what each chunk gives back): cut in the prefix, in the
        // message, exactly between frames, one byte at a time, all at once.
        let rows: Vec<(Vec<usize>, Vec<Vec<u8>>)> = vec![
            (vec![body.len()], vec![want.clone()]),
            (vec![3, body.len()], vec![vec![], want.clone()]),
            (
                vec![first.len(), body.len()],
                vec![want_first.clone(), want[want_first.len()..].to_vec()],
            ),
            (
                vec![first.len() + 2, body.len()],
                vec![want_first.clone(), want[want_first.len()..].to_vec()],
            ),
            (
                vec![10, first.len() - 1, body.len()],
                vec![vec![], vec![], want.clone()],
            ),
        ];
        for (cuts, outs) in rows {
            let mut rename = FrameRename::default();
            let mut from = 0;
            for (cut, out) in cuts.iter().zip(&outs) {
                let got = rename.chunk(&body[from..*cut], "m--0123abcd").unwrap();
                assert_eq!(&got, out, "cuts {cuts:?} at {cut}");
                from = *cut;
            }
            assert_eq!(rename.held(), 0, "{cuts:?}");
        }
        let mut rename = FrameRename::default();
        let sent: Vec<u8> = body
            .iter()
            .flat_map(|b| rename.chunk(&[*b], "m--0123abcd").unwrap())
            .collect();
        assert_eq!(sent, want);
        // A body that ends inside a frame leaves it held.
        let mut rename = FrameRename::default();
        assert_eq!(rename.chunk(&body[..body.len() - 1], "x").unwrap().len(), {
            grpc_body(&first, "x").unwrap().len()
        });
        assert_eq!(rename.held(), second.len() - 1);
    }

    #[test]
    fn a_stream_refuses_what_it_cannot_rewrite() {
        let msg = string(1, b"m");
        let mut compressed = frame(&msg);
        compressed[0] = 1;
        let mut bad_flag = frame(&msg);
        bad_flag[0] = 9;
        // Seen from the frame's prefix, before its message has arrived.
        let rows: [(&[u8], GrpcError); 3] = [
            (&compressed[..5], GrpcError::Compressed),
            (&bad_flag[..5], GrpcError::BadFrame),
            (
                &frame(&[0x0a, 0x07, b'm']),
                GrpcError::Malformed("field runs past the message"),
            ),
        ];
        for (chunk, err) in rows {
            let mut rename = FrameRename::default();
            assert_eq!(rename.chunk(chunk, "x"), Err(err), "{chunk:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_stream_renames_as_the_whole_body_would(
            sizes in proptest::collection::vec(0usize..300, 1..5),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
        ) {
            let body: Vec<u8> = sizes
                .iter()
                .flat_map(|n| frame(&[string(1, b"m"), string(9, &vec![3u8; *n])].concat()))
                .collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
            cuts.push(body.len());
            cuts.sort_unstable();
            let mut rename = FrameRename::default();
            let mut sent = Vec::new();
            let mut from = 0;
            for cut in cuts {
                sent.extend(rename.chunk(&body[from..cut], "m--0123abcd").unwrap());
                from = cut;
            }
            proptest::prop_assert_eq!(sent, grpc_body(&body, "m--0123abcd").unwrap());
            proptest::prop_assert_eq!(rename.held(), 0);
        }

        #[test]
        fn a_stream_never_panics(
            chunks in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0..6),
        ) {
            let mut rename = FrameRename::default();
            for chunk in chunks {
                let _ = rename.chunk(&chunk, "m--0123abcd");
            }
        }

        #[test]
        fn never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = grpc_body(&body, "m--0123abcd");
        }
    }
}
