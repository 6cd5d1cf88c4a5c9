//! How test results are laid out in the results tree: the one part of the store written
//! a million times, so it is binary rather than JSON.
//!
//! - **A result of a running build** is one entry: key (build id, test id, NUL, attempt),
//!   value [`RESULT`] then the result's body (status, flags, duration, lease, worker,
//!   output). The test id and attempt are the key's, not repeated in the value.
//! - **A finished build's results** are packed into a few entries (chunks), keys (build
//!   id, chunk number as 4 big-endian bytes): 12 bytes, which no result key has (13 at
//!   least). Each chunk is self-contained: [`PACK`], its worker names once, then its
//!   results in key order, each test id front-coded against the previous one (ids of one
//!   suite share long prefixes), its worker as an index into the names. A chunk holds
//!   about [`CHUNK_BYTES`] of results (one result with a longer output, alone): sled 0.34
//!   writes a tree node over 128 KiB (a quarter of its segment) as a file of its own, and
//!   leaks such files when the node is replaced, so no node may grow that big, and a leaf
//!   holds up to 16 entries.
//! - **A value written before this format** is a result as JSON (it starts with `{`) and
//!   still reads: a master upgraded in place keeps its history.
//!
//! Numbers are LEB128 varints; a duration is the f64's 8 bytes, little-endian. A value
//! that does not decode is [`FormatError`], which the store reports as corrupt.

use greenlight_shared::api::{TestResultView, TestStatus};

/// First byte of one result's value.
pub const RESULT: u8 = 1;
/// First byte of a packed build.
pub const PACK: u8 = 2;
/// About how many bytes of results one chunk of a pack holds: 16 of them (a sled leaf)
/// stay well under the 128 KiB that sled writes as a separate file.
pub const CHUNK_BYTES: usize = 4096;
/// The length of a chunk's key: build id and chunk number.
pub const CHUNK_KEY_LEN: usize = 12;
/// First byte of a value from before the binary format (a JSON object).
const JSON: u8 = b'{';

const RETRIED: u8 = 1;
const FLAKY: u8 = 1 << 1;
const QUARANTINED: u8 = 1 << 2;
const HAS_OUTPUT: u8 = 1 << 3;
const HAS_WORKER: u8 = 1 << 4;
const HAS_LEASE: u8 = 1 << 5;

/// A stored result value that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

fn corrupt(what: &str) -> FormatError {
    FormatError(what.to_owned())
}

fn status_byte(status: TestStatus) -> u8 {
    match status {
        TestStatus::Passed => 0,
        TestStatus::Failed => 1,
        TestStatus::Skipped => 2,
        TestStatus::Error => 3,
    }
}

fn status_of(byte: u8) -> Result<TestStatus, FormatError> {
    Ok(match byte {
        0 => TestStatus::Passed,
        1 => TestStatus::Failed,
        2 => TestStatus::Skipped,
        3 => TestStatus::Error,
        _ => return Err(corrupt("unknown status")),
    })
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads a value front to back.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, FormatError> {
        let (&first, rest) = self.bytes.split_first().ok_or_else(|| corrupt("truncated value"))?;
        self.bytes = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, FormatError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(corrupt("varint too long"))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], FormatError> {
        if self.bytes.len() < len {
            return Err(corrupt("truncated value"));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn length(&mut self) -> Result<usize, FormatError> {
        usize::try_from(self.varint()?).map_err(|_| corrupt("length out of range"))
    }

    fn string(&mut self) -> Result<String, FormatError> {
        let len = self.length()?;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| corrupt("a string is not UTF-8"))
    }
}

/// How a body names its worker: inline, or as an index into a pack's names.
enum Workers<'a> {
    Inline,
    Indexed(&'a std::collections::HashMap<&'a str, u64>),
}

fn put_body(out: &mut Vec<u8>, result: &TestResultView, workers: &Workers<'_>) {
    let mut flags = 0;
    for (set, flag) in [
        (result.retried, RETRIED),
        (result.flaky, FLAKY),
        (result.quarantined, QUARANTINED),
        (result.output.is_some(), HAS_OUTPUT),
        (result.worker.is_some(), HAS_WORKER),
        (result.lease_id.is_some(), HAS_LEASE),
    ] {
        if set {
            flags |= flag;
        }
    }
    out.push(status_byte(result.status));
    out.push(flags);
    out.extend_from_slice(&result.duration_s.to_le_bytes());
    if let Some(lease_id) = result.lease_id {
        put_varint(out, lease_id);
    }
    if let Some(worker) = &result.worker {
        match workers {
            Workers::Inline => put_bytes(out, worker.as_bytes()),
            Workers::Indexed(index) => put_varint(out, index[worker.as_str()]),
        }
    }
    if let Some(output) = &result.output {
        put_bytes(out, output.as_bytes());
    }
}

fn read_body(
    reader: &mut Reader<'_>,
    test_id: String,
    attempt: u32,
    names: Option<&[String]>,
) -> Result<TestResultView, FormatError> {
    let status = status_of(reader.byte()?)?;
    let flags = reader.byte()?;
    let duration: [u8; 8] = reader.take(8)?.try_into().map_err(|_| corrupt("truncated duration"))?;
    let lease_id = if flags & HAS_LEASE != 0 { Some(reader.varint()?) } else { None };
    let worker = if flags & HAS_WORKER == 0 {
        None
    } else {
        match names {
            None => Some(reader.string()?),
            Some(names) => {
                let index = reader.length()?;
                Some(names.get(index).ok_or_else(|| corrupt("unknown worker index"))?.clone())
            }
        }
    };
    let output = if flags & HAS_OUTPUT != 0 { Some(reader.string()?) } else { None };
    Ok(TestResultView {
        test_id,
        attempt,
        status,
        duration_s: f64::from_le_bytes(duration),
        output,
        worker,
        retried: flags & RETRIED != 0,
        flaky: flags & FLAKY != 0,
        quarantined: flags & QUARANTINED != 0,
        lease_id,
    })
}

/// The key of one result.
pub fn result_key(build_id: u64, test_id: &str, attempt: u32) -> Vec<u8> {
    let mut key = test_prefix(build_id, test_id);
    key.extend_from_slice(&attempt.to_be_bytes());
    key
}

/// The prefix of a test's results' keys in a build.
pub fn test_prefix(build_id: u64, test_id: &str) -> Vec<u8> {
    let mut key = build_id.to_be_bytes().to_vec();
    key.extend_from_slice(test_id.as_bytes());
    key.push(0);
    key
}

/// The key of chunk `chunk` of a build's pack.
pub fn chunk_key(build_id: u64, chunk: u32) -> Vec<u8> {
    let mut key = build_id.to_be_bytes().to_vec();
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

/// A build's results, in key order, packed: chunk values of about [`CHUNK_BYTES`] each
/// (none for no results).
pub fn encode_chunks(results: &[TestResultView]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (index, result) in results.iter().enumerate() {
        size += 24
            + result.test_id.len()
            + result.output.as_ref().map_or(0, String::len)
            + result.worker.as_ref().map_or(0, String::len);
        if size >= CHUNK_BYTES {
            chunks.push(encode_pack(&results[start..=index]));
            start = index + 1;
            size = 0;
        }
    }
    if start < results.len() {
        chunks.push(encode_pack(&results[start..]));
    }
    chunks
}

/// One result's value (its test id and attempt are in its key).
pub fn encode_result(result: &TestResultView) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + result.output.as_ref().map_or(0, String::len));
    out.push(RESULT);
    put_body(&mut out, result, &Workers::Inline);
    out
}

/// The results an entry of the results tree holds: one result, or a whole build's pack.
pub fn decode_entry(key: &[u8], value: &[u8]) -> Result<Vec<TestResultView>, FormatError> {
    match value.first() {
        Some(&PACK) => decode_pack(value),
        Some(&RESULT) => {
            let (test_id, attempt) = split_key(key)?;
            let mut reader = Reader { bytes: &value[1..] };
            Ok(vec![read_body(&mut reader, test_id, attempt, None)?])
        }
        Some(&JSON) => Ok(vec![serde_json::from_slice(value).map_err(|error| FormatError(error.to_string()))?]),
        _ => Err(corrupt("unknown result format")),
    }
}

/// The test id and attempt of a result key (the attempt is the last 4 bytes, after a NUL).
fn split_key(key: &[u8]) -> Result<(String, u32), FormatError> {
    if key.len() < 8 + 1 + 4 || key[key.len() - 5] != 0 {
        return Err(corrupt("malformed result key"));
    }
    let attempt = u32::from_be_bytes(key[key.len() - 4..].try_into().map_err(|_| corrupt("malformed result key"))?);
    let test_id = String::from_utf8(key[8..key.len() - 5].to_vec()).map_err(|_| corrupt("a test id is not UTF-8"))?;
    Ok((test_id, attempt))
}

/// Results in key order (test id, then attempt), packed into one value.
fn encode_pack(results: &[TestResultView]) -> Vec<u8> {
    let mut names: Vec<&str> = results.iter().filter_map(|result| result.worker.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    let index: std::collections::HashMap<&str, u64> =
        names.iter().enumerate().map(|(position, &name)| (name, position as u64)).collect();
    let mut out = Vec::with_capacity(64 * results.len());
    out.push(PACK);
    put_varint(&mut out, names.len() as u64);
    for name in &names {
        put_bytes(&mut out, name.as_bytes());
    }
    put_varint(&mut out, results.len() as u64);
    let mut previous: &[u8] = &[];
    for result in results {
        let id = result.test_id.as_bytes();
        let shared = previous.iter().zip(id).take_while(|(a, b)| a == b).count();
        put_varint(&mut out, shared as u64);
        put_bytes(&mut out, &id[shared..]);
        put_varint(&mut out, u64::from(result.attempt));
        put_body(&mut out, result, &Workers::Indexed(&index));
        previous = id;
    }
    out
}

/// The test id of a chunk's first result (`None` for a chunk without results), read
/// without decoding the rest: chunks are in key order, so a reader looking for one test
/// decodes only the chunks whose range holds it.
pub fn chunk_first_test_id(value: &[u8]) -> Result<Option<String>, FormatError> {
    if value.first() != Some(&PACK) {
        return Err(corrupt("not a chunk"));
    }
    let mut reader = Reader { bytes: &value[1..] };
    for _ in 0..reader.length()? {
        let len = reader.length()?;
        reader.take(len)?;
    }
    if reader.length()? == 0 {
        return Ok(None);
    }
    if reader.length()? != 0 {
        return Err(corrupt("a chunk's first id is front-coded"));
    }
    let len = reader.length()?;
    String::from_utf8(reader.take(len)?.to_vec()).map(Some).map_err(|_| corrupt("a test id is not UTF-8"))
}

fn decode_pack(value: &[u8]) -> Result<Vec<TestResultView>, FormatError> {
    let mut reader = Reader { bytes: &value[1..] };
    let n_names = reader.length()?;
    let names = (0..n_names).map(|_| reader.string()).collect::<Result<Vec<_>, _>>()?;
    let count = reader.length()?;
    let mut results = Vec::with_capacity(count.min(value.len()));
    let mut previous: Vec<u8> = Vec::new();
    for _ in 0..count {
        let shared = reader.length()?;
        let suffix_len = reader.length()?;
        if shared > previous.len() {
            return Err(corrupt("front coding past the previous id"));
        }
        previous.truncate(shared);
        previous.extend_from_slice(reader.take(suffix_len)?);
        let test_id = String::from_utf8(previous.clone()).map_err(|_| corrupt("a test id is not UTF-8"))?;
        let attempt = u32::try_from(reader.varint()?).map_err(|_| corrupt("attempt out of range"))?;
        results.push(read_body(&mut reader, test_id, attempt, Some(&names))?);
    }
    if !reader.bytes.is_empty() {
        return Err(corrupt("trailing bytes after a pack"));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(test_id: &str, attempt: u32) -> TestResultView {
        TestResultView {
            test_id: test_id.into(),
            attempt,
            status: TestStatus::Failed,
            duration_s: 0.1 + f64::from(attempt),
            output: Some("assert 3 == 4\nnon-ASCII: ü".into()),
            worker: Some("box-07".into()),
            retried: true,
            flaky: false,
            quarantined: true,
            lease_id: Some(300),
        }
    }

    fn bare(test_id: &str) -> TestResultView {
        TestResultView {
            test_id: test_id.into(),
            attempt: 0,
            status: TestStatus::Skipped,
            duration_s: 0.0,
            output: None,
            worker: None,
            retried: false,
            flaky: true,
            quarantined: false,
            lease_id: None,
        }
    }

    #[test]
    fn every_field_survives_one_value_and_a_pack() {
        let results = vec![full("a/b.py::t1", 1), full("a/b.py::t1", 2), bare("a/b.py::t10"), full("a\0c", 1)];
        for result in &results {
            let key = result_key(7, &result.test_id, result.attempt);
            assert_eq!(decode_entry(&key, &encode_result(result)).unwrap(), vec![result.clone()]);
        }
        assert_eq!(decode_entry(&chunk_key(7, 0), &encode_pack(&results)).unwrap(), results);
        assert_eq!(decode_entry(&chunk_key(7, 0), &encode_pack(&[])).unwrap(), Vec::new());
    }

    #[test]
    fn a_pack_is_cut_into_small_chunks_that_read_back_in_order() {
        let results: Vec<TestResultView> =
            (0..2000).map(|index| full(&format!("tests/test_module.py::test_{index:05}"), 1)).collect();
        let chunks = encode_chunks(&results);
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|chunk| chunk.len() <= CHUNK_BYTES), "no chunk over {CHUNK_BYTES} bytes");
        let read: Vec<TestResultView> =
            chunks.iter().flat_map(|chunk| decode_entry(&chunk_key(7, 0), chunk).unwrap()).collect();
        assert_eq!(read, results);
        assert!(encode_chunks(&[]).is_empty());
        for chunk in &chunks {
            let first = decode_entry(&chunk_key(7, 0), chunk).unwrap()[0].test_id.clone();
            assert_eq!(chunk_first_test_id(chunk).unwrap(), Some(first));
        }
        assert_eq!(chunk_first_test_id(&encode_pack(&[])).unwrap(), None);
    }

    #[test]
    fn a_value_from_before_the_binary_format_still_reads() {
        let json = serde_json::to_vec(&full("t", 3)).unwrap();
        assert_eq!(decode_entry(&result_key(1, "t", 3), &json).unwrap(), vec![full("t", 3)]);
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let pack = encode_pack(&[full("a", 1), bare("b")]);
        for len in 0..pack.len() {
            assert!(decode_entry(&chunk_key(1, 0), &pack[..len]).is_err(), "truncated at {len}");
        }
        let one = encode_result(&full("a", 1));
        for len in 1..one.len() {
            assert!(decode_entry(&result_key(1, "a", 1), &one[..len]).is_err(), "truncated at {len}");
        }
        assert!(decode_entry(&result_key(1, "a", 1), &[9, 0]).is_err());
    }
}
