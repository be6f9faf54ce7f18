//! A step's parameters on a host, as the plan gives them ([`crate::plan::Action`]): each step's
//! module reads what it acts on (paths, binary, service, backup dir) from here, never from the
//! inventory and the target again, so the run does exactly what the plan shows.

use crate::plan::{Action, Step};
use crate::ssh::Transport;

use super::ctx::{Shared, StepError};

/// `pick` of `step`'s parameters on `host` (`Action::stage`, `Action::service`, ...). A plan
/// whose step lacks them for one of its hosts is a bug of its builder, told as the host's
/// failure.
pub fn of<'s, T: Transport, P>(
    sh: &Shared<T>,
    step: &'s Step,
    host: &str,
    pick: fn(&Action) -> Option<&P>,
) -> Result<&'s P, StepError> {
    step.params(host).and_then(pick).ok_or_else(|| {
        sh.error(
            step,
            host,
            format!(
                "internal error: the plan gives no `{}` parameters for this host",
                step.kind
            ),
        )
    })
}
