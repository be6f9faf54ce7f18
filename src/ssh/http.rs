//! The client side of one HTTP/1.1 exchange, for probing the ledger API through an SSH tunnel:
//! the request text and an incremental response parser (Content-Length, chunked, or read to
//! EOF). The head is parsed by `httparse`; every size a node sends is checked before it is used,
//! and a reply is bounded ([`MAX_HEAD`], [`MAX_BODY`], [`MAX_REPLY`]): whoever binds the API
//! port on a node must not be able to crash fleetup or exhaust its memory.

/// The most header bytes read before the blank line that ends them.
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest body kept (after de-chunking). `/_info` and `/_health` answer a few hundred bytes.
pub const MAX_BODY: usize = 1024 * 1024;
/// The most bytes read from the connection for one reply, chunk framing included.
pub const MAX_REPLY: usize = MAX_HEAD + 4 * MAX_BODY;
/// Headers understood in one reply.
const MAX_HEADERS: usize = 64;

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Connection: close`, so the server ends the stream after one answer.
pub fn request(host: &str, port: u16, path: &str) -> String {
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: fleetup\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    )
}

/// Parses `buf`, all bytes read so far. `Ok(None)`: more bytes are needed (only while `!eof`).
/// An error is a reply fleetup will not use, described for the operator (bounded, escaped).
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<HttpResponse>, String> {
    if buf.len() > MAX_REPLY {
        return Err(format!(
            "the reply is longer than {} KiB, more than any ledger API answer",
            MAX_REPLY / 1024
        ));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut slots);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(format!(
                "the headers are longer than {} KiB",
                MAX_HEAD / 1024
            ));
        }
        Ok(httparse::Status::Partial) if eof => {
            return Err("the connection closed before the headers ended".into());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP reply ({e}): {}", excerpt(buf))),
    };
    if head_len > MAX_HEAD {
        return Err(format!(
            "the headers are longer than {} KiB",
            MAX_HEAD / 1024
        ));
    }
    let status = head.code.ok_or("no status code")?;
    let mut headers = Vec::with_capacity(head.headers.len());
    for h in head.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| format!("header `{}` is not UTF-8", h.name))?;
        headers.push((h.name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let body = &buf[head_len..];
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        return match dechunk(body)? {
            Some(b) => {
                resp.body = b;
                Ok(Some(resp))
            }
            None if eof => Err("the connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    if let Some(len) = resp.header("content-length") {
        let len: u64 = len
            .parse()
            .map_err(|_| format!("bad Content-Length `{}`", excerpt(len.as_bytes())))?;
        let len = bounded_body(len)?;
        if body.len() >= len {
            resp.body = body[..len].to_vec();
            return Ok(Some(resp));
        }
        return if eof {
            Err(format!("body ended after {} of {len} bytes", body.len()))
        } else {
            Ok(None)
        };
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Some(resp));
    }
    bounded_body(body.len() as u64)?;
    if eof {
        resp.body = body.to_vec();
        return Ok(Some(resp));
    }
    Ok(None)
}

/// `len` as a body size fleetup reads, or why not.
fn bounded_body(len: u64) -> Result<usize, String> {
    match usize::try_from(len) {
        Ok(n) if n <= MAX_BODY => Ok(n),
        _ => Err(format!(
            "a body of {len} bytes is larger than the {} KiB fleetup reads",
            MAX_BODY / 1024
        )),
    }
}

/// The decoded body once the terminating zero chunk is in `body`.
fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let (data_start, size) = match httparse::parse_chunk_size(body) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(format!("bad chunk size line: {}", excerpt(body))),
        };
        if size == 0 {
            return Ok(Some(out));
        }
        // Checked before any arithmetic: a size near `u64::MAX` must not wrap.
        let size = bounded_body(size.saturating_add(out.len() as u64))? - out.len();
        let rest = &body[data_start..];
        if rest.len() < size + 2 {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err("a chunk does not end with CRLF".into());
        }
        out.extend_from_slice(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// The start of some bytes a node sent, for an error message: at most 40 characters, escaped.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]);
    format!("`{}`", text.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body_waits_for_all_bytes() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"data\":{}}";
        assert_eq!(parse_response(&full[..full.len() - 3], false), Ok(None));
        let r = parse_response(full, false).unwrap().unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, b"{\"data\":{}}".as_slice())
        );
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert!(parse_response(&full[..full.len() - 3], true).is_err());
    }

    #[test]
    fn chunked_body_is_decoded() {
        let resp = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n6;x=y\r\npedia \r\n0\r\n\r\n";
        let r = parse_response(resp, false).unwrap().unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (503, b"Wikipedia ".as_slice())
        );
        assert_eq!(parse_response(&resp[..resp.len() - 8], false), Ok(None));
    }

    #[test]
    fn body_without_length_runs_to_eof() {
        let resp = b"HTTP/1.0 200 OK\r\n\r\nhello";
        assert_eq!(parse_response(resp, false), Ok(None));
        assert_eq!(parse_response(resp, true).unwrap().unwrap().body, b"hello");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n", true).is_err());
        assert!(parse_response(b"", true).is_err());
    }

    #[test]
    fn a_chunk_size_near_the_maximum_is_an_error_not_a_panic() {
        for size in [
            "ffffffffffffffff",
            "fffffffffffffffe",
            "7fffffffffffffff",
            "100001",
        ] {
            let resp = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabc\r\n0\r\n\r\n"
            );
            let err = parse_response(resp.as_bytes(), false).unwrap_err();
            assert!(err.contains("larger than"), "{size}: {err}");
        }
        // Too many hex digits to fit 64 bits at all.
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n";
        assert!(parse_response(resp, false).is_err());
    }

    #[test]
    fn sizes_and_lengths_are_bounded() {
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert!(
            parse_response(huge, false)
                .unwrap_err()
                .contains("larger than")
        );
        let mut long_head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long_head.resize(MAX_HEAD + 10, b'a');
        assert!(
            parse_response(&long_head, false)
                .unwrap_err()
                .contains("headers")
        );
        let mut to_eof = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        to_eof.resize(to_eof.len() + MAX_BODY + 1, b'a');
        assert!(
            parse_response(&to_eof, false)
                .unwrap_err()
                .contains("larger than")
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        let resp = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(parse_response(resp.as_bytes(), true).is_err());
    }

    #[test]
    fn a_chunk_without_its_crlf_is_an_error() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n";
        assert!(parse_response(resp, false).is_err());
    }

    #[test]
    fn errors_show_node_bytes_escaped() {
        let err = parse_response(b"\x1b]0;owned\x07 HTTP/1.1\r\n\r\n", true).unwrap_err();
        assert!(!err.contains('\x1b'), "{err}");
    }

    #[test]
    fn any_prefix_of_any_reply_never_panics() {
        let replies: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\nffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext\r\nWiki\r\n0\r\n\r\n",
        ];
        for r in replies {
            for n in 0..=r.len() {
                let _ = parse_response(&r[..n], false);
                let _ = parse_response(&r[..n], true);
            }
        }
    }

    #[test]
    fn request_asks_to_close() {
        let r = request("127.0.0.1", 3068, "_info");
        assert!(
            r.starts_with("GET /_info HTTP/1.1\r\nHost: 127.0.0.1:3068\r\n"),
            "{r}"
        );
        assert!(r.ends_with("Connection: close\r\n\r\n"));
    }
}
