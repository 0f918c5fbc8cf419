//! The trusted-server allow-list (`[trust] allow` in a spec): which MCP
//! servers parlor may start or connect to, checked when the spec is loaded
//! so nothing unlisted is ever spawned or dialled.
//!
//! Why a second statement next to `[mcp.*]`: a server table says *how* to
//! reach a server, the allow-list says *that* an operator vetted exactly
//! that command line or endpoint. Copying a server table from elsewhere, or
//! editing its args (`--db` to another file, an extra `--plugin`), no longer
//! starts a program nobody looked at.
//!
//! - stdio: the exact command and the exact args.
//! - remote (`sse`, `streamable-http`, `hosted`): the same scheme, host and
//!   port, and a path at or below the entry's path, compared parsed (so
//!   `https://kb.example.com` does not admit `kb.example.com.evil.org`).
//!   Plain `http` only to loopback: anything else would send tool calls,
//!   and the answers the model trusts, in clear over the network.

use std::net::IpAddr;

use reqwest::Url;
use serde::Deserialize;

use crate::spec::{McpServerSpec, Problem};

/// `[trust]`: the allow-list and where tool pins are locked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSpec {
    /// The servers that may be started or connected to.
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
    /// The tool-pin lock file written by `parlor mcp trust` (default: the
    /// spec's path with `.mcp.lock` for `.toml`).
    #[serde(default)]
    pub lock: Option<std::path::PathBuf>,
}

/// One allowed server: a stdio command line, or a remote URL prefix.
/// A struct with optional fields rather than an untagged enum, so a wrong
/// entry gets a message that says which field is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// The program, exactly as `command` in `[mcp.NAME]`.
    pub command: Option<String>,
    /// Its arguments, exactly (default: none).
    #[serde(default)]
    pub args: Vec<String>,
    /// A URL prefix: scheme, host, port and path prefix.
    pub url: Option<String>,
}

/// Problems with the `[trust] allow` entries themselves.
pub fn check_entries(trust: &TrustSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, entry) in trust.allow.iter().enumerate() {
        let place = format!("trust.allow[{i}]");
        match (&entry.command, &entry.url) {
            (Some(_), Some(_)) | (None, None) => out.push(Problem {
                place,
                field: None,
                message: "needs exactly one of `command` (stdio) or `url` (remote)".into(),
                fix: Some(
                    "{ command = \"prog\", args = [\"--flag\"] } or { url = \"https://host/mcp\" }"
                        .into(),
                ),
            }),
            (None, Some(url)) => {
                if !entry.args.is_empty() {
                    out.push(field(
                        &place,
                        "args",
                        "only stdio entries take args",
                        "remove it",
                    ));
                }
                if let Err(message) = remote(url) {
                    out.push(field(&place, "url", &message, HTTPS_FIX));
                }
            }
            (Some(_), None) => {}
        }
    }
    out
}

/// Whether server `name` may be used; a problem naming the fix if not.
pub fn check_server(name: &str, server: &McpServerSpec, trust: &TrustSpec) -> Option<Problem> {
    let place = format!("mcp.{name}");
    match server {
        McpServerSpec::Stdio { command, args, .. } => {
            let allowed = trust
                .allow
                .iter()
                .any(|e| e.command.as_deref() == Some(command.as_str()) && e.args == *args);
            (!allowed).then(|| {
                let near = trust
                    .allow
                    .iter()
                    .any(|e| e.command.as_deref() == Some(command.as_str()));
                Problem {
                    place,
                    field: Some(if near { "args" } else { "command" }.into()),
                    message: format!(
                        "`{}` is not in the trusted-server allow-list{}",
                        std::iter::once(command.as_str())
                            .chain(args.iter().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(" "),
                        if near {
                            " (the command is listed, but with other args)"
                        } else {
                            ""
                        }
                    ),
                    fix: Some(format!(
                        "after checking the program, add {{ command = {command:?}, args = {args:?} }} \
                         to `allow` in [trust]"
                    )),
                }
            })
        }
        McpServerSpec::Sse { url, .. } | McpServerSpec::StreamableHttp { url, .. } => {
            check_url(&place, url, trust)
        }
        McpServerSpec::Hosted(hosted) => check_url(&place, &hosted.url, trust),
    }
}

const HTTPS_FIX: &str =
    "use https://, or http:// only to a loopback host (127.0.0.1, ::1, localhost)";

fn check_url(place: &str, url: &str, trust: &TrustSpec) -> Option<Problem> {
    if let Err(message) = remote(url) {
        return Some(field(place, "url", &message, HTTPS_FIX));
    }
    let allowed = trust
        .allow
        .iter()
        .filter_map(|e| e.url.as_deref())
        .any(|prefix| under_prefix(url, prefix));
    (!allowed).then(|| {
        field(
            place,
            "url",
            &format!("{url} is not under any `url` in the trusted-server allow-list"),
            &format!("after checking the server, add {{ url = {url:?} }} to `allow` in [trust]"),
        )
    })
}

/// A remote URL parlor may use: http(s), and http only to loopback.
///
/// # Errors
/// Why not, as a message.
pub fn remote(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let Some(host) = parsed.host_str() else {
        return Err(format!("{url} has no host"));
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(host) => Ok(parsed),
        "http" => Err(format!(
            "{url}: plain http to the non-loopback host {host} is refused (requests, \
             credentials and answers would cross the network unencrypted)"
        )),
        _ => Err(format!("\"{url}\" is not an http(s) URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `url` is at or below `prefix`: the same scheme, host and port, and a
/// path equal to the prefix's or under it at a `/` boundary.
pub fn under_prefix(url: &str, prefix: &str) -> bool {
    let (Ok(url), Ok(prefix)) = (Url::parse(url), Url::parse(prefix)) else {
        return false;
    };
    let same_origin = url.scheme() == prefix.scheme()
        && url.host_str().is_some()
        && url.host_str() == prefix.host_str()
        && url.port_or_known_default() == prefix.port_or_known_default();
    let base = prefix.path().trim_end_matches('/');
    let path = url.path();
    same_origin
        && (base.is_empty()
            || path == base
            || path
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/')))
}

fn field(place: &str, field: &str, message: &str, fix: &str) -> Problem {
    Problem {
        place: place.into(),
        field: Some(field.into()),
        message: message.into(),
        fix: Some(fix.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_compare_parsed_parts() {
        let p = "https://kb.example.com/mcp";
        assert!(under_prefix("https://kb.example.com/mcp", p));
        assert!(under_prefix("https://kb.example.com:443/mcp/v2", p));
        assert!(!under_prefix("https://kb.example.com/mcpx", p));
        assert!(!under_prefix("https://kb.example.com.evil.org/mcp", p));
        assert!(!under_prefix("http://kb.example.com/mcp", p));
        assert!(!under_prefix("https://kb.example.com:8443/mcp", p));
        assert!(under_prefix(
            "https://kb.example.com/any",
            "https://kb.example.com/"
        ));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(remote("http://127.0.0.1:8931/mcp").is_ok());
        assert!(remote("http://[::1]:8931/mcp").is_ok());
        assert!(remote("http://localhost/mcp").is_ok());
        assert!(remote("https://10.0.0.1/mcp").is_ok());
        assert!(remote("http://10.0.0.1/mcp")
            .unwrap_err()
            .contains("non-loopback"));
        assert!(remote("ftp://127.0.0.1/")
            .unwrap_err()
            .contains("not an http(s) URL"));
    }
}
