//! Text encodings the sources use: JSON strings, CSV fields, euro amounts.
//!
//! Hand-written rather than serde so that millions of event properties are built in one reused
//! buffer, with a fixed key order that keeps the output byte-stable.

use std::fmt::Write;

/// Appends `s` as a JSON string literal, quotes included.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    json_escaped(out, s);
    out.push('"');
}

/// Appends `"key":"<parts joined>"` without building the joined string first.
pub fn json_concat(out: &mut String, key: &str, parts: &[&str]) {
    json_key(out, key);
    out.push('"');
    for part in parts {
        json_escaped(out, part);
    }
    out.push('"');
}

fn json_escaped(out: &mut String, s: &str) {
    // Copy runs of plain text at once; the bytes that need escaping are all ASCII, so every
    // split point is a char boundary.
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Appends `"key":"value"` (with a leading comma unless the object is just opened).
pub fn json_field(out: &mut String, key: &str, value: &str) {
    json_key(out, key);
    json_str(out, value);
}

/// Appends `"key":` followed by `value` or `null`.
pub fn json_opt(out: &mut String, key: &str, value: Option<&str>) {
    json_key(out, key);
    match value {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

/// Appends `"key":<raw>` where raw is already valid JSON (a number, a literal).
pub fn json_raw(out: &mut String, key: &str, raw: impl std::fmt::Display) {
    json_key(out, key);
    let _ = write!(out, "{raw}");
}

fn json_key(out: &mut String, key: &str) {
    if !out.ends_with('{') {
        out.push(',');
    }
    json_str(out, key);
    out.push(':');
}

/// Euro cents as a decimal number: 1299 → "12.99".
pub struct Euros(pub i64);

impl std::fmt::Display for Euros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// Appends one CSV field, quoted when a reader could otherwise misread it (RFC 4180, plus
/// leading or trailing spaces, which some readers trim).
pub fn csv_field(out: &mut String, value: &str) {
    let needs_quotes =
        value.contains([',', '"', '\n', '\r']) || value.starts_with(' ') || value.ends_with(' ');
    if needs_quotes {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// Appends a whole CSV record and its line end.
pub fn csv_record<'a>(out: &mut String, fields: impl IntoIterator<Item = &'a str>) {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        let mut out = String::new();
        csv_record(
            &mut out,
            [
                "N'Diaye",
                "Martin, ép. Durand",
                " a@b.fr ",
                "say \"hi\"",
                "",
            ],
        );
        assert_eq!(
            out,
            "N'Diaye,\"Martin, ép. Durand\",\" a@b.fr \",\"say \"\"hi\"\"\",\n"
        );
    }

    #[test]
    fn json_is_escaped_and_ordered() {
        let mut out = String::from("{");
        json_field(&mut out, "name", "Tuyau d'arrosage \"pro\"\n");
        json_field(&mut out, "c", "é\u{1}\\");
        json_raw(&mut out, "price", Euros(1299));
        json_opt(&mut out, "category", None);
        out.push('}');
        assert_eq!(
            out,
            r#"{"name":"Tuyau d'arrosage \"pro\"\n","c":"é\u0001\\","price":12.99,"category":null}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(parsed["price"], 12.99);
        assert_eq!(Euros(-5).to_string(), "-0.05");
    }
}
