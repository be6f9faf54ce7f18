//! A minimal HTTP/1.1 client side for probing the ledger API through an SSH tunnel: the request
//! text and an incremental response parser (Content-Length, chunked, or read to EOF).

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

/// Parses `buf`. `Ok(None)`: more bytes are needed (only possible while `!eof`).
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<HttpResponse>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if eof {
            Err("the connection closed before the headers ended".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad status line `{status_line}`"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line `{status_line}`"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status code in `{status_line}`"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line `{line}`"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let body = &buf[head_end + 4..];
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
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length `{len}`"))?;
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
    if eof {
        resp.body = body.to_vec();
        return Ok(Some(resp));
    }
    Ok(None)
}

/// The decoded body once the terminating zero chunk is in `body`.
fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        let data_start = line_end + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        if body.len() < data_start + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&body[data_start..data_start + size]);
        body = &body[data_start + size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
    fn request_asks_to_close() {
        let r = request("127.0.0.1", 3068, "_info");
        assert!(
            r.starts_with("GET /_info HTTP/1.1\r\nHost: 127.0.0.1:3068\r\n"),
            "{r}"
        );
        assert!(r.ends_with("Connection: close\r\n\r\n"));
    }
}
