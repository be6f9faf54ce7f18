//! How many nodes answered while something ran: a background thread polls each given node's
//! `/_info` every [`INTERVAL`], all nodes of a tick at once and each with a [`TIMEOUT`], so a
//! hung node delays neither the others' samples nor the next tick. Zero-downtime tests start a
//! poller before an upgrade and assert on the fewest that answered HTTP 200 at any tick.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::{Lab, LabNode, http_get};

/// Time between two ticks.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// How long one node's `/_info` may take before it counts as not answering.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// A node to poll: `GET /_info` on `127.0.0.1:api_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollTarget {
    pub name: String,
    pub api_port: u16,
}

impl PollTarget {
    pub fn new(name: impl Into<String>, api_port: u16) -> Self {
        PollTarget {
            name: name.into(),
            api_port,
        }
    }
}

impl From<&LabNode> for PollTarget {
    fn from(node: &LabNode) -> Self {
        PollTarget::new(node.name.clone(), node.api_port)
    }
}

/// One tick: when it was polled and which nodes answered 200 (in the targets' order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Since the poller started.
    pub at: Duration,
    pub answered: Vec<String>,
}

/// What [`AvailabilityPoller::stop`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvailabilityReport {
    /// The polled nodes, in the order given.
    pub nodes: Vec<String>,
    /// When the poller started (to compare with journal or misuse-log times).
    pub started: SystemTime,
    /// Every completed tick, in order.
    pub samples: Vec<Sample>,
}

impl AvailabilityReport {
    /// Number of completed ticks.
    pub fn polls(&self) -> usize {
        self.samples.len()
    }

    /// The fewest nodes that answered at any tick (0 when no tick completed).
    pub fn fewest(&self) -> usize {
        self.fewest_sample().map_or(0, |s| s.answered.len())
    }

    /// The first tick at which the fewest nodes answered.
    pub fn fewest_sample(&self) -> Option<&Sample> {
        self.samples.iter().reduce(|best, s| {
            if s.answered.len() < best.answered.len() {
                s
            } else {
                best
            }
        })
    }

    /// The nodes that did not answer at [`AvailabilityReport::fewest_sample`].
    pub fn fewest_missing(&self) -> Vec<String> {
        self.fewest_sample().map_or_else(Vec::new, |s| {
            self.nodes
                .iter()
                .filter(|n| !s.answered.contains(n))
                .cloned()
                .collect()
        })
    }
}

/// For assertion messages: `42 polls of 4 nodes; fewest answering: 3 at 1.300s (missing: node-2)`.
impl fmt::Display for AvailabilityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} polls of {} nodes; ", self.polls(), self.nodes.len())?;
        match self.fewest_sample() {
            None => write!(f, "no poll completed"),
            Some(s) => write!(
                f,
                "fewest answering: {} at {:.3}s (missing: {})",
                s.answered.len(),
                s.at.as_secs_f64(),
                match self.fewest_missing() {
                    missing if missing.is_empty() => "none".to_owned(),
                    missing => missing.join(", "),
                }
            ),
        }
    }
}

/// A running poller; [`AvailabilityPoller::stop`] ends it and returns what it saw. Dropped
/// without `stop`, it stops all the same.
#[derive(Debug)]
pub struct AvailabilityPoller {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Sample>>>,
    nodes: Vec<String>,
    started: SystemTime,
}

impl AvailabilityPoller {
    /// Starts polling `targets` at once (the first tick is now).
    pub fn start(targets: Vec<PollTarget>) -> anyhow::Result<AvailabilityPoller> {
        let stop = Arc::new(AtomicBool::new(false));
        let nodes = targets.iter().map(|t| t.name.clone()).collect();
        let started = SystemTime::now();
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("lab-availability".to_owned())
            .spawn(move || poll(&targets, &flag))
            .context("cannot start the availability poller's thread")?;
        Ok(AvailabilityPoller {
            stop,
            handle: Some(handle),
            nodes,
            started,
        })
    }

    /// Polls every node of `lab`, replacement nodes included.
    pub fn for_lab(lab: &Lab) -> anyhow::Result<AvailabilityPoller> {
        Self::start(lab.nodes.iter().map(PollTarget::from).collect())
    }

    /// Stops polling, waits for the ticks in flight (at most [`TIMEOUT`]) and reports.
    pub fn stop(mut self) -> AvailabilityReport {
        let samples = self.finish();
        AvailabilityReport {
            nodes: std::mem::take(&mut self.nodes),
            started: self.started,
            samples,
        }
    }

    fn finish(&mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for AvailabilityPoller {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A tick being collected: answers still expected, and who answered 200.
struct Pending {
    at: Duration,
    waiting: usize,
    answered: Vec<bool>,
}

fn record(ticks: &mut [Pending], (tick, node, ok): (usize, usize, bool)) {
    if let Some(p) = ticks.get_mut(tick) {
        p.waiting = p.waiting.saturating_sub(1);
        p.answered[node] = ok;
    }
}

/// The poller thread: issues a tick every [`INTERVAL`] (one short-lived thread per node, so a
/// node that hangs until [`TIMEOUT`] holds up nothing else), collects the answers, and after
/// `stop` waits for the ticks in flight.
fn poll(targets: &[PollTarget], stop: &AtomicBool) -> Vec<Sample> {
    let (tx, rx) = mpsc::channel::<(usize, usize, bool)>();
    let start = Instant::now();
    let mut ticks: Vec<Pending> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let tick = ticks.len();
        let mut pending = Pending {
            at: start.elapsed(),
            waiting: targets.len(),
            answered: vec![false; targets.len()],
        };
        for (node, target) in targets.iter().enumerate() {
            let tx = tx.clone();
            let port = target.api_port;
            let spawned = std::thread::Builder::new()
                .name("lab-availability-get".to_owned())
                .spawn(move || {
                    let ok = matches!(http_get(port, "/_info", TIMEOUT), Ok((200, _)));
                    let _ = tx.send((tick, node, ok));
                });
            // No thread, no answer: the node counts as not answering at this tick.
            if spawned.is_err() {
                pending.waiting -= 1;
            }
        }
        ticks.push(pending);
        let due = start + INTERVAL * u32::try_from(tick + 1).unwrap_or(u32::MAX);
        loop {
            let now = Instant::now();
            if now >= due || stop.load(Ordering::SeqCst) {
                break;
            }
            match rx.recv_timeout(due - now) {
                Ok(answer) => record(&mut ticks, answer),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }
    // Every GET ends within its timeouts, and with it the last sender.
    drop(tx);
    for answer in rx {
        record(&mut ticks, answer);
    }
    ticks
        .into_iter()
        .filter(|p| p.waiting == 0)
        .map(|p| Sample {
            at: p.at,
            answered: targets
                .iter()
                .zip(&p.answered)
                .filter(|(_, ok)| **ok)
                .map(|(t, _)| t.name.clone())
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// Answers every request with 200, until the test ends.
    fn answering() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                // The whole request first: closing on unread bytes would reset the connection.
                let (mut request, mut buf) = (Vec::new(), [0u8; 1024]);
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            }
        });
        port
    }

    #[test]
    fn a_hung_node_delays_neither_the_others_nor_the_ticks() {
        // The kernel accepts connections to a listener nobody serves: every GET hangs.
        let hung = TcpListener::bind("127.0.0.1:0").unwrap();
        let hung_port = hung.local_addr().unwrap().port();
        let up = answering();
        let poller = AvailabilityPoller::start(vec![
            PollTarget::new("up", up),
            PollTarget::new("hung", hung_port),
        ])
        .unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        let begun = Instant::now();
        let report = poller.stop();
        assert!(
            begun.elapsed() < TIMEOUT + Duration::from_millis(500),
            "{report}"
        );
        // About 12 ticks in 1.2 s: with one GET per tick, the hung node would allow 2.
        assert!(report.polls() >= 8, "{report}");
        assert!(
            report.samples.iter().all(|s| s.answered == ["up"]),
            "{report}: {:?}",
            report.samples
        );
        assert_eq!(report.fewest(), 1);
        assert_eq!(report.fewest_missing(), ["hung"]);
        assert!(report.to_string().contains("(missing: hung)"), "{report}");
    }

    #[test]
    fn the_fewest_drop_when_a_lab_node_stops_mid_poll() {
        let spec = super::super::testing::spec(2);
        let lab = super::super::LabGuard::up(&spec).unwrap();
        let poller = AvailabilityPoller::for_lab(&lab).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        lab.nodes[1].stop().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let report = poller.stop();
        assert_eq!(report.nodes, ["node-1", "node-2"]);
        assert_eq!(
            report.samples.first().map(|s| s.answered.len()),
            Some(2),
            "{report}"
        );
        assert_eq!(report.fewest(), 1, "{report}");
        assert_eq!(report.fewest_missing(), ["node-2"], "{report}");
        assert!(
            report
                .samples
                .iter()
                .all(|s| s.answered.contains(&"node-1".to_owned())),
            "{report}"
        );
        assert!(report.fewest_sample().unwrap().at >= Duration::from_millis(300));
    }
}
