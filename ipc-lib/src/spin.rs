//! How long a blocking wait spins before it sleeps on its futex, learned
//! from how this end's last waits ended.
//!
//! Spinning pays when what the wait is for comes within a few hundred
//! nanoseconds from a peer running on another CPU (a stream, a reply from
//! a peer that itself spins): it is caught without a sleep, and the peer
//! makes no wake syscall. It costs when the peer needs the CPU the spinner
//! holds (fewer free CPUs than runnable processes, or a pair the scheduler
//! keeps on one CPU, where the peer runs only once the spinner gives up),
//! or when nothing comes in time: the spin is lost and the sleep follows
//! anyway. On a 2-vCPU VM a blocking ping-pong of 64 B took 10.5 µs a
//! round trip with a fixed 200 spins and 2.1 µs with none (BENCHMARKS.md,
//! issue 18).
//!
//! So each waiting end keeps a budget, as glibc's adaptive mutexes keep a
//! spin count per mutex: a wait spins at most the budget; a spin that
//! catches its message raises the budget to about twice the spins it took
//! (never lowers it), and one that runs out halves it. Once waits keep
//! ending in the futex the budget reaches 0 and waits sleep at once,
//! except for an occasional probe at the full limit, so that a change (a
//! stream starting, a peer moving to a free CPU) is found; probes that
//! fail grow further apart. With fewer than two CPUs to run on, nothing
//! else can run while we spin, and no wait spins.
//!
//! What it gives up: two ends that both spin can reach a state where each
//! catches the other's messages and neither ever sleeps (on that VM 0.8 µs
//! a round trip, where a wake-up across CPUs took 20-30 µs). A fixed spin
//! stumbles into it now and then; ends that stop spinning after a few
//! misses rarely do. A budget kept up through long sleeps did not find it
//! either in the runs of BENCHMARKS.md, so the policy stays this simple.
//!
//! The bookkeeping is a few integer operations a wait (none when the wait
//! finds its message at once): no clock, no syscall.

use std::sync::OnceLock;

/// Spins a caught message's budget keeps beyond twice what it took, so a
/// wait as long as the last one, or a little longer, is still caught.
const SLACK: u32 = 16;
/// Waits without spinning before the first probe once the budget is 0.
const FIRST_PROBE_GAP: u32 = 16;
/// The most waits between two probes: a probe that fails costs one full
/// spin, at most once in this many waits.
const LAST_PROBE_GAP: u32 = 256;

/// One waiting end's spin budget.
#[derive(Clone, Debug)]
pub(crate) struct Spin {
    /// The most spins a wait makes: the configured bound, or 0 where
    /// spinning cannot pay.
    limit: u32,
    /// The most spins the next wait makes; 0: none but probes.
    budget: u32,
    /// While the budget is 0: waits left before the next probe.
    probe_in: u32,
    /// Waits between probes; doubles with each failed probe.
    probe_gap: u32,
}

impl Spin {
    /// A budget bounded by `limit` spins, starting at it. `limit` 0 never
    /// spins.
    pub(crate) fn new(limit: u32) -> Self {
        Self::for_cpus(limit, cpus())
    }

    fn for_cpus(limit: u32, cpus: Option<usize>) -> Self {
        // Unknown is not one: a machine whose count cannot be read is
        // left to the budget to judge.
        let limit = if cpus.is_some_and(|n| n < 2) {
            0
        } else {
            limit
        };
        Spin {
            limit,
            budget: limit,
            probe_in: FIRST_PROBE_GAP,
            probe_gap: FIRST_PROBE_GAP,
        }
    }

    /// The spins a wait that found nothing at once may make. Call once a
    /// wait, and then [`caught`](Self::caught) or [`missed`](Self::missed)
    /// when it returned more than 0.
    pub(crate) fn budget(&mut self) -> u32 {
        if self.budget > 0 || self.limit == 0 {
            return self.budget;
        }
        if self.probe_in > 0 {
            self.probe_in -= 1;
            return 0;
        }
        self.limit
    }

    /// The wait's spinning caught what it waited for, after `spins`.
    pub(crate) fn caught(&mut self, spins: u32) {
        let want = spins.saturating_mul(2).saturating_add(SLACK);
        self.budget = self.budget.max(want).min(self.limit);
        self.probe_gap = FIRST_PROBE_GAP;
        self.probe_in = FIRST_PROBE_GAP;
    }

    /// The wait spun all [`budget`](Self::budget) gave it, and sleeps.
    pub(crate) fn missed(&mut self) {
        if self.budget > 0 {
            self.budget /= 2;
        } else {
            // A probe.
            self.probe_gap = (self.probe_gap * 2).min(LAST_PROBE_GAP);
        }
        if self.budget == 0 {
            self.probe_in = self.probe_gap;
        }
    }
}

/// One wait's spin phase, as a waiting end runs it against its [`Spin`]:
/// the end looks, and while it finds nothing calls [`spin`](Self::spin)
/// until that says to sleep; [`done`](Self::done) when the wait gets what
/// it waited for.
#[derive(Debug, Default)]
pub(crate) struct SpinWait {
    spins: u32,
    /// The budget, asked at the first empty look: a wait that finds its
    /// message at once tells the policy nothing.
    allowed: Option<u32>,
    /// The spin ran out (and the policy was told): the wait sleeps.
    ran_out: bool,
}

impl SpinWait {
    /// After a look that found nothing: spins once and returns true while
    /// the budget lasts; false when the wait should sleep. The first false
    /// of a wait that spun tells the policy its spin ran out.
    pub(crate) fn spin(&mut self, policy: &mut Spin) -> bool {
        let allowed = *self.allowed.get_or_insert_with(|| policy.budget());
        if self.spins < allowed {
            self.spins += 1;
            std::hint::spin_loop();
            return true;
        }
        // Told once: the wait's later looks (after a sleep) sleep again.
        if self.spins > 0 && !self.ran_out {
            policy.missed();
        }
        self.ran_out = true;
        false
    }

    /// The wait got what it waited for: caught by the spin, if it never
    /// slept.
    pub(crate) fn done(&self, policy: &mut Spin) {
        if self.spins > 0 && !self.ran_out {
            policy.caught(self.spins);
        }
    }
}

/// The CPUs this process may run on (its affinity mask and cgroup quota,
/// not merely those online), read once: `None` if unknown.
fn cpus() -> Option<usize> {
    static CPUS: OnceLock<Option<usize>> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().ok().map(|n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one wait as `SpinWait` does: spins up to the budget, caught
    /// after `needs` spins (`None`: nothing came during the spin); returns
    /// the budget it had.
    fn wait(s: &mut Spin, needs: Option<u32>) -> u32 {
        let mut w = SpinWait::default();
        let mut looks = 0;
        loop {
            looks += 1;
            if needs.is_some_and(|k| looks > k) {
                w.done(s);
                break;
            }
            if !w.spin(s) {
                break;
            }
        }
        w.allowed.unwrap_or(0)
    }

    #[test]
    fn starts_at_the_limit_and_never_passes_it() {
        let mut s = Spin::for_cpus(200, Some(8));
        assert_eq!(s.budget(), 200);
        s.caught(150);
        assert_eq!(s.budget(), 200);
    }

    #[test]
    fn waits_that_end_in_the_futex_halve_the_budget_to_nothing() {
        let mut s = Spin::for_cpus(200, Some(8));
        let budgets: Vec<u32> = (0..9).map(|_| wait(&mut s, None)).collect();
        assert_eq!(budgets, [200, 100, 50, 25, 12, 6, 3, 1, 0]);
    }

    #[test]
    fn a_caught_message_raises_the_budget_to_twice_its_spins() {
        let mut s = Spin::for_cpus(200, Some(8));
        for _ in 0..5 {
            wait(&mut s, None);
        }
        assert_eq!(s.budget(), 6);
        s.caught(5);
        assert_eq!(s.budget(), 2 * 5 + SLACK);
        // A short catch does not lower it.
        s.caught(1);
        assert_eq!(s.budget(), 2 * 5 + SLACK);
    }

    #[test]
    fn a_stream_of_quick_catches_with_rare_misses_settles_near_what_it_needs() {
        let mut s = Spin::for_cpus(200, Some(8));
        for i in 0..1000 {
            wait(&mut s, if i % 10 == 9 { None } else { Some(4) });
        }
        // Twice what a catch took, halved by the last miss.
        let b = s.budget();
        assert!(((2 * 4 + SLACK) / 2..=2 * 4 + SLACK).contains(&b), "{b}");
    }

    #[test]
    fn with_the_budget_spent_only_probes_spin_and_failed_probes_spread_out() {
        let mut s = Spin::for_cpus(200, Some(8));
        let mut probes = Vec::new();
        for i in 0..2000 {
            if wait(&mut s, None) == 200 {
                probes.push(i);
            }
        }
        // The first wait, then after the 7 halvings from 100 to 1 and
        // 16 waits without spinning a probe, each gap twice the last, up
        // to 256.
        let gaps: Vec<u32> = probes.windows(2).map(|w| w[1] - w[0] - 1).collect();
        assert_eq!(gaps[0], 7 + FIRST_PROBE_GAP);
        assert_eq!(&gaps[1..6], [32, 64, 128, 256, 256]);
    }

    #[test]
    fn a_probe_that_catches_brings_spinning_back() {
        let mut s = Spin::for_cpus(200, Some(8));
        while wait(&mut s, None) > 0 {}
        // That last wait was the first without spinning; then a message
        // 30 spins away every time, caught once a probe spins.
        let mut n = 1;
        while wait(&mut s, Some(30)) == 0 {
            n += 1;
        }
        assert_eq!(n, FIRST_PROBE_GAP);
        assert_eq!(s.budget(), 2 * 30 + SLACK);
    }

    #[test]
    fn a_wait_that_slept_is_no_catch_and_is_told_once() {
        let mut s = Spin::for_cpus(200, Some(8));
        let mut w = SpinWait::default();
        while w.spin(&mut s) {}
        // Woken, it looks again, finds nothing and sleeps again.
        assert!(!w.spin(&mut s));
        w.done(&mut s);
        assert_eq!(s.budget(), 100);
    }

    #[test]
    fn one_cpu_never_spins_and_a_zero_limit_never_probes() {
        let mut one = Spin::for_cpus(200, Some(1));
        let mut zero = Spin::for_cpus(0, Some(8));
        for _ in 0..1000 {
            assert_eq!(wait(&mut one, Some(1)), 0);
            assert_eq!(wait(&mut zero, Some(1)), 0);
        }
        // Unknown is left to the budget.
        assert_eq!(Spin::for_cpus(200, None).budget(), 200);
    }

    #[test]
    fn an_unbounded_limit_spins_for_ever_while_it_catches() {
        let mut s = Spin::for_cpus(u32::MAX, Some(8));
        for k in [1, 1_000, 3] {
            assert_eq!(wait(&mut s, Some(k)), u32::MAX);
        }
    }
}
