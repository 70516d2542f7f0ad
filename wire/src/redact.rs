//! Redaction of the secret parts of storage URIs: the user info (`user:password@`) and the
//! query string (a pre-signed URL's signature, an Azure SAS token). Every place that shows
//! a URI to a client or an operator (admin views, errors, logs, mmctl) shows it through
//! [`redact_uri`]; only the durable spec keeps the original.
//!
//! Works on text, not on a parsed URL, so that what is shown is exactly what was typed
//! minus the secrets (the `url` crate would normalise it), and so that malformed input and
//! URLs inside error messages ([`scrub_uris`]) are redacted by the same rule.

/// What replaces a secret part: `https://REDACTED@host/m.tar.gz?REDACTED`.
pub const REDACTED: &str = "REDACTED";

/// `uri` with its user info and query string replaced by [`REDACTED`] and its fragment
/// dropped; a URI without secrets is returned unchanged.
pub fn redact_uri(uri: &str) -> String {
    let (before_fragment, had_fragment) = match uri.split_once('#') {
        Some((head, _)) => (head, true),
        None => (uri, false),
    };
    let (head, query) = match before_fragment.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (before_fragment, None),
    };
    let mut out = String::with_capacity(uri.len());
    match head.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((_, host)) => {
                    out.push_str(REDACTED);
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(head),
    }
    if query.is_some() {
        out.push('?');
        out.push_str(REDACTED);
    }
    if had_fragment && query.is_none() {
        // A fragment is never sent to a server and never needed to find a model.
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

/// Whether `uri` carries a part [`redact_uri`] would hide.
pub fn has_secrets(uri: &str) -> bool {
    redact_uri(uri) != uri
}

/// `text` (an error message, a log line) with every `scheme://...` token in it redacted by
/// [`redact_uri`]. A token ends at whitespace, a quote, `)`, `>`, `]` or `,`.
pub fn scrub_uris(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: letters, digits, '+', '-', '.' just before "://".
        let scheme_start = rest[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(at, |(i, _)| i);
        let tail = &rest[at..];
        let token_end = at
            + tail
                .find(|c: char| {
                    c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ']' | ',')
                })
                .unwrap_or(tail.len());
        out.push_str(&rest[..scheme_start]);
        out.push_str(&redact_uri(&rest[scheme_start..token_end]));
        rest = &rest[token_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_user_info_and_query_and_keeps_the_rest_as_typed() {
        let cases = [
            (
                "https://user:pw@host:8443/a/x.tar.gz?X-Amz-Signature=secret&X-Amz-Expires=60",
                "https://REDACTED@host:8443/a/x.tar.gz?REDACTED",
            ),
            ("https://tok@host/x.zip", "https://REDACTED@host/x.zip"),
            ("https://host/x.zip?sig=s", "https://host/x.zip?REDACTED"),
            ("https://host/x.zip#frag", "https://host/x.zip#REDACTED"),
            ("https://host/a%20b/x.zip", "https://host/a%20b/x.zip"),
            ("s3://bucket/prefix/", "s3://bucket/prefix/"),
            ("file:///srv/models/linear", "file:///srv/models/linear"),
            // The last '@' ends the user info, as in a URL parser.
            ("https://a@b:c@host/x", "https://REDACTED@host/x"),
            // An '@' in the path is not user info.
            ("https://host/a@b/x.zip", "https://host/a@b/x.zip"),
            ("not a uri?secret", "not a uri?REDACTED"),
        ];
        for (raw, want) in cases {
            assert_eq!(redact_uri(raw), want, "{raw}");
            assert_eq!(has_secrets(raw), raw != want, "{raw}");
        }
    }

    #[test]
    fn scrubs_urls_inside_messages() {
        let text = "error sending request for url (https://u:pw@h/x.tar.gz?sig=secret): \
                    connection refused; see \"http://h2/y?token=t2\", http://plain/z";
        let got = scrub_uris(text);
        assert!(
            !got.contains("secret") && !got.contains("pw") && !got.contains("t2"),
            "{got}"
        );
        assert!(
            got.contains("(https://REDACTED@h/x.tar.gz?REDACTED)"),
            "{got}"
        );
        assert!(got.contains("\"http://h2/y?REDACTED\""), "{got}");
        assert!(got.ends_with("http://plain/z"), "{got}");
        assert_eq!(scrub_uris("no url here"), "no url here");
    }
}
