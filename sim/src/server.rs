//! `numary server start`: a small HTTP/1.1 server (one thread per connection, `Connection:
//! close`) with the routes upgrades observe: `/_info`, `/_health`, `/_healthcheck` (1.9+),
//! and per-ledger routes that create and lazily migrate the ledger on first use, as the real
//! ledger middleware does. Registers itself in the state dir so storage commands can tell.

use std::collections::HashSet;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::commands::{App, Failure};
use crate::storage::{self, Driver, NewTransaction, Posting};

struct Server {
    app: App,
    /// Serialises ledger work the way the real per-ledger memory lock serialises writes.
    driver: Mutex<Driver>,
    /// Answers `/_info` while a long migration holds `driver`.
    info: Mutex<Driver>,
    backend: storage::Backend,
    /// Ledgers this process has migrated already (the resolver's once-per-process cache).
    initialized: Mutex<HashSet<String>>,
    /// Schema findings already written to the misuse log (`ledger|versions`).
    reported: Mutex<HashSet<String>>,
}

static REGISTRY_FILE: OnceLock<CString> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe calls here: unlink and _exit. SIGTERM exits 0 at once, no drain.
    if let Some(path) = REGISTRY_FILE.get() {
        // SAFETY: the pointer is a valid NUL-terminated string that lives for the process.
        unsafe { libc::unlink(path.as_ptr()) };
    }
    // SAFETY: _exit is async-signal-safe and ends the process immediately.
    unsafe { libc::_exit(0) };
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
}

pub fn start(app: App) -> Result<(), Failure> {
    let driver = app.driver()?;
    let info_backend =
        storage::backend_from(&app.config, &app.config.driver()).map_err(|e| Failure::Run(e.0))?;
    let info = Driver::connect(info_backend, app.version).map_err(|e| Failure::Run(e.0))?;
    let bind = app.config.bind_address();
    let addr = resolve(&bind)?;
    let listener = TcpListener::bind(addr)
        .map_err(|e| Failure::Run(format!("listen tcp {addr}: bind: {}", bind_reason(&e))))?;
    let registry = app.state.register_server(&driver.identity, &bind);
    if let Ok(path) = CString::new(registry.as_os_str().as_encoded_bytes()) {
        let _ = REGISTRY_FILE.set(path);
    }
    install_signal_handlers();
    let backend =
        storage::backend_from(&app.config, &app.config.driver()).map_err(|e| Failure::Run(e.0))?;
    let server = Arc::new(Server {
        app,
        driver: Mutex::new(driver),
        info: Mutex::new(info),
        backend,
        initialized: Mutex::new(HashSet::new()),
        reported: Mutex::new(HashSet::new()),
    });
    for stream in listener.incoming().flatten() {
        let server = Arc::clone(&server);
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            server.handle(stream);
        });
    }
    Ok(())
}

/// Go listens on the first IPv4 address of a name such as `localhost`.
fn resolve(bind: &str) -> Result<SocketAddr, Failure> {
    let with_host = if bind.starts_with(':') {
        format!("0.0.0.0{bind}")
    } else {
        bind.to_owned()
    };
    let addrs: Vec<SocketAddr> = with_host
        .to_socket_addrs()
        .map_err(|_| {
            let host = with_host
                .rsplit_once(':')
                .map_or(with_host.as_str(), |(h, _)| h);
            Failure::Run(format!("listen tcp: lookup {host}: no such host"))
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| Failure::Run(format!("listen tcp {bind}: no address")))
}

fn bind_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::AddrNotAvailable => "cannot assign requested address".to_owned(),
        _ => err.to_string(),
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    body: String,
    json: bool,
    headers: Vec<(String, String)>,
}

fn json_response(status: u16, body: Value) -> Response {
    Response {
        status,
        body: body.to_string(),
        json: true,
        headers: Vec::new(),
    }
}

fn not_found() -> Response {
    Response {
        status: 404,
        body: "404 page not found".to_owned(),
        json: false,
        headers: Vec::new(),
    }
}

fn error_response(status: u16, code: &str, message: &str) -> Response {
    json_response(status, json!({"errorCode": code, "errorMessage": message}))
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length.min(16 << 20)];
    reader.read_exact(&mut body).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    Some(Request {
        method,
        path,
        query,
        body,
    })
}

fn write_response(mut stream: TcpStream, response: &Response, head_only: bool) {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Internal Server Error",
    };
    let content_type = if response.json {
        "application/json; charset=utf-8"
    } else {
        "text/plain"
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    if !head_only {
        let _ = stream.write_all(response.body.as_bytes());
    }
    let _ = stream.flush();
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, names: &[&str]) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        names.contains(&k).then(|| percent_decode(v))
    })
}

impl Server {
    fn handle(&self, stream: TcpStream) {
        let Some(request) = read_request(&stream) else {
            return;
        };
        let head_only = request.method == "HEAD";
        let response = self.route(&request);
        write_response(stream, &response, head_only);
    }

    fn route(&self, request: &Request) -> Response {
        let version = self.app.version;
        let segments: Vec<String> = request
            .path
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let method = request.method.as_str();
        match (
            method,
            segments
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
        ) {
            ("GET", ["_info"]) => self.unhealthy().unwrap_or_else(|| self.info()),
            ("GET", ["_health"]) => self.unhealthy().unwrap_or_else(|| self.health()),
            ("GET", ["_healthcheck"]) if version.has_healthcheck() => {
                self.unhealthy().unwrap_or_else(|| self.health())
            }
            (_, [ledger, rest @ ..]) if !ledger.is_empty() => {
                let route = match (method, rest) {
                    ("GET", ["_info"]) if version.has_healthcheck() => LedgerRoute::Info,
                    ("GET", ["stats"]) => LedgerRoute::Stats,
                    ("GET" | "HEAD", ["transactions"]) => LedgerRoute::List,
                    ("POST", ["transactions"]) => LedgerRoute::Create,
                    _ => return not_found(),
                };
                self.ledger_request(ledger, route, request)
            }
            _ => not_found(),
        }
    }

    /// The `never-healthy` fault: 500, or no answer at all in `hang` mode.
    fn unhealthy(&self) -> Option<Response> {
        let fault = self.app.state.fault("never-healthy")?;
        if fault.hang {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let key = match self.backend {
            storage::Backend::Postgres { .. } => "postgres",
            storage::Backend::Sqlite { .. } => "sqlite",
        };
        Some(json_response(
            500,
            json!({ key: "simulated failure: never-healthy" }),
        ))
    }

    fn info(&self) -> Response {
        let ledgers = {
            let Ok(mut driver) = self.info.lock() else {
                return error_response(500, "INTERNAL", "lock poisoned");
            };
            driver.list_ledgers()
        };
        match ledgers {
            // Built by hand to keep Go's field order (server, version, config).
            Ok(ledgers) => Response {
                status: 200,
                body: format!(
                    "{{\"data\":{{\"server\":\"numary-ledger\",\"version\":{},\"config\":{{\"storage\":{{\"driver\":{},\"ledgers\":{}}}}}}}}}",
                    Value::from(self.app.version_text.as_str()),
                    Value::from(self.app.config.driver()),
                    Value::from(ledgers),
                ),
                json: true,
                headers: Vec::new(),
            },
            Err(e) => error_response(500, "INTERNAL", &e.0),
        }
    }

    fn health(&self) -> Response {
        let key = match self.backend {
            storage::Backend::Postgres { .. } => "postgres",
            // Before 1.8 no SQLite check was registered: the map is empty and always 200.
            storage::Backend::Sqlite { .. } if !self.app.version.sqlite_health_named() => {
                return json_response(200, json!({}));
            }
            storage::Backend::Sqlite { .. } => "sqlite",
        };
        match storage::ping(&self.backend) {
            Ok(()) => json_response(200, json!({ key: "OK" })),
            Err(e) => json_response(500, json!({ key: e.0 })),
        }
    }

    fn ledger_request(&self, ledger: &str, route: LedgerRoute, request: &Request) -> Response {
        let Ok(mut driver) = self.driver.lock() else {
            return error_response(500, "INTERNAL", "lock poisoned");
        };
        let state = &self.app.state;
        let first_time = self
            .initialized
            .lock()
            .map(|set| !set.contains(ledger))
            .unwrap_or(true);
        if first_time {
            if let Err(e) = driver.get_ledger_store(ledger) {
                return error_response(500, "INTERNAL", &e);
            }
            if let Err(e) = driver.migrate(state, ledger, "server request") {
                return error_response(500, "INTERNAL", &e);
            }
            if let Ok(mut set) = self.initialized.lock() {
                set.insert(ledger.to_owned());
            }
        }
        self.check_schema_once(&mut driver, ledger, &request.method);
        match route {
            LedgerRoute::Info => ledger_info(&mut driver, ledger),
            LedgerRoute::Stats => match driver.stats(ledger) {
                Ok((transactions, accounts)) => json_response(
                    200,
                    json!({"data": {"transactions": transactions, "accounts": accounts}}),
                ),
                Err(e) => error_response(500, "INTERNAL", &e.0),
            },
            LedgerRoute::List => list_transactions(&mut driver, ledger, &request.query),
            LedgerRoute::Create => create_transaction(&mut driver, ledger, &request.body),
        }
    }

    /// Records "binary older than schema" once per distinct finding, on every request, since
    /// another node may migrate the ledger under a server that keeps running (unless the
    /// guide's table lets this release serve that schema, [`Driver::may_not_serve`]).
    fn check_schema_once(&self, driver: &mut Driver, ledger: &str, method: &str) {
        let unknown = driver.unknown_migrations(ledger);
        if !driver.may_not_serve(&unknown) {
            return;
        }
        let key = format!("{ledger}|{}", unknown.join(","));
        let first = self
            .reported
            .lock()
            .map(|mut set| set.insert(key))
            .unwrap_or(false);
        if first {
            let action = format!("server {method} request");
            driver.record_schema_misuse(&self.app.state, ledger, &action, &unknown);
        }
    }
}

enum LedgerRoute {
    Info,
    Stats,
    List,
    Create,
}

fn ledger_info(driver: &mut Driver, ledger: &str) -> Response {
    let done = match driver.migrations_done(ledger) {
        Ok(done) => done,
        Err(e) => return error_response(500, "INTERNAL", &e.0),
    };
    let migrations: Vec<Value> = crate::migrations::for_version(driver.version)
        .iter()
        .map(|m| {
            let number = m.number.to_string();
            match done.iter().find(|(v, _)| *v == number) {
                Some((_, date)) => json!({"version": number, "name": m.name, "state": "DONE", "date": date}),
                None => json!({"version": number, "name": m.name, "state": "TO DO", "date": "0001-01-01T00:00:00Z"}),
            }
        })
        .collect();
    json_response(
        200,
        json!({"data": {"name": ledger, "storage": {"migrations": migrations}}}),
    )
}

fn list_transactions(driver: &mut Driver, ledger: &str, query: &str) -> Response {
    let page_size = query_param(query, &["page_size", "pageSize"])
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(15)
        .clamp(1, 1000);
    let (total, _) = match driver.stats(ledger) {
        Ok(stats) => stats,
        Err(e) => return error_response(500, "INTERNAL", &e.0),
    };
    match driver.list_transactions(ledger, page_size) {
        Ok(data) => {
            let has_more = i64::try_from(data.len()).unwrap_or(0) < total;
            let mut response = json_response(
                200,
                json!({"cursor": {"page_size": page_size, "has_more": has_more, "data": data}}),
            );
            response
                .headers
                .push(("Count".to_owned(), total.to_string()));
            response
        }
        Err(e) => error_response(500, "INTERNAL", &e.0),
    }
}

fn create_transaction(driver: &mut Driver, ledger: &str, body: &[u8]) -> Response {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error_response(400, "VALIDATION", &e.to_string()),
    };
    let Some(postings) = parsed["postings"].as_array().filter(|p| !p.is_empty()) else {
        return error_response(400, "VALIDATION", "no postings");
    };
    let mut list = Vec::new();
    for p in postings {
        let (Some(source), Some(destination), Some(amount), Some(asset)) = (
            p["source"].as_str(),
            p["destination"].as_str(),
            p["amount"].as_u64(),
            p["asset"].as_str(),
        ) else {
            return error_response(
                400,
                "VALIDATION",
                "invalid posting: source, destination, amount and asset are required",
            );
        };
        list.push(Posting {
            source: source.to_owned(),
            destination: destination.to_owned(),
            amount,
            asset: asset.to_owned(),
        });
    }
    let tx = NewTransaction {
        postings: list,
        reference: parsed["reference"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
        metadata: parsed
            .get("metadata")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or(json!({})),
    };
    match driver.write_transactions(ledger, std::slice::from_ref(&tx)) {
        Ok(written) => json_response(200, json!({"data": written})),
        Err(e) if e.0.contains("UNIQUE") || e.0.contains("23505") => {
            error_response(409, "CONFLICT", &e.0)
        }
        Err(e) => error_response(500, "INTERNAL", &e.0),
    }
}
