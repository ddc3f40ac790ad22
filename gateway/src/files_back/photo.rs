//! Whether Telegram takes a file as a photo (`sendPhoto`): a JPEG, PNG or WebP of at most
//! 10 MB whose width and height add up to at most 10000 and differ by at most a factor of
//! 20 (the Bot API's rules). Anything else, or an image whose size cannot be read from
//! its head, goes as a document, which Telegram takes whatever it is. Telegram refusing a
//! photo anyway is handled where it is sent: it goes again as a document.

use super::TELEGRAM_MAX_PHOTO;

/// Whether a file of `size` bytes starting with `head` goes as a photo.
pub fn takes_as_photo(head: &[u8], size: u64) -> bool {
    if size > TELEGRAM_MAX_PHOTO {
        return false;
    }
    match dimensions(head) {
        Some((w, h)) if w > 0 && h > 0 => {
            let (w, h) = (u64::from(w), u64::from(h));
            w + h <= 10_000 && w.max(h) <= 20 * w.min(h)
        }
        _ => false,
    }
}

/// Width and height of a PNG, JPEG or WebP, from its first bytes.
fn dimensions(head: &[u8]) -> Option<(u32, u32)> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") && head.get(12..16) == Some(b"IHDR") {
        return Some((be32(head, 16)?, be32(head, 20)?));
    }
    if head.starts_with(&[0xFF, 0xD8]) {
        return jpeg(head);
    }
    if head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WEBP") {
        return webp(head);
    }
    None
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}

/// The first start-of-frame segment's size, walking the segments from the start.
fn jpeg(b: &[u8]) -> Option<(u32, u32)> {
    let mut at = 2;
    loop {
        // Fill bytes before a marker.
        while *b.get(at)? == 0xFF && *b.get(at + 1)? == 0xFF {
            at += 1;
        }
        if *b.get(at)? != 0xFF {
            return None;
        }
        let marker = *b.get(at + 1)?;
        let length = be16(b, at + 2)? as usize;
        let start_of_frame = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if start_of_frame {
            return Some((be16(b, at + 7)?, be16(b, at + 5)?));
        }
        if length < 2 {
            return None;
        }
        at += 2 + length;
    }
}

fn webp(b: &[u8]) -> Option<(u32, u32)> {
    match b.get(12..16)? {
        b"VP8 " => Some((le16(b, 26)? & 0x3FFF, le16(b, 28)? & 0x3FFF)),
        b"VP8L" => {
            let bits = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
            Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        }
        b"VP8X" => Some((le24(b, 24)? + 1, le24(b, 27)? + 1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn png(width: u32, height: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        b.extend_from_slice(&width.to_be_bytes());
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&[8, 6, 0, 0, 0]);
        b
    }

    #[test]
    fn photos_are_images_telegram_takes_as_photos() {
        assert!(takes_as_photo(&png(640, 480), 1000));
        assert!(!takes_as_photo(&png(640, 480), TELEGRAM_MAX_PHOTO + 1));
        assert!(!takes_as_photo(&png(9000, 2000), 1000), "too large");
        assert!(!takes_as_photo(&png(2100, 100), 1000), "too narrow");
        assert!(!takes_as_photo(b"GIF89a....", 1000));
        assert!(!takes_as_photo(b"a,b\n1,2\n", 8));
        // A JPEG: SOI, an APP0 segment, then SOF0 with height 300 and width 400.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0, 0];
        jpeg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01, 0x2C, 0x01, 0x90]);
        assert_eq!(dimensions(&jpeg), Some((400, 300)));
        assert!(takes_as_photo(&jpeg, 5000));
        // A truncated JPEG: no size, a document.
        assert_eq!(dimensions(&jpeg[..10]), None);
    }
}
