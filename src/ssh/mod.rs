//! SSH transport on russh: one connection per host, host keys checked against known_hosts,
//! commands, uploads and HTTP probes through the node.
//!
//! [`Transport`] is what the rest of fleetup talks to; [`Session`] is the real implementation,
//! and tests of the scheduler can use a fake.

// The error enums carry what the operator needs (host, address, key type, fingerprint, file and
// line); they are built once per failed host, so their size does not matter.
#![allow(clippy::result_large_err)]

mod adhoc;
mod auth;
pub mod config;
mod error;
pub mod http;
pub mod known_hosts;
pub mod limits;
mod process;
mod session;

use std::future::Future;
use std::time::Duration;

pub use adhoc::{HostRun, run_on_hosts};
pub use auth::{KeyCache, PASSPHRASE_ENV, PassphrasePrompt};
pub use error::{CertProblem, ConnectError, ExecError, HostKeyError, HttpError, UploadError};
pub use http::HttpResponse;
pub use process::RemoteProcess;
pub use session::{
    ConnectOptions, ExecOptions, ExecOutput, ExitStatus, HostKeyPolicy, HostProgress, JumpPool,
    KnownHostsCache, LOG_TARGET, OUTPUT_CAP, OutputCallback, OutputStream, Progress, Session,
    UploadReport, connect, connect_all, host_key_problems, upload_to_many,
};

/// What fleetup does on a host. Implemented by [`Session`] over SSH.
pub trait Transport: Send + Sync {
    /// The inventory name of the host.
    fn host(&self) -> &str;

    fn exec(
        &self,
        command: &str,
        opts: &ExecOptions,
    ) -> impl Future<Output = Result<ExecOutput, ExecError>> + Send;

    /// Writes `data` (whose hex SHA-256 is `sha256`) to `remote_path` atomically, verified on
    /// the host. `progress(bytes_sent, total)`.
    fn upload(
        &self,
        data: &[u8],
        sha256: &str,
        remote_path: &str,
        mode: u32,
        progress: Progress<'_>,
    ) -> impl Future<Output = Result<UploadReport, UploadError>> + Send;

    /// GET over HTTP/1.1 to `host:port` as seen from the node.
    fn http_get(
        &self,
        host: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<HttpResponse, HttpError>> + Send;

    /// The service's environment ([`crate::envfile::EnvFile::stdin`]), written first on the
    /// stdin of every later command that holds [`crate::envfile::LOADER`]. A transport that
    /// cannot keeps nothing: such commands then refuse to run (exit 6).
    fn set_service_env(&self, stdin: Option<Vec<u8>>) {
        let _ = stdin;
    }

    /// Starts `command` (with `env` exported) and keeps it running while the returned handle
    /// lives: fleetup writes its stdin, reads its output as it comes and decides when it ends;
    /// once the handle is dropped or fleetup dies, the command sees EOF on its stdin. By default
    /// a transport cannot: [`ExecError::Unsupported`].
    fn spawn(
        &self,
        command: &str,
        env: &[(String, String)],
    ) -> impl Future<Output = Result<RemoteProcess, ExecError>> + Send {
        let _ = (command, env);
        let host = self.host().to_owned();
        async move {
            Err(ExecError::Unsupported {
                host,
                what: "long-running commands",
            })
        }
    }
}

/// A shared transport is a transport (the lease refresher and a held database lock keep their
/// own handle on the host).
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn host(&self) -> &str {
        T::host(self)
    }

    fn exec(
        &self,
        command: &str,
        opts: &ExecOptions,
    ) -> impl Future<Output = Result<ExecOutput, ExecError>> + Send {
        T::exec(self, command, opts)
    }

    fn upload(
        &self,
        data: &[u8],
        sha256: &str,
        remote_path: &str,
        mode: u32,
        progress: Progress<'_>,
    ) -> impl Future<Output = Result<UploadReport, UploadError>> + Send {
        T::upload(self, data, sha256, remote_path, mode, progress)
    }

    fn http_get(
        &self,
        host: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<HttpResponse, HttpError>> + Send {
        T::http_get(self, host, port, path, timeout)
    }

    fn spawn(
        &self,
        command: &str,
        env: &[(String, String)],
    ) -> impl Future<Output = Result<RemoteProcess, ExecError>> + Send {
        T::spawn(self, command, env)
    }

    fn set_service_env(&self, stdin: Option<Vec<u8>>) {
        T::set_service_env(self, stdin)
    }
}

impl Transport for Session {
    fn host(&self) -> &str {
        Session::host(self)
    }

    fn exec(
        &self,
        command: &str,
        opts: &ExecOptions,
    ) -> impl Future<Output = Result<ExecOutput, ExecError>> + Send {
        Session::exec(self, command, opts)
    }

    fn upload(
        &self,
        data: &[u8],
        sha256: &str,
        remote_path: &str,
        mode: u32,
        progress: Progress<'_>,
    ) -> impl Future<Output = Result<UploadReport, UploadError>> + Send {
        self.upload_bytes(data, sha256, remote_path, mode, progress)
    }

    fn http_get(
        &self,
        host: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<HttpResponse, HttpError>> + Send {
        Session::http_get(self, host, port, path, timeout)
    }

    fn spawn(
        &self,
        command: &str,
        env: &[(String, String)],
    ) -> impl Future<Output = Result<RemoteProcess, ExecError>> + Send {
        Session::spawn(self, command, env)
    }

    fn set_service_env(&self, stdin: Option<Vec<u8>>) {
        Session::set_service_env(self, stdin)
    }
}
