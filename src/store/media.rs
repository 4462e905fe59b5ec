//! What a file is, judged by its bytes: the image and document formats models accept, and text
//! (valid UTF-8 without NUL bytes). A name only ever narrows this down: a file whose extension
//! promises one format and whose bytes are another is refused, never trusted.

/// What an accepted file is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Shown to models that accept images.
    Image,
    /// A PDF document, sent to models that accept images and documents.
    Pdf,
    /// Inlined into the prompt as text.
    Text,
}

/// An accepted file's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniffed {
    pub media_type: &'static str,
    pub class: Class,
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The accepted type of `bytes`, or `None` for anything else (executables, archives, other
/// binaries, text that is not UTF-8).
pub fn sniff(bytes: &[u8]) -> Option<Sniffed> {
    let image = |media_type| {
        Some(Sniffed {
            media_type,
            class: Class::Image,
        })
    };
    if bytes.starts_with(PNG) {
        return image("image/png");
    }
    if bytes.starts_with(b"\xff\xd8\xff") {
        return image("image/jpeg");
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return image("image/gif");
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return image("image/webp");
    }
    if bytes.starts_with(b"%PDF-") {
        return Some(Sniffed {
            media_type: "application/pdf",
            class: Class::Pdf,
        });
    }
    if !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok() {
        return Some(Sniffed {
            media_type: "text/plain",
            class: Class::Text,
        });
    }
    None
}

/// The binary type a file name's extension promises, if it names one this module knows.
pub fn promised_by_name(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

/// A readable guess at what refused bytes are, for the error message.
pub fn describe(bytes: &[u8]) -> &'static str {
    let known: [(&[u8], &str); 8] = [
        (b"\x7fELF", "an ELF executable"),
        (b"MZ", "a Windows executable"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x1f\x8b", "a gzip archive"),
        (b"7z\xbc\xaf", "a 7-Zip archive"),
        (b"<svg", "an SVG image"),
        (b"II*\x00", "a TIFF image"),
        (b"BM", "a BMP image"),
    ];
    for (magic, what) in known {
        if bytes.starts_with(magic) {
            return what;
        }
    }
    if bytes.contains(&0) {
        "binary data"
    } else {
        "text that is not valid UTF-8"
    }
}

/// The accepted types, for messages.
pub const ACCEPTED: &str = "PNG, JPEG, GIF, WebP, PDF, or UTF-8 text";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_decide_and_names_only_narrow() {
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n....").map(|s| s.media_type),
            Some("image/png")
        );
        assert_eq!(
            sniff(b"\xff\xd8\xff\xe0").map(|s| s.class),
            Some(Class::Image)
        );
        assert_eq!(
            sniff(b"RIFF\0\0\0\0WEBPVP8 ").map(|s| s.media_type),
            Some("image/webp")
        );
        assert_eq!(sniff(b"%PDF-1.7").map(|s| s.class), Some(Class::Pdf));
        assert_eq!(
            sniff("fn main() {}\n".as_bytes()).map(|s| s.class),
            Some(Class::Text)
        );
        assert_eq!(sniff(b"\x7fELF\x02\x01\x01\0"), None);
        assert_eq!(sniff(b"PK\x03\x04\x14\0"), None);
        assert_eq!(sniff(b"caf\xe9"), None, "Latin-1 is not UTF-8");
        assert_eq!(sniff(b"a\0b"), None, "NUL bytes make it binary");
        assert_eq!(describe(b"\x7fELF\x02"), "an ELF executable");
        assert_eq!(promised_by_name("shot.PNG"), Some("image/png"));
        assert_eq!(promised_by_name("main.rs"), None);
    }
}
