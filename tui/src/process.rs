//! One process's part in the state shown: the channels it sends and
//! receives on, the objects it waits on and holds, its signals and its
//! deadlocks, each with the other processes involved. The process view
//! draws these rows, and Enter on one opens a process it names, so both
//! read them from here.

use ipc_events::live::{ChannelStats, Deadlock, Resource, SignalStats, Snapshot, WaitStats};

/// The groups of a process's rows, in the order the view shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Sends,
    Receives,
    WaitsOn,
    Holds,
    SignalsSent,
    SignalsReceived,
    Deadlocks,
}

/// One row of a process's view: something it does, and with whom.
#[derive(Clone, Debug)]
pub enum Link<'a> {
    /// It sends on `channel`, to `peers` (empty when nothing it sent was
    /// paired with a receive).
    Sends {
        channel: &'a ChannelStats,
        peers: Vec<u32>,
    },
    /// It receives on `channel`, from `peers`.
    Receives {
        channel: &'a ChannelStats,
        peers: Vec<u32>,
    },
    /// It has waited on `wait`, which `peers` hold now.
    WaitsOn {
        wait: &'a WaitStats,
        peers: Vec<u32>,
    },
    /// It holds `wait`, which `peers` have waited on.
    Holds {
        wait: &'a WaitStats,
        peers: Vec<u32>,
    },
    /// A signal it sent; the target is the peer.
    SignalSent(&'a SignalStats),
    /// A signal it received; the sender is the peer, unless the kernel
    /// sent it.
    SignalReceived(&'a SignalStats),
    /// It is in `deadlock`, waiting for `waits_for`, which `holder` (the
    /// cycle's next member) holds.
    Deadlock {
        deadlock: &'a Deadlock,
        waits_for: &'a Resource,
        holder: u32,
    },
}

impl Link<'_> {
    /// The group the row belongs to.
    pub fn section(&self) -> Section {
        match self {
            Link::Sends { .. } => Section::Sends,
            Link::Receives { .. } => Section::Receives,
            Link::WaitsOn { .. } => Section::WaitsOn,
            Link::Holds { .. } => Section::Holds,
            Link::SignalSent(_) => Section::SignalsSent,
            Link::SignalReceived(_) => Section::SignalsReceived,
            Link::Deadlock { .. } => Section::Deadlocks,
        }
    }

    /// The other processes the row names.
    pub fn peers(&self) -> Vec<u32> {
        match self {
            Link::Sends { peers, .. }
            | Link::Receives { peers, .. }
            | Link::WaitsOn { peers, .. }
            | Link::Holds { peers, .. } => peers.clone(),
            Link::SignalSent(g) => vec![g.target_pid],
            Link::SignalReceived(g) => senders(g).collect(),
            Link::Deadlock { holder, .. } => vec![*holder],
        }
    }

    /// What each of [`Link::peers`] is to the row.
    pub fn peer_role(&self) -> &'static str {
        match self.section() {
            Section::Sends => "receiver",
            Section::Receives | Section::SignalsReceived => "sender",
            Section::WaitsOn | Section::Deadlocks => "holder",
            Section::Holds => "waiter",
            Section::SignalsSent => "target",
        }
    }
}

/// The process that sent a signal: none when the kernel did (pid 0).
pub fn senders(g: &SignalStats) -> impl Iterator<Item = u32> {
    Some(g.sender_pid).filter(|&p| p != 0).into_iter()
}

/// Who sent to whom on a channel: its paired (sender, receiver) pids, or,
/// where nothing was paired (one end traced), every sender to every
/// receiver. Without pairs, a socket whose two ends both send would show
/// each process sending to itself.
pub fn pairs(c: &ChannelStats) -> Vec<(u32, u32)> {
    if c.pairs.is_empty() {
        c.senders
            .iter()
            .flat_map(|&from| c.receivers.iter().map(move |&to| (from, to)))
            .collect()
    } else {
        c.pairs.clone()
    }
}

/// Every row of `pid`'s view in `s`, section by section, each section in
/// the snapshot's order (by id), so that rows stay put as it updates.
pub fn links(s: &Snapshot, pid: u32) -> Vec<Link<'_>> {
    let mut out = Vec::new();
    let peers_on = |c: &ChannelStats, sending: bool| -> Vec<u32> {
        let mut peers = Vec::new();
        for (from, to) in pairs(c) {
            let (me, peer) = if sending { (from, to) } else { (to, from) };
            if me == pid && !peers.contains(&peer) {
                peers.push(peer);
            }
        }
        peers
    };
    let others =
        |pids: &[u32]| -> Vec<u32> { pids.iter().copied().filter(|&p| p != pid).collect() };
    out.extend(
        s.channels
            .iter()
            .filter(|c| c.senders.contains(&pid))
            .map(|c| Link::Sends {
                channel: c,
                peers: peers_on(c, true),
            }),
    );
    out.extend(
        s.channels
            .iter()
            .filter(|c| c.receivers.contains(&pid))
            .map(|c| Link::Receives {
                channel: c,
                peers: peers_on(c, false),
            }),
    );
    out.extend(
        s.waits
            .iter()
            .filter(|w| w.waiters.contains(&pid))
            .map(|w| Link::WaitsOn {
                wait: w,
                peers: others(&w.holders),
            }),
    );
    out.extend(
        s.waits
            .iter()
            .filter(|w| w.holders.contains(&pid))
            .map(|w| Link::Holds {
                wait: w,
                peers: others(&w.waiters),
            }),
    );
    out.extend(
        s.signals
            .iter()
            .filter(|g| g.sender_pid == pid)
            .map(Link::SignalSent),
    );
    out.extend(
        s.signals
            .iter()
            .filter(|g| g.target_pid == pid)
            .map(Link::SignalReceived),
    );
    for d in &s.deadlocks {
        for (i, m) in d.cycle.iter().enumerate() {
            if m.pid == pid {
                out.push(Link::Deadlock {
                    deadlock: d,
                    waits_for: &m.waits_for,
                    holder: d.cycle[(i + 1) % d.cycle.len()].pid,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::snapshot_with_deadlock;

    fn rows(s: &Snapshot, pid: u32) -> Vec<(Section, String, Vec<u32>)> {
        links(s, pid)
            .iter()
            .map(|l| {
                let what = match l {
                    Link::Sends { channel, .. } | Link::Receives { channel, .. } => {
                        channel.channel.name()
                    }
                    Link::WaitsOn { wait, .. } | Link::Holds { wait, .. } => wait.channel.name(),
                    Link::SignalSent(g) | Link::SignalReceived(g) => g.signo.to_string(),
                    Link::Deadlock { waits_for, .. } => waits_for.name.clone(),
                };
                (l.section(), what, l.peers())
            })
            .collect()
    }

    #[test]
    fn a_process_s_rows_name_whom_it_deals_with() {
        let s = snapshot_with_deadlock(true);
        assert_eq!(
            rows(&s, 102),
            [
                (Section::Sends, "results".to_owned(), vec![101]),
                (Section::Receives, "jobs".to_owned(), vec![101]),
                (Section::Receives, "pipe:[4242]".to_owned(), vec![101]),
                (Section::WaitsOn, "/items".to_owned(), vec![101]),
                (Section::Holds, "/slots".to_owned(), vec![101]),
                (Section::SignalsReceived, "10".to_owned(), vec![100]),
                (Section::Deadlocks, "/items".to_owned(), vec![101]),
            ]
        );
        assert_eq!(
            rows(&s, 100),
            [(Section::SignalsSent, "10".to_owned(), vec![102])]
        );
        assert!(links(&s, 4242).is_empty());
    }

    #[test]
    fn peers_come_from_the_pairs_and_unpaired_sends_from_every_receiver() {
        let mut s = snapshot_with_deadlock(false);
        let jobs = &mut s.channels[0];
        jobs.senders = vec![101, 103];
        jobs.receivers = vec![102, 104];
        jobs.pairs = vec![(101, 102), (103, 104), (101, 104), (101, 102)];
        assert_eq!(links(&s, 101)[0].peers(), [102, 104], "once each");
        assert_eq!(links(&s, 104)[0].peers(), [103, 101]);
        s.channels[0].pairs.clear();
        assert_eq!(links(&s, 103)[0].peers(), [102, 104]);
    }

    #[test]
    fn a_signal_from_the_kernel_names_no_process() {
        let mut s = snapshot_with_deadlock(false);
        s.signals[0].sender_pid = 0;
        let got = links(&s, 102);
        let got = got.iter().find(|l| l.section() == Section::SignalsReceived);
        assert_eq!(got.map(Link::peers), Some(vec![]));
    }
}
