//! Read-modify-write of Proxy-Wasm shared data, the store every VM of the plugin in one
//! Envoy shares: [`cas_update`] reads a key, lets the caller decide from what it holds,
//! and writes with compare-and-swap, reading again when another VM wrote in between. The
//! table lease, the table stamp, failure-report claims and reporter ids all go through it.

use crate::host::{Host, HostError};

/// What a [`cas_update`] step decided from the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<T> {
    /// Write this value (if nobody wrote since it was read), then return `T`.
    Write(Vec<u8>, T),
    /// Leave the key as it is and return `T`.
    Keep(T),
}

/// Why a [`cas_update`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CasError {
    /// Another VM wrote the key between every read and write of the allowed tries.
    #[error("shared data kept changing ({0} tries)")]
    Contended(usize),
    /// The host refused a read or a write.
    #[error("shared data: {0}")]
    Host(HostError),
}

/// Updates `key` with compare-and-swap, at most `tries` times: `decide` gets the host (it
/// may write other keys first) and the current value (`None` if the key does not exist),
/// and says what to write. Returns what `decide` returned with the write that won.
///
/// Errors: [`CasError::Contended`] when every try lost the race, [`CasError::Host`] when
/// the host refused a read or a write.
pub fn cas_update<H, T>(
    host: &mut H,
    key: &str,
    tries: usize,
    mut decide: impl FnMut(&mut H, Option<&[u8]>) -> Update<T>,
) -> Result<T, CasError>
where
    H: Host + ?Sized,
{
    for _ in 0..tries {
        let (value, cas) = host.shared(key).map_err(CasError::Host)?;
        match decide(host, value.as_deref()) {
            Update::Keep(result) => return Ok(result),
            Update::Write(bytes, result) => match host.set_shared(key, &bytes, cas) {
                Ok(()) => return Ok(result),
                Err(HostError::CasMismatch) => continue,
                Err(err) => return Err(CasError::Host(err)),
            },
        }
    }
    Err(CasError::Contended(tries))
}

/// 8 little-endian bytes as a `u64`; `None` for any other length.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeHost, Op};

    fn counter(host: &mut FakeHost) -> Result<u64, CasError> {
        cas_update(host, "n", 3, |_, current| {
            let next = current.and_then(decode_u64).unwrap_or(0) + 1;
            Update::Write(next.to_le_bytes().to_vec(), next)
        })
    }

    #[test]
    fn writes_what_decide_says_and_keeps_otherwise() {
        let mut host = FakeHost::new();
        assert_eq!(counter(&mut host), Ok(1));
        assert_eq!(counter(&mut host), Ok(2));
        let kept = cas_update(&mut host, "n", 3, |_, current| {
            Update::Keep(current.and_then(decode_u64))
        });
        assert_eq!(kept, Ok(Some(2)));
        assert_eq!(host.shared.borrow().get("n"), Some(&2u64.to_le_bytes()[..]));
    }

    #[test]
    fn reads_again_when_another_vm_wrote_in_between() {
        let mut host = FakeHost::new();
        let other = host.shared.clone();
        assert_eq!(counter(&mut host), Ok(1));
        host.take_ops();
        let mut raced = false;
        let result = cas_update(&mut host, "n", 3, |_, current| {
            let seen = current.and_then(decode_u64).unwrap_or(0);
            if !raced {
                raced = true;
                // Another VM bumps the value after this read.
                let mut theirs = FakeHost::sharing(&other);
                counter(&mut theirs).unwrap();
            }
            Update::Write((seen + 10).to_le_bytes().to_vec(), seen + 10)
        });
        assert_eq!(result, Ok(12));
        let writes = host
            .ops
            .iter()
            .filter(|op| matches!(op, Op::SetShared(..)))
            .count();
        assert_eq!(writes, 2, "the first write lost the race: {:?}", host.ops);
    }

    #[test]
    fn gives_up_after_its_tries() {
        let mut host = FakeHost::new();
        let other = host.shared.clone();
        counter(&mut host).unwrap();
        let result = cas_update(&mut host, "n", 2, |_, _| {
            let mut theirs = FakeHost::sharing(&other);
            counter(&mut theirs).unwrap();
            Update::Write(vec![0], ())
        });
        assert_eq!(result, Err(CasError::Contended(2)));
    }
}
