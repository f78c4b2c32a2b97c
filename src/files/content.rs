//! What a file is, judged by its bytes: text (UTF-8, no NUL), PDF, PNG or JPEG, and whether its
//! name's extension agrees; and file names made safe (no path, no control characters, bounded).

/// Longest file name kept, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// The kinds of file the workspace accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text with no NUL byte (plain text, Markdown, CSV, JSON, YAML, XML, HTML, logs).
    Text,
    /// A PDF document (`%PDF-`).
    Pdf,
    /// A PNG image.
    Png,
    /// A JPEG image.
    Jpeg,
}

impl Kind {
    /// What the bytes are, if an accepted kind.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"%PDF-") {
            Some(Self::Pdf)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok() {
            Some(Self::Text)
        } else {
            None
        }
    }

    /// The kind a name's extension promises (`None`: no or an unknown extension).
    fn of_extension(extension: &str) -> Option<Self> {
        Some(match extension.to_ascii_lowercase().as_str() {
            "txt" | "md" | "markdown" | "csv" | "tsv" | "json" | "yaml" | "yml" | "xml"
            | "html" | "htm" | "log" | "toml" | "ini" => Self::Text,
            "pdf" => Self::Pdf,
            "png" => Self::Png,
            "jpg" | "jpeg" => Self::Jpeg,
            _ => return None,
        })
    }

    /// The stored media type of a file of this kind called `name`.
    pub fn media_type(self, name: &str) -> &'static str {
        match self {
            Self::Pdf => "application/pdf",
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Text => match extension(name).map(str::to_ascii_lowercase).as_deref() {
                Some("md" | "markdown") => "text/markdown",
                Some("csv") => "text/csv",
                Some("tsv") => "text/tab-separated-values",
                Some("json") => "application/json",
                Some("yaml" | "yml") => "application/yaml",
                Some("xml") => "application/xml",
                Some("html" | "htm") => "text/html",
                _ => "text/plain",
            },
        }
    }

    /// How a user would call it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Pdf => "a PDF",
            Self::Png => "a PNG image",
            Self::Jpeg => "a JPEG image",
        }
    }
}

/// The extension of `name`, if it has one.
fn extension(name: &str) -> Option<&str> {
    name.rsplit_once('.')
        .map(|(_, ext)| ext)
        .filter(|ext| !ext.is_empty())
}

/// Checks `bytes` against `name`: an accepted kind whose extension (if any) agrees. The error
/// says why, for the user.
pub fn check(name: &str, bytes: &[u8]) -> Result<Kind, String> {
    let Some(kind) = Kind::sniff(bytes) else {
        return Err(
            "the content is not an accepted kind: UTF-8 text (txt, md, csv, json, yaml, xml, \
             html …), PDF, PNG or JPEG"
                .into(),
        );
    };
    match extension(name) {
        None => Ok(kind),
        Some(ext) => match Kind::of_extension(ext) {
            Some(promised) if promised == kind => Ok(kind),
            Some(promised) => Err(format!(
                "the name says .{ext} ({}), but the content is {}",
                promised.describe(),
                kind.describe()
            )),
            None if kind == Kind::Text => Ok(kind),
            None => Err(format!(
                "the content is {}, but the name ends in .{ext}",
                kind.describe()
            )),
        },
    }
}

/// A safe file name from what a client or a model sent: the last path component, without
/// control characters, trimmed of spaces and dots, at most [`MAX_NAME_CHARS`]; `None` when
/// nothing is left.
pub fn sanitize(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| c.is_whitespace() || c == '.');
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_bytes_and_the_name_must_agree() {
        assert_eq!(check("notes.md", b"# Title\n"), Ok(Kind::Text));
        assert_eq!(check("README", b"plain"), Ok(Kind::Text));
        assert_eq!(check("report.pdf", b"%PDF-1.7\n..."), Ok(Kind::Pdf));
        assert!(
            check("photo.png", b"just text")
                .unwrap_err()
                .contains("name says .png")
        );
        assert!(
            check("tool.exe", b"MZ\x90\x00\x03")
                .unwrap_err()
                .contains("not an accepted kind")
        );
        assert!(
            check("x.bin", b"%PDF-1.4")
                .unwrap_err()
                .contains("ends in .bin")
        );
        assert_eq!(Kind::Text.media_type("data.csv"), "text/csv");
    }

    #[test]
    fn names_lose_paths_and_control_characters() {
        assert_eq!(sanitize("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(
            sanitize("C:\\Users\\me\\plan.txt").as_deref(),
            Some("plan.txt")
        );
        assert_eq!(sanitize("a\u{0}b\nc.txt").as_deref(), Some("abc.txt"));
        assert_eq!(sanitize(" .. "), None);
        assert_eq!(
            sanitize(&"x".repeat(500)).map(|n| n.len()),
            Some(MAX_NAME_CHARS)
        );
    }
}
