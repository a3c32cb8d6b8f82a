//! Text encodings the sources use: JSON strings, CSV fields, euro amounts.
//!
//! Hand-written rather than serde so that millions of event properties are built in one reused
//! buffer, with a fixed key order that keeps the output byte-stable.

use std::fmt::Write;

/// Appends `s` as a JSON string literal, quotes included.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
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
        json_raw(&mut out, "price", Euros(1299));
        json_opt(&mut out, "category", None);
        out.push('}');
        assert_eq!(
            out,
            r#"{"name":"Tuyau d'arrosage \"pro\"\n","price":12.99,"category":null}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(parsed["price"], 12.99);
        assert_eq!(Euros(-5).to_string(), "-0.05");
    }
}
