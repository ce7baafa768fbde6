//! The parts of an HTTP response head the sources act on, as pure, fuzzable functions.
//!
//! Sizes, ranges, redirects and token challenges, each parsed on its own so that it can be
//! fuzzed (`fuzz/fuzz_targets/http_head.rs`). Everything here answers `None`/`Err` for input
//! it does not fully understand; nothing panics, whatever the server sent.

use ureq::http::Uri;

/// Largest blob size accepted from a server or a file: the kernel keeps sizes in a signed
/// 64-bit `loff_t`, and `copen` carries a negative size as an error, so anything at or above
/// 2^63 would turn into an errno. 2^50 (1 PiB) is far above any image and leaves room for
/// page rounding and readahead arithmetic.
pub const MAX_BLOB_SIZE: u64 = 1 << 50;

/// How many redirects one request may follow.
pub const MAX_REDIRECTS: usize = 5;

/// A `Content-Length` value: decimal digits only (no sign, no spaces inside, no list).
pub fn parse_content_length(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// A size a server or file reported, accepted only when the kernel can take it.
pub fn check_size(size: u64) -> Result<u64, String> {
    if size > MAX_BLOB_SIZE {
        Err(format!(
            "size {size} is beyond the largest blob accepted ({MAX_BLOB_SIZE} bytes)"
        ))
    } else {
        Ok(size)
    }
}

/// The `Content-Range: bytes a-b/total` header of a 206, with `a <= b` (and `b < total`).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(parse_content_length(total)?)
    };
    let (a, b) = (parse_content_length(a)?, parse_content_length(b)?);
    if a > b || total.is_some_and(|t| b >= t) {
        return None;
    }
    Some((a, b, total))
}

/// `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` → the realm and the other
/// parameters, in order.
pub fn parse_bearer_challenge(v: &str) -> Option<(String, Vec<(String, String)>)> {
    let v = v.trim();
    let rest = match v.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => &v[7..],
        _ => return None,
    };
    let mut realm = None;
    let mut params = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let (value, after) = after.split_once('"')?;
        let key = key.trim().trim_start_matches(',').trim();
        if key.is_empty() {
            return None;
        }
        if key.eq_ignore_ascii_case("realm") {
            realm = Some(value.to_string());
        } else {
            params.push((key.to_string(), value.to_string()));
        }
        s = after.trim_start_matches(',').trim_start();
    }
    Some((realm?, params))
}

/// Where a request may go: scheme, host and port of an absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

/// The origin of an absolute `http://` or `https://` URL with a host.
pub fn origin(url: &str) -> Result<Origin, String> {
    origin_and_userinfo(url).map(|(o, _)| o)
}

fn origin_and_userinfo(url: &str) -> Result<(Origin, bool), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("{} is not a valid URL", redact(url)))?;
    let https = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        _ => return Err(format!("{} is not an http or https URL", redact(url))),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{} has no host", redact(url)))?;
    let userinfo = authority.as_str().contains('@');
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("{} has no host", redact(url)));
    }
    let origin = Origin {
        https,
        host: host.to_ascii_lowercase(),
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
    };
    Ok((origin, userinfo))
}

/// The URL a `Location` header sends a request at `from` to, if it may be followed: http or
/// https only, with a host, without user info, and never from https to http.
pub fn redirect_target(from: &str, location: &str) -> Result<String, String> {
    let from_origin = origin(from)?;
    let location = location.trim();
    let location = location.split_once('#').map_or(location, |(l, _)| l);
    let has_scheme = location.split_once(':').is_some_and(|(s, _)| {
        !s.is_empty()
            && s.as_bytes()[0].is_ascii_alphabetic()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    let (scheme, authority_and_path) = split_scheme(from).ok_or("bad base URL")?;
    let authority_end = authority_and_path
        .find(['/', '?'])
        .unwrap_or(authority_and_path.len());
    let authority = &authority_and_path[..authority_end];
    let target = if has_scheme {
        location.to_string()
    } else if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = &authority_and_path[authority_end..];
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let dir = match path.rfind('/') {
            Some(i) => &path[..=i],
            None => "/",
        };
        if location.starts_with('?') {
            let file = if path.is_empty() { "/" } else { path };
            format!("{scheme}://{authority}{file}{location}")
        } else {
            format!("{scheme}://{authority}{dir}{location}")
        }
    };
    let (to, userinfo) =
        origin_and_userinfo(&target).map_err(|e| format!("redirect refused: {e}"))?;
    if userinfo {
        return Err(format!(
            "redirect refused: {} carries user info",
            redact(&target)
        ));
    }
    if from_origin.https && !to.https {
        return Err(format!(
            "redirect refused: {} would downgrade https to http",
            redact(&target)
        ));
    }
    Ok(target)
}

fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    Some((scheme, rest))
}

/// A URL fit for logs and error messages: no user info, no query (pre-signed blob storage
/// URLs carry their signature there) and no fragment. It is also given what is not a URL yet
/// (a proxy setting without its scheme), and a password typed into a setting is not escaped:
/// it may hold `/`, `?`, `#` or `://`. So everything up to the last `@` goes, before the
/// query is looked for; a path holding an `@` loses more than it must, never a secret.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            (Some(scheme), rest)
        }
        _ => (None, url),
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_length() {
        assert_eq!(
            parse_content_range("bytes 0-4095/10000"),
            Some((0, 4095, Some(10000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("bytes 9-5/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes +0-5/100"), None);
        assert_eq!(parse_content_length(" 42 "), Some(42));
        assert_eq!(parse_content_length("+42"), None);
        assert_eq!(parse_content_length("-1"), None);
        assert_eq!(parse_content_length("1, 1"), None);
        assert_eq!(parse_content_length("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_content_length("18446744073709551616"), None);
        assert!(check_size(u64::MAX).is_err());
        assert!(check_size(i64::MAX as u64).is_err());
        assert_eq!(check_size(MAX_BLOB_SIZE), Ok(MAX_BLOB_SIZE));
    }

    #[test]
    fn challenges() {
        let (realm, params) = parse_bearer_challenge(r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:library/app:pull""#).unwrap();
        assert_eq!(realm, "https://auth.example.org/token");
        assert_eq!(
            params,
            vec![
                ("service".into(), "registry.example.org".into()),
                ("scope".into(), "repository:library/app:pull".into())
            ]
        );
        assert!(parse_bearer_challenge("Basic realm=\"x\"").is_none());
        assert!(parse_bearer_challenge("Bearer service=\"x\"").is_none());
        assert!(parse_bearer_challenge("Bearer realm=x").is_none());
        assert!(parse_bearer_challenge("Bearé").is_none());
    }

    #[test]
    fn redirects_are_validated() {
        let from = "https://reg.example.org:5000/v2/app/blobs/sha256:ab?x=1";
        assert_eq!(
            redirect_target(from, "/other/path").unwrap(),
            "https://reg.example.org:5000/other/path"
        );
        assert_eq!(
            redirect_target(from, "https://cdn.example.net/b?sig=1").unwrap(),
            "https://cdn.example.net/b?sig=1"
        );
        assert_eq!(
            redirect_target(from, "//cdn.example.net/b").unwrap(),
            "https://cdn.example.net/b"
        );
        assert_eq!(
            redirect_target(from, "sibling").unwrap(),
            "https://reg.example.org:5000/v2/app/blobs/sibling"
        );
        for bad in [
            "file:///etc/passwd",
            "http://cdn.example.net/b",
            "https:///nohost",
            "https://user:pw@cdn.example.net/b",
            "gopher://x/",
            "https://",
            "//",
            "https://a b/",
        ] {
            assert!(redirect_target(from, bad).is_err(), "{bad}");
        }
        // Plain http may go to http or upgrade to https.
        assert!(redirect_target("http://r/x", "http://cdn/y").is_ok());
        assert!(redirect_target("http://r/x", "https://cdn/y").is_ok());
        assert!(redirect_target("http://r/x", "file:///etc/passwd").is_err());
    }

    #[test]
    fn redaction_drops_every_password() {
        // A password is whatever stands before the last `@`, and may hold `/`, `?`, `#` or
        // `://` unescaped: none of it may reach a message, with or without a scheme.
        for (url, shown) in [
            ("http://u:hunter2@proxy:3128", "http://proxy:3128"),
            ("u:hunter2@proxy:3128", "proxy:3128"),
            ("http://u:hun?ter2@proxy:3128", "http://proxy:3128"),
            ("http://u:hun#ter2@proxy:3128/", "http://proxy:3128/"),
            ("http://u:hun/ter2@proxy:3128/p", "http://proxy:3128/p"),
            ("u:hun://ter2@proxy", "proxy"),
            ("https://r.test/v2/a?sig=hunter2", "https://r.test/v2/a"),
        ] {
            let r = redact(url);
            assert!(!r.contains("hunter2") && !r.contains("hun"), "{url} -> {r}");
            assert_eq!(r, shown, "{url}");
        }
    }

    proptest::proptest! {
        /// What the `http_head` fuzz target checks, on random header values.
        #[test]
        fn parsers_keep_their_promises(
            value in "\\PC{0,60}",
            location in "(https?:|HTTPS?:|file:|//|/)?[a-z0-9@:/?#.%\\[\\] -]{0,40}",
        ) {
            if let Some(n) = parse_content_length(&value) {
                proptest::prop_assert!(value.trim().bytes().all(|b| b.is_ascii_digit()));
                if let Ok(size) = check_size(n) {
                    proptest::prop_assert!(size < i64::MAX as u64);
                }
            }
            if let Some((a, b, total)) = parse_content_range(&value) {
                proptest::prop_assert!(a <= b && total.is_none_or(|t| b < t));
            }
            let _ = parse_bearer_challenge(&value);
            for from in ["https://reg.example:5000/v2/a?q=1", "http://reg.example/b"] {
                for loc in [&value, &location] {
                    if let Ok(to) = redirect_target(from, loc) {
                        let o = origin(&to).unwrap();
                        proptest::prop_assert!(!o.host.is_empty());
                        proptest::prop_assert!(o.https || from.starts_with("http:"));
                    }
                }
            }
            let r = redact(&location);
            proptest::prop_assert!(!r.contains('?') && !r.contains('#'));
        }
    }

    #[test]
    fn origins_and_redaction() {
        assert_eq!(
            origin("HTTP://Reg.Example.org/x").unwrap(),
            Origin {
                https: false,
                host: "reg.example.org".into(),
                port: 80
            }
        );
        assert!(origin("ftp://x/").is_err());
        assert!(origin("/relative").is_err());
        assert_eq!(
            redact("https://u:secret@h:1/p/q?X-Amz-Signature=secret#f"),
            "https://h:1/p/q"
        );
        assert_eq!(redact("not a url"), "not a url");
    }
}
