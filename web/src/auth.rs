//! Who may use the gateway: every request carries its token (a cookie set by the one-time
//! URL printed at start, `Authorization: Bearer`, or the query parameter `token`), and a
//! WebSocket upgrade from a browser comes from a page of this very host (its `Origin`
//! names the `Host` it was sent to), so another site's page cannot attach with the
//! user's cookie (cross-site WebSocket hijacking).

use axum::http::{HeaderMap, header};

/// The name of the cookie that carries the token for the page of the gateway on `port`.
/// A browser sends a host's cookies to every port of it: gateways on two ports must not
/// overwrite each other's.
pub fn cookie_name(port: u16) -> String {
    format!("switchboard_token_{port}")
}

/// A random token: 128 bits from the kernel, in hex.
pub fn random_token() -> std::io::Result<String> {
    switchboard::sys::random_hex(16)
}

/// Whether `token` can travel in a cookie, a header and a URL as it is.
pub fn check_token(token: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    match token.len() {
        0..16 => Err("a token has at least 16 characters".into()),
        _ if !token.chars().all(ok) => Err("a token has only letters, digits and - . _ ~".into()),
        _ => Ok(()),
    }
}

/// Compares in a time that does not tell how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries, from wherever it is (`cookie`: the cookie's name).
pub fn carried<'a>(headers: &'a HeaderMap, query: Option<&'a str>, cookie: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    for v in headers.get_all(header::AUTHORIZATION) {
        if let Some(t) = v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            found.push(t.trim());
        }
    }
    for v in headers.get_all(header::COOKIE) {
        let pairs = v.to_str().unwrap_or("").split(';').map(str::trim);
        found.extend(pairs.filter_map(|p| p.strip_prefix(cookie)?.strip_prefix('=')));
    }
    found.extend(query_values(query, "token"));
    found
}

/// Whether the request carries `token` (`cookie`: the cookie's name).
pub fn allowed(token: &str, cookie: &str, headers: &HeaderMap, query: Option<&str>) -> bool {
    carried(headers, query, cookie).into_iter().any(|t| same(t, token))
}

/// The values of `name` in a query string (tokens are plain: no decoding needed).
pub fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(move |pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Whether a WebSocket upgrade may go on: programs send no `Origin`; a browser's page
/// must be of the host the request was sent to (`scheme://host[:port]` naming `Host`).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")));
    match (origin_host, host) {
        (Some(o), Some(h)) => o.eq_ignore_ascii_case(h),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const T: &str = "0123456789abcdef0123";

    #[test]
    fn the_token_is_found_wherever_it_is() {
        let c = &cookie_name(8080);
        let allowed = |h: &HeaderMap, q: Option<&str>| allowed(T, c, h, q);
        assert!(allowed(
            &headers(&[(header::AUTHORIZATION, &format!("Bearer {T}"))]),
            None
        ));
        assert!(allowed(&headers(&[(header::COOKIE, &format!("a=b; {c}={T}"))]), None));
        assert!(allowed(&HeaderMap::new(), Some(&format!("stdin=1&token={T}"))));
        assert!(!allowed(&HeaderMap::new(), None));
        assert!(!allowed(
            &headers(&[(header::AUTHORIZATION, "Bearer 0123456789abcdef0124")]),
            None
        ));
        assert!(!allowed(&headers(&[(header::COOKIE, &format!("x{c}={T}"))]), None));
        // Another port's gateway's cookie is not this one's.
        let other = cookie_name(8081);
        assert!(!allowed(&headers(&[(header::COOKIE, &format!("{other}={T}"))]), None));
        assert!(!allowed(&HeaderMap::new(), Some(&format!("xtoken={T}"))));
        assert!(!allowed(&HeaderMap::new(), Some("token=")));
    }

    #[test]
    fn tokens_are_long_and_plain() {
        assert!(check_token(T).is_ok());
        assert!(check_token("short").is_err());
        assert!(check_token("0123456789abcdef;0").is_err());
        let r = random_token().unwrap();
        assert_eq!(r.len(), 32);
        assert!(check_token(&r).is_ok());
        assert_ne!(r, random_token().unwrap());
    }

    #[test]
    fn only_this_hosts_pages_may_open_a_websocket() {
        assert!(same_origin(&headers(&[(header::HOST, "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "http://127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "http://127.0.0.1:8081")
        ])));
        assert!(!same_origin(&headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "null")
        ])));
        assert!(!same_origin(&headers(&[(header::ORIGIN, "http://127.0.0.1:8080")])));
    }
}
