//! `grpc::MessageScan`, the check of every message of a per-model gRPC call, on any body cut
//! into any chunks and read the way the request stream reads it (bytes the scan skips are
//! passed over with `skip`, the rest fed in reads of bounded size). None panics; how the
//! body is cut never changes the outcome (the same model, or the same error, and the same
//! answer at the body's end); a model it finds is a valid name, and is the header's model
//! when the call had one; and the first message's model is the one
//! `grpc::model_from_message` reads.
//!
//! Input: byte 0 seeds the chunk sizes, byte 1 says whether the call names its model in a
//! header (odd: `linear`), the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_filter::grpc::{self, GrpcError, MessageScan};

/// What a scan of a whole body came to: the model (or the error that stopped it), and
/// what `finish` says at the body's end.
type Outcome = (
    Result<Option<String>, GrpcError>,
    Option<Result<(), GrpcError>>,
);

/// Scans `body` cut into chunks of the sizes `sizes` yields (at least 1 byte), reading at
/// most `max_read` bytes at a time as the stream does.
fn scan(
    header: Option<&str>,
    body: &[u8],
    mut sizes: impl FnMut() -> usize,
    max_read: usize,
) -> Outcome {
    let mut scan = MessageScan::new(header.map(str::to_owned));
    let mut at = 0;
    while at < body.len() {
        let chunk = sizes().clamp(1, body.len() - at);
        let end = at + chunk;
        while at < end {
            let skip = usize::try_from(scan.skippable())
                .unwrap_or(usize::MAX)
                .min(end - at);
            let step = if skip > 0 {
                scan.skip(skip as u64).map(|()| skip)
            } else {
                let read = (end - at).min(max_read);
                scan.feed(&body[at..at + read]).map(|()| read)
            };
            match step {
                Ok(n) => at += n,
                Err(err) => return (Err(err), None),
            }
        }
    }
    let finish = scan.finish();
    (Ok(scan.model().map(str::to_owned)), Some(finish))
}

fuzz_target!(|data: &[u8]| {
    let [seed, flags, body @ ..] = data else {
        return;
    };
    let header = (flags & 1 == 1).then_some("linear");
    let whole = scan(header, body, || usize::MAX, usize::MAX);

    // A small linear congruential sequence from the seed: chunks of 1 to 64 bytes.
    let mut state = u32::from(*seed) | 1;
    let cut = scan(
        header,
        body,
        || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as usize % 64 + 1
        },
        usize::from(*seed % 7) + 1,
    );
    assert_eq!(cut, whole, "chunked scan differs from the whole-body scan");
    let one_by_one = scan(header, body, || 1, 1);
    assert_eq!(one_by_one, whole, "byte-by-byte scan differs");

    if let (Ok(Some(model)), _) = &whole {
        assert!(mm_wire::validate_model_name(model).is_ok(), "{model:?}");
        if let Some(header) = header {
            assert_eq!(model, header, "the scan replaced the header's model");
        }
        if header.is_none() {
            if let Ok(Some(first)) = grpc::model_from_message(body) {
                assert_eq!(&first, model, "model_from_message reads another model");
            }
        }
    }
});
