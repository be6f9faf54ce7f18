//! Ctrl-C and SIGTERM during a run. The first asks the engine to start nothing new (the running
//! remote commands finish or reach their deadline, the run journals `cancelled`, releases its
//! locks and says how to resume). The second stops waiting: it journals that, says the locks
//! stay, and exits at once with [`exit_code::CANCELLED`].

use std::sync::Arc;

use fleetup::events::{Event, EventSink};
use fleetup::exit_code;
use fleetup::runner::Cancel;
use tokio::signal::unix::{SignalKind, signal};

/// Waits for the signals of a run; spawn it for the run's lifetime.
/// `command` (`upgrade`, `rollback`) names the run in the last message.
pub async fn watch(cancel: Cancel, sink: Arc<dyn EventSink>, run_id: String, command: String) {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let name = tokio::select! {
        _ = int.recv() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    };
    cancel.request();
    errln!(
        "\n{name}: cancelling: nothing new starts; running commands finish, then the locks are released (press Ctrl-C again to stop waiting and leave the locks)"
    );
    sink.emit(&Event::Notice {
        host: None,
        message: format!("{name}: cancelling; nothing new starts"),
    });
    let name = tokio::select! {
        _ = int.recv() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    };
    sink.emit(&Event::Notice {
        host: None,
        message: format!(
            "{name} again: stopped waiting; the locks stay on the nodes and commands may still run there"
        ),
    });
    sink.emit(&Event::RunFinished {
        run_id: run_id.clone(),
        outcome: "aborted".into(),
        exit_code: exit_code::CANCELLED,
        duration_ms: 0,
    });
    errln!(
        "error: {name} again: stopped without waiting; the locks stay on the nodes (`fleetup {command} --resume {run_id}` takes them over)"
    );
    std::process::exit(exit_code::CANCELLED);
}
