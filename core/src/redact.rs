//! Secrets out of logs and error messages: connection URLs are shown with their password and
//! secret query parameters replaced by `***`, and a text that may quote a URL (a driver's
//! error) can be scrubbed of the secrets that URL holds.

/// Query parameters whose values are secrets (compared without case; a name containing one of
/// these counts: `tlsCertificateKeyFilePassword`, `authMechanismProperties`, `sessionToken`…).
const SECRET_PARAMS: [&str; 5] = [
    "password",
    "secret",
    "token",
    "authmechanismproperties",
    "apikey",
];

/// `url` with the password of its user info and the values of secret query parameters
/// replaced by `***`: `mongodb://app:***@db:27017/lts?authSource=admin`. Text that is not a
/// URL comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((creds, hosts)) => match creds.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_secret(key) => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| key.contains(s))
}

/// The secrets `url` holds: its password and the values of its secret query parameters, raw
/// and percent-decoded (non-empty ones only).
fn secrets(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = Vec::new();
    if let Some((creds, _)) = authority.rsplit_once('@')
        && let Some((_, password)) = creds.split_once(':')
    {
        out.push(password.to_string());
    }
    if let Some((_, query)) = tail.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && is_secret(key)
            {
                out.push(value.to_string());
            }
        }
    }
    let decoded: Vec<String> = out.iter().filter_map(|s| percent_decode(s)).collect();
    out.extend(decoded);
    out.retain(|s| !s.is_empty());
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `%XX` sequences decoded, when there are any and they decode to UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `text` (an error message, say) with every secret of `url` replaced by `***`, and `url`
/// itself by its [`redact_url`] form.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    for secret in secrets(url) {
        out = out.replace(&secret, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_parameters_are_hidden() {
        assert_eq!(
            redact_url(
                "mongodb://app:s3cret@db1:27017,db2/lts?authSource=admin&tlsCertificateKeyFilePassword=pem-pass"
            ),
            "mongodb://app:***@db1:27017,db2/lts?authSource=admin&tlsCertificateKeyFilePassword=***"
        );
        assert_eq!(
            redact_url(
                "mongodb://db:27017/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:abc"
            ),
            "mongodb://db:27017/?authMechanism=MONGODB-AWS&authMechanismProperties=***"
        );
        assert_eq!(redact_url("mongodb://a:b@h?x=1"), "mongodb://a:***@h?x=1");
        assert_eq!(redact_url("mongodb://h:1/db"), "mongodb://h:1/db");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn an_error_quoting_the_secrets_is_scrubbed() {
        let url = "mongodb://app:p%40ss@db/lts?sessionToken=tok123";
        let error = "auth failed for app with p@ss (token tok123) at mongodb://app:p%40ss@db/lts?sessionToken=tok123";
        let clean = scrub(error, url);
        assert!(
            !clean.contains("p@ss") && !clean.contains("p%40ss") && !clean.contains("tok123"),
            "{clean}"
        );
        assert!(
            clean.contains("mongodb://app:***@db/lts?sessionToken=***"),
            "{clean}"
        );
    }
}
