//! HTML escaping. Everything that comes from users (task and pipeline
//! names, output, file paths, errors, sync names) goes through `esc` before
//! it reaches a page or an SVG; `url` for a path segment in a link.

/// Escape for HTML/XML text and attribute values (`& < > " '`).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encode one path segment (everything but unreserved characters).
pub fn url(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Decode percent-encoding (`+` stays `+`); None if it is not UTF-8 or a
/// `%` is not followed by two hex digits.
pub fn unurl(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut o = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            o.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            o.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(o).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_round_trips_urls() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        let odd = "a b/<c>?&é";
        assert_eq!(url(odd), "a%20b%2F%3Cc%3E%3F%26%C3%A9");
        assert_eq!(unurl(&url(odd)).as_deref(), Some(odd));
        assert_eq!(unurl("%zz"), None);
        assert_eq!(unurl("%4"), None);
    }
}
