//! Drives the built `numary-sim` binary in an isolated `$HOME` and state dir, and gives
//! Postgres tests a fresh database each (created and dropped through the `postgres` crate).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_numary-sim");

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// stdout without the `loading config file: ...` line 1.4.3+ prints first.
    pub fn body(&self) -> &str {
        match self.stdout.strip_prefix("loading config file: ") {
            Some(rest) => rest.split_once('\n').map_or("", |(_, b)| b),
            None => &self.stdout,
        }
    }
}

/// One simulated node: its own `$HOME` (so its own default SQLite dir) and a state dir that
/// several nodes of a test may share.
pub struct Node {
    pub home: PathBuf,
    pub state: PathBuf,
    pub envs: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let state = tmp.path().join("state");
        Self {
            home,
            state,
            envs: Vec::new(),
            _tmp: Some(tmp),
        }
    }

    /// Another node sharing this one's state dir (and nothing else).
    pub fn sibling(&self, name: &str) -> Self {
        let home = self.home.with_file_name(format!("home-{name}"));
        std::fs::create_dir_all(&home).expect("home");
        Self {
            home,
            state: self.state.clone(),
            envs: Vec::new(),
            _tmp: None,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.join(".numary/data")
    }

    pub fn command(&self, version: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("NUMARY_SIM_VERSION", version)
            .env("NUMARY_SIM_STATE_DIR", &self.state);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, version: &str, args: &[&str]) -> Run {
        self.run_env(version, args, &[])
    }

    /// `run` with extra environment variables for this invocation only.
    pub fn run_env(&self, version: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(version, args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().expect("run numary-sim"))
    }

    pub fn misuse(&self) -> Vec<serde_json::Value> {
        self.log("misuse.log")
    }

    pub fn migration_log(&self) -> Vec<serde_json::Value> {
        self.log("migrations.log")
    }

    fn log(&self, file: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.join(file))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line is JSON"))
            .collect()
    }

    pub fn set_fault(&self, name: &str, content: &str) {
        let dir = self.state.join("faults");
        std::fs::create_dir_all(&dir).expect("faults dir");
        std::fs::write(dir.join(name), content).expect("fault marker");
    }

    /// Starts `server start` on a free port and waits until it answers.
    pub fn serve(&self, version: &str) -> Server {
        let port = free_port();
        let child = self
            .command(version, &["server", "start"])
            .env(
                "NUMARY_SERVER_HTTP_BIND_ADDRESS",
                format!("127.0.0.1:{port}"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server on port {port} never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.port, "GET", path, None)
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        http(self.port, "POST", path, Some(body))
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: sending SIGTERM to our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("wait server");
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("addr")
        .port()
}

/// A minimal HTTP/1.1 client: one request, read to EOF (the simulator closes). A connection
/// reset before any byte of an answer (a loaded machine) is tried again, up to three times.
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    for _ in 0..3 {
        if let Some(answer) = http_once(port, method, path, body) {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{method} {path}: the connection was reset three times before an answer");
}

fn http_once(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    match stream.read_to_string(&mut response) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && response.is_empty() => {
            return None;
        }
        r => {
            r.expect("read");
        }
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

pub fn sqlite_versions(path: &Path) -> Vec<u32> {
    let conn = rusqlite::Connection::open(path).expect("open sqlite");
    let mut stmt = conn
        .prepare("SELECT version FROM migrations")
        .expect("prepare");
    let mut versions: Vec<u32> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .expect("query")
        .map(|v| v.expect("row").parse().expect("numeric version"))
        .collect();
    versions.sort_unstable();
    versions
}

pub fn range(from: u32, to: u32) -> Vec<u32> {
    (from..=to).collect()
}

/// A fresh database on the test server, dropped (connections and all) at the end.
pub struct PgDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDb {
    pub fn new() -> Self {
        let admin_url = std::env::var("FLEETUP_TEST_PG_URL").expect(
            "FLEETUP_TEST_PG_URL must point at a PostgreSQL server (eval \"$(scripts/pg.sh start)\")",
        );
        let name = format!(
            "sim_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let mut admin =
            postgres::Client::connect(&admin_url, postgres::NoTls).expect("connect admin");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect test db")
    }

    pub fn versions(&self, ledger: &str) -> Vec<u32> {
        let mut versions: Vec<u32> = self
            .client()
            .query(&format!("SELECT version FROM \"{ledger}\".migrations"), &[])
            .expect("read migrations")
            .iter()
            .map(|r| r.get::<_, String>(0).parse().expect("numeric"))
            .collect();
        versions.sort_unstable();
        versions
    }

    pub fn tables(&self, ledger: &str) -> Vec<String> {
        let mut tables: Vec<String> = self
            .client()
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = $1",
                &[&ledger],
            )
            .expect("tables")
            .iter()
            .map(|r| r.get(0))
            .collect();
        tables.sort();
        tables
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).expect("count").get(0)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A node whose storage is `db`.
pub fn pg_node(db: &PgDb) -> Node {
    Node::new()
        .env("NUMARY_STORAGE_DRIVER", "postgres")
        .env("NUMARY_STORAGE_POSTGRES_CONN_STRING", &db.url)
}
