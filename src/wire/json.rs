//! JSON text primitives exactly as Mesos (stout `jsonify`) writes them, and the lenient
//! base64 reading of stout's `base64::decode`.
//!
//! stout escapes `"`, `\`, `/`, the C escapes `\b \f \n \r \t`, and every other byte below
//! 0x20 (and 0x7f) as `\u00xx`; other bytes pass through. Because `/` is escaped, a base64
//! payload containing `/` appears as `\/` in Mesos's records, and so in ours.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends `s` as a JSON string literal, quotes included.
pub(crate) fn write_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &c in s {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.extend_from_slice(b"\\/"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 || c == 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
            c => out.push(c),
        }
    }
    out.push(b'"');
}

/// Appends standard padded base64 of `data`, with `/` written as `\/` (stout's escaping),
/// without quotes: the inside of a JSON string.
pub(crate) fn write_base64(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len().div_ceil(3) * 4 + data.len() / 16);
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        let idx = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        if idx.contains(&63) {
            for i in idx {
                push_sextet(i, out);
            }
        } else {
            out.extend_from_slice(&idx.map(|i| B64[i as usize]));
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let b1 = rest.get(1).copied().unwrap_or(0);
        let n = (u32::from(rest[0]) << 16) | (u32::from(b1) << 8);
        push_sextet((n >> 18) & 63, out);
        push_sextet((n >> 12) & 63, out);
        if rest.len() == 2 {
            push_sextet((n >> 6) & 63, out);
        } else {
            out.push(b'=');
        }
        out.push(b'=');
    }
}

fn push_sextet(i: u32, out: &mut Vec<u8>) {
    if i == 63 {
        out.extend_from_slice(b"\\/");
    } else {
        out.push(B64[i as usize]);
    }
}

/// Decodes base64 as stout does: whitespace is skipped, decoding stops at the first `=`,
/// missing padding is accepted, and any character outside the standard alphabet
/// (including URL-safe `-` and `_`) is an error.
pub(crate) fn decode_base64_lenient(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in text.chars() {
        let v = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '+' => 62,
            '/' => 63,
            '=' => break,
            c if c.is_ascii_whitespace() => continue,
            c => return Err(format!("Invalid character '{c}'")),
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use proptest::prelude::*;

    #[test]
    fn escapes_like_stout() {
        let mut out = Vec::new();
        write_string(b"a\"b\\c/d\x08\x0c\n\r\t\x01\x7f\xc3\xa9", &mut out);
        assert_eq!(
            out,
            br#""a\"b\\c\/d\b\f\n\r\t\u0001\u007f"#.iter().copied().chain(*b"\xc3\xa9\"").collect::<Vec<u8>>()
        );
    }

    #[test]
    fn base64_golden() {
        let mut out = Vec::new();
        write_base64(b"hi\n", &mut out);
        assert_eq!(out, b"aGkK");
        out.clear();
        write_base64(&[0xff, 0xff, 0xff, 0xfb], &mut out);
        assert_eq!(out, b"\\/\\/\\/\\/+w==");
    }

    #[test]
    fn lenient_decoding() {
        assert_eq!(decode_base64_lenient("aGkK").unwrap(), b"hi\n");
        assert_eq!(decode_base64_lenient(" aG\nkK ").unwrap(), b"hi\n");
        assert_eq!(decode_base64_lenient("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64_lenient("aGk=garbage after padding").unwrap(), b"hi");
        assert_eq!(decode_base64_lenient("").unwrap(), b"");
        assert!(
            decode_base64_lenient("a-b_")
                .unwrap_err()
                .contains("Invalid character '-'")
        );
    }

    proptest! {
        #[test]
        fn base64_matches_standard_engine(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut ours = Vec::new();
            write_base64(&data, &mut ours);
            let standard = base64::engine::general_purpose::STANDARD.encode(&data);
            prop_assert_eq!(String::from_utf8(ours).unwrap(), standard.replace('/', "\\/"));
            prop_assert_eq!(decode_base64_lenient(&standard).unwrap(), data);
        }
    }
}
