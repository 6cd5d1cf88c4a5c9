//! Compress and decompress individual blocks.
//!
//! These methods process all the input data at once.
//! It is therefore best used with relatively small blocks
//! (like small network packets).

mod compressor;
mod decompressor;

pub use self::compressor::Compressor;
pub use self::decompressor::Decompressor;

use std::io;

/// Compresses a single block of data to the given destination buffer.
///
/// Returns the number of bytes written, or an error if something happened
/// (for instance if the destination buffer was too small).
///
/// A level of `0` uses zstd's default (currently `3`).
pub fn compress_to_buffer(
    source: &[u8],
    destination: &mut [u8],
    level: i32,
) -> io::Result<usize> {
    Compressor::new().compress_to_buffer(source, destination, level)
}

/// Compresses a block of data and returns the compressed result.
///
/// A level of `0` uses zstd's default (currently `3`).
pub fn compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    // Greenlight: a message this short is stored, not compressed (see GREENLIGHT.md).
    if data.len() <= RAW_AT_MOST {
        return Ok(raw_frame(data));
    }
    // Greenlight: one context per thread, reused (see GREENLIGHT.md at the crate's root).
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Compressor> = std::cell::RefCell::new(Compressor::new());
    }
    COMPRESSOR.with(|compressor| match compressor.try_borrow_mut() {
        Ok(mut compressor) => compressor.compress(data, level),
        Err(_) => Compressor::new().compress(data, level),
    })
}

/// Greenlight: inputs of at most this many bytes are written as a frame of one raw block.
const RAW_AT_MOST: usize = 255;

/// Greenlight: a zstd frame holding `data` stored (RFC 8878: a single-segment frame whose
/// one-byte content size is `data`'s length, then one last block of type Raw), which every
/// zstd decoder reads. `data` is at most [`RAW_AT_MOST`] bytes.
fn raw_frame(data: &[u8]) -> Vec<u8> {
    debug_assert!(data.len() <= RAW_AT_MOST);
    let mut frame = Vec::with_capacity(data.len() + 9);
    frame.extend_from_slice(&0xFD2F_B528_u32.to_le_bytes());
    // Frame header descriptor: Single_Segment_flag set, a 1-byte Frame_Content_Size.
    frame.push(0b0010_0000);
    frame.push(data.len() as u8);
    // Block header: Last_Block, Block_Type Raw (0), Block_Size.
    let header = ((data.len() as u32) << 3) | 1;
    frame.extend_from_slice(&header.to_le_bytes()[..3]);
    frame.extend_from_slice(data);
    frame
}

/// Deompress a single block of data to the given destination buffer.
///
/// Returns the number of bytes written, or an error if something happened
/// (for instance if the destination buffer was too small).
pub fn decompress_to_buffer(
    source: &[u8],
    destination: &mut [u8],
) -> io::Result<usize> {
    Decompressor::new().decompress_to_buffer(source, destination)
}

/// Decompresses a block of data and returns the decompressed result.
///
/// The decompressed data should be less than `capacity` bytes,
/// or an error will be returned.
pub fn decompress(data: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
    // Greenlight: one context per thread, reused (see GREENLIGHT.md at the crate's root).
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Decompressor> = std::cell::RefCell::new(Decompressor::new());
    }
    DECOMPRESSOR.with(|decompressor| match decompressor.try_borrow_mut() {
        Ok(mut decompressor) => decompressor.decompress(data, capacity),
        Err(_) => Decompressor::new().decompress(data, capacity),
    })
}

#[cfg(test)]
mod tests {
    use super::{compress, decompress};

    #[test]
    fn test_direct() {
        // Can we include_str!("assets/example.txt")?
        // It's excluded from the packaging step, so maybe not.
        let text = include_str!("../../assets/example.txt");
        crate::test_cycle_unwrap(
            text.as_bytes(),
            |data| compress(data, 1),
            |data| decompress(data, text.len()),
        );
    }
}
