//! A recorded session as the dashboard's replay source.

use anyhow::Result;
use collector::replay::Replay;
use ipc_events::live::Snapshot;

/// A session in the database, indexed as the dashboard asks for it.
pub struct DbReplay {
    replay: Replay,
    runtime: tokio::runtime::Handle,
}

impl DbReplay {
    /// `replay`, read through `runtime` from the dashboard's blocking
    /// thread (where waiting on the runtime is allowed).
    pub fn new(replay: Replay, runtime: tokio::runtime::Handle) -> Self {
        DbReplay { replay, runtime }
    }
}

impl tui::ReplaySource for DbReplay {
    fn span(&self) -> (u64, u64) {
        let info = self.replay.info();
        (info.start_ns, info.end_ns)
    }

    fn snapshot_at(&mut self, t_ns: u64) -> Result<Option<Snapshot>> {
        Ok(self.runtime.block_on(self.replay.snapshot_at(t_ns))?)
    }

    fn load_more(&mut self) -> Result<()> {
        Ok(self.runtime.block_on(self.replay.load_more())?)
    }

    fn loaded_until(&self) -> u64 {
        self.replay.loaded_ns()
    }

    fn marks(&self) -> Vec<tui::timeline::Mark> {
        use tui::timeline::{Mark, MarkKind};
        let marks = self.replay.marks();
        let at = |kind| move |&at_ns: &u64| Mark { at_ns, kind };
        marks
            .deadlocks
            .iter()
            .map(at(MarkKind::Deadlock))
            .chain(marks.drops.iter().map(at(MarkKind::Drop)))
            .collect()
    }
}
