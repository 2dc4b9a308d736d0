//! Small string work shared across the crates.

/// `text` cut to at most `max` bytes, on a character boundary so the result is still UTF-8:
/// for free text stored or logged with a bound (a user agent, a delivery error), where losing
/// the tail is fine but panicking mid-character is not.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_a_char_boundary() {
        // 300 bytes of two-byte characters: 200 would split none, 199 splits one.
        assert_eq!(truncate("é".repeat(150), 200), "é".repeat(100));
        assert_eq!(truncate("é".repeat(150), 199), "é".repeat(99));
        assert_eq!(truncate("short".to_owned(), 10), "short");
        assert_eq!(truncate("exact".to_owned(), 5), "exact");
    }
}
