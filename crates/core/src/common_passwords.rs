//! The list of common and breached passwords that the password policy refuses (NIST SP 800-63B
//! §5.1.1.2). Its source, licence and derivation are in `data/README.md`.
//!
//! It ships compressed inside the binary (147 KB) and is decompressed once, on the first
//! password checked, into one string of the sorted entries plus the offset of each: 452 536
//! bytes of text and 4 bytes an entry (46 483 entries), about 624 KiB in all, where a
//! `HashSet<String>` would take several times that. A look-up is a binary search.

use std::io::Read as _;
use std::sync::LazyLock;

use flate2::read::GzDecoder;

/// Sorted by bytes, one entry a line, each NFKC and lower-cased, each 8 to 1024 characters.
const COMPRESSED: &[u8] = include_bytes!("../data/common-passwords.txt.gz");

/// Decompressing takes a few milliseconds: done when the policy first needs it, not at start.
static LIST: LazyLock<Result<CommonPasswords, String>> =
    LazyLock::new(|| CommonPasswords::decode(COMPRESSED));

/// The list, or why it could not be read (only a broken build can make it unreadable, and the
/// policy then fails closed rather than accept every password).
pub fn list() -> Result<&'static CommonPasswords, &'static str> {
    LIST.as_ref().map_err(String::as_str)
}

pub struct CommonPasswords {
    /// Every entry followed by `\n`.
    text: String,
    /// Where each entry begins in `text`, in the entries' (sorted) order.
    starts: Vec<u32>,
}

impl CommonPasswords {
    fn decode(compressed: &[u8]) -> Result<Self, String> {
        let mut text = String::new();
        GzDecoder::new(compressed)
            .read_to_string(&mut text)
            .map_err(|e| format!("the common-password list cannot be decompressed: {e}"))?;
        let too_long = || "the common-password list is larger than 4 GiB".to_owned();
        let mut starts = Vec::with_capacity(text.len() / 9);
        let mut start = 0usize;
        for line in text.split_terminator('\n') {
            starts.push(u32::try_from(start).map_err(|_| too_long())?);
            start += line.len() + 1;
        }
        text.shrink_to_fit();
        starts.shrink_to_fit();
        Ok(Self { text, starts })
    }

    /// `folded` must be in the entries' form: NFKC, then lower-cased.
    pub fn contains(&self, folded: &str) -> bool {
        self.starts
            .binary_search_by(|&start| self.entry_at(start).cmp(folded))
            .is_ok()
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The heap the decompressed list holds, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.starts.capacity() * std::mem::size_of::<u32>()
    }

    fn entry_at(&self, start: u32) -> &str {
        let rest = usize::try_from(start)
            .ok()
            .and_then(|start| self.text.get(start..))
            .unwrap_or_default();
        rest.split('\n').next().unwrap_or_default()
    }

    #[cfg(test)]
    fn entries(&self) -> impl Iterator<Item = &str> {
        self.starts.iter().map(|&start| self.entry_at(start))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use unicode_normalization::UnicodeNormalization as _;

    #[test]
    fn the_list_holds_the_invariants_its_look_up_relies_on() {
        let list = list().unwrap();
        assert_eq!(list.len(), 46_483);
        let entries: Vec<&str> = list.entries().collect();
        assert!(
            entries.windows(2).all(|pair| pair[0] < pair[1]),
            "sorted by bytes, without duplicates"
        );
        for entry in &entries {
            let folded = entry.nfkc().collect::<String>().to_lowercase();
            assert_eq!(&folded, entry, "NFKC and lower-cased");
            assert!((8..=1024).contains(&entry.chars().count()), "{entry:?}");
        }
        // Text plus one offset an entry: the figure the module documentation gives.
        assert!(list.heap_bytes() < 640 * 1024, "{}", list.heap_bytes());
    }

    #[test]
    fn look_up_finds_every_entry_and_nothing_else() {
        let list = list().unwrap();
        assert!(list.entries().all(|entry| list.contains(entry)));
        for common in [
            "password",
            "iloveyou1",
            "qwertyuiop",
            "1q2w3e4r5t",
            "ятебялюблю",
        ] {
            assert!(list.contains(common), "{common}");
        }
        for absent in [
            "",
            "passwor",
            "Password",
            "correct horse battery",
            "\u{10FFFF}",
        ] {
            assert!(!list.contains(absent), "{absent}");
        }
    }

    #[test]
    fn a_damaged_list_is_an_error_not_a_panic() {
        assert!(CommonPasswords::decode(b"not gzip").is_err());
        assert!(CommonPasswords::decode(&COMPRESSED[..COMPRESSED.len() / 2]).is_err());
    }
}
