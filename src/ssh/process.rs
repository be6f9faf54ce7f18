//! A command kept running on a host for as long as fleetup holds it (a `psql` session holding a
//! lock): fleetup writes its stdin and decides when it ends; its output arrives as it comes. The
//! channel is read all the time, so it never stalls the connection (russh notes, P3). Dropping
//! the handle, or fleetup dying (the kernel closes the connection), ends the channel: the command
//! sees EOF on its stdin.

use std::time::Duration;

use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};

use super::ExecError;
use super::session::{ExitStatus, OutputStream, Session};

/// After stdin is closed (or the handle dropped), the command gets this long to exit before
/// its channel is closed.
const END_GRACE: Duration = Duration::from_secs(2);

enum Input {
    Data(Vec<u8>),
    Eof,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Exited(ExitStatus),
    /// No exit status: the server refused it, the channel or the connection closed.
    Lost(String),
}

/// A command running on a host; see the module doc.
pub struct RemoteProcess {
    host: String,
    input: mpsc::UnboundedSender<Input>,
    output: mpsc::UnboundedReceiver<(OutputStream, Vec<u8>)>,
    end: watch::Receiver<Option<End>>,
}

impl std::fmt::Debug for RemoteProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteProcess")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl RemoteProcess {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Queues `data` for the command's stdin (small control input: SQL lines, not bulk data).
    pub fn write(&self, data: &[u8]) -> Result<(), ExecError> {
        self.input
            .send(Input::Data(data.to_vec()))
            .map_err(|_| self.lost())
    }

    /// Sends EOF on the command's stdin.
    pub fn close_stdin(&self) {
        let _ = self.input.send(Input::Eof);
    }

    /// The next piece of output, as it arrives; `None` once the command ended and all of its
    /// output was read.
    pub async fn next_output(&mut self) -> Option<(OutputStream, Vec<u8>)> {
        self.output.recv().await
    }

    /// Whether the command still runs (no exit status, channel open).
    pub fn is_running(&self) -> bool {
        self.end.borrow().is_none()
    }

    /// Closes stdin and waits up to `limit` for the command to exit; then its channel is closed
    /// whatever happened.
    pub async fn wait(mut self, limit: Duration) -> Result<ExitStatus, ExecError> {
        self.close_stdin();
        let end = match timeout(limit, self.end.wait_for(|e| e.is_some())).await {
            Ok(Ok(e)) => e.clone(),
            _ => None,
        };
        match end {
            Some(End::Exited(status)) => Ok(status),
            Some(End::Lost(reason)) => Err(self.lost_because(reason)),
            None => Err(ExecError::Timeout {
                host: self.host.clone(),
                after: limit,
                stdout: Vec::new(),
                stderr: Vec::new(),
                ended_by_host: false,
            }),
        }
    }

    fn lost(&self) -> ExecError {
        let reason = match &*self.end.borrow() {
            Some(End::Lost(r)) => r.clone(),
            Some(End::Exited(s)) => format!("the command exited ({s})"),
            None => "the command's channel closed".into(),
        };
        self.lost_because(reason)
    }

    fn lost_because(&self, reason: String) -> ExecError {
        ExecError::Lost {
            host: self.host.clone(),
            reason,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }
}

/// Runs `command` (already wrapped with its environment) on a channel of `session` and hands
/// back its handle once the server accepted it.
pub(super) async fn spawn(
    session: Session,
    permit: OwnedSemaphorePermit,
    channel: russh::Channel<Msg>,
    command: &str,
) -> Result<RemoteProcess, ExecError> {
    let host = session.host().to_owned();
    let (mut rx, tx) = channel.split();
    tx.exec(true, command)
        .await
        .map_err(|source| ExecError::Send {
            host: host.clone(),
            source,
        })?;
    // Wait for the server's answer to the exec request: a refusal is an error here, not later.
    let mut early = Vec::new();
    loop {
        match rx.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) => return Err(ExecError::Refused { host }),
            Some(ChannelMsg::Close) | None => {
                return Err(ExecError::Lost {
                    host,
                    reason: "the channel closed before the command started".into(),
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                });
            }
            Some(other) => early.push(other),
        }
    }
    let (input_tx, input_rx) = mpsc::unbounded_channel();
    let (output_tx, output_rx) = mpsc::unbounded_channel();
    let (end_tx, end_rx) = watch::channel(None);
    tokio::spawn(drive(Driver {
        rx,
        tx,
        input: input_rx,
        output: output_tx,
        end: end_tx,
        early,
        _session: session,
        _permit: permit,
    }));
    Ok(RemoteProcess {
        host,
        input: input_tx,
        output: output_rx,
        end: end_rx,
    })
}

struct Driver {
    rx: ChannelReadHalf,
    tx: ChannelWriteHalf<Msg>,
    input: mpsc::UnboundedReceiver<Input>,
    output: mpsc::UnboundedSender<(OutputStream, Vec<u8>)>,
    end: watch::Sender<Option<End>>,
    /// Messages that came before the exec request's answer.
    early: Vec<ChannelMsg>,
    /// Keeps the connection open while the command runs.
    _session: Session,
    /// One of the connection's channel slots, held while the command runs.
    _permit: OwnedSemaphorePermit,
}

async fn drive(mut d: Driver) {
    let mut status: Option<ExitStatus> = None;
    let mut closed = false;
    let mut input_open = true;
    // Set once the command exited or its stdin was closed for good: then the channel ends at
    // this deadline at the latest.
    let mut grace: Option<Instant> = None;
    let mut pending: std::collections::VecDeque<ChannelMsg> = std::mem::take(&mut d.early).into();
    loop {
        let msg = if let Some(m) = pending.pop_front() {
            Some(m)
        } else {
            tokio::select! {
                m = d.rx.wait() => m,
                i = d.input.recv(), if input_open => {
                    match i {
                        Some(Input::Data(data)) => {
                            if d.tx.data_bytes(data).await.is_err() {
                                input_open = false;
                            }
                        }
                        Some(Input::Eof) => {
                            let _ = d.tx.eof().await;
                        }
                        // The handle is gone: end the command.
                        None => {
                            input_open = false;
                            let _ = d.tx.eof().await;
                            grace.get_or_insert(Instant::now() + END_GRACE);
                        }
                    }
                    continue;
                }
                () = sleep_until(grace.unwrap_or_else(Instant::now)), if grace.is_some() => break,
            }
        };
        let Some(msg) = msg else { break };
        match msg {
            ChannelMsg::Data { data } => {
                let _ = d.output.send((OutputStream::Stdout, data.to_vec()));
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                let _ = d.output.send((OutputStream::Stderr, data.to_vec()));
            }
            ChannelMsg::ExitStatus { exit_status } => {
                status = Some(ExitStatus::Code(exit_status));
                grace = Some(Instant::now() + END_GRACE);
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                status = Some(ExitStatus::Signal(super::session::signal_name_text(
                    &signal_name,
                )));
                grace = Some(Instant::now() + END_GRACE);
            }
            ChannelMsg::Close => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    if !closed {
        if status.is_none() {
            // Stdin closed and the grace is over: ask the command to stop.
            let _ = d.tx.signal(Sig::TERM).await;
        }
        // Never wait for the server's answer to our close (russh drops it, see the notes).
        let _ = d.tx.close().await;
    }
    let end = match status {
        Some(s) => End::Exited(s),
        None => End::Lost("the channel closed without an exit status".into()),
    };
    let _ = d.end.send(Some(end));
}
