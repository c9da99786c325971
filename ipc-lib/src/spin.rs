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
//! catches its message raises the budget to about twice the spins it took,
//! and one that runs out and is followed by a short sleep halves it. Once
//! waits keep ending that way the budget reaches 0 and waits sleep at
//! once, except for an occasional probe at the full limit, so that a
//! change (a stream starting, a peer moving to a free CPU) is found;
//! probes that fail grow further apart.
//!
//! A spin that runs out and is followed by a long sleep (`LONG_SLEEP`
//! times the spin or more) says something else: the spin was a small
//! part of the wait, so it cost little, and it was not what kept the peer
//! from running. It restores the whole budget. That keeps two ends that
//! both spin able to reach the state where each catches the other's
//! messages and neither sleeps: on that VM, at times when a wake-up across
//! CPUs took 20-30 µs, a ping-pong pinned to two CPUs sometimes ran 0.8 µs
//! a round trip that way with a fixed 200 spins, against 50-60 µs asleep,
//! and ends that stopped spinning after a few misses never did.
//!
//! With fewer than two CPUs to run on, nothing else can run while we
//! spin, and no wait spins.
//!
//! A wait that finds its message at once costs the policy nothing. One
//! that waits reads the clock only if its spin lasts `TIMED_AFTER` spins,
//! and after its first futex sleep: never per spin.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Spins a caught message's budget keeps beyond twice what it took, so a
/// wait as long as the last one, or a little longer, is still caught.
const SLACK: u32 = 16;
/// Waits without spinning before the first probe once the budget is 0.
const FIRST_PROBE_GAP: u32 = 16;
/// The most waits between two probes: a probe that fails costs one full
/// spin, at most once in this many waits.
const LAST_PROBE_GAP: u32 = 256;
/// A sleep after a spin that ran out is long when it lasts this many
/// times the spin or more: spinning took at most a ninth of the wait.
const LONG_SLEEP: u32 = 8;
/// Spins before a waiting end reads the clock to time its spin: a wait
/// caught sooner reads none. A spin that ends sooner is not timed, and
/// its miss counts as short.
const TIMED_AFTER: u32 = 32;

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
    /// wait, and then [`caught`](Self::caught), or [`missed`](Self::missed)
    /// after its first sleep, when it returned more than 0.
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

    /// The wait spun all [`budget`](Self::budget) gave it, for `spun`
    /// from its `TIMED_AFTER`th spin (`None`: it stopped before), and then
    /// slept for `slept` (its first futex sleep).
    pub(crate) fn missed(&mut self, spun: Option<Duration>, slept: Duration) {
        if spun.is_some_and(|spun| slept >= spun * LONG_SLEEP) {
            self.budget = self.limit;
            self.probe_gap = FIRST_PROBE_GAP;
            return;
        }
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
/// until that says to sleep; [`sleeping`](Self::sleeping) and
/// [`woke`](Self::woke) around each sleep; [`done`](Self::done) when the
/// wait gets what it waited for.
#[derive(Debug, Default)]
pub(crate) struct SpinWait {
    spins: u32,
    /// The budget, asked at the first empty look: a wait that finds its
    /// message at once tells the policy nothing.
    allowed: Option<u32>,
    /// When the spin reached `TIMED_AFTER` spins.
    timed: Option<Instant>,
    /// When a spin that ran out went to sleep, until it is reported.
    missed_at: Option<Instant>,
    slept: bool,
}

impl SpinWait {
    /// After a look that found nothing: spins once and returns true while
    /// the budget lasts; false when the wait should sleep.
    pub(crate) fn spin(&mut self, policy: &mut Spin) -> bool {
        let allowed = *self.allowed.get_or_insert_with(|| policy.budget());
        if self.spins >= allowed {
            return false;
        }
        self.spins += 1;
        if self.spins == TIMED_AFTER {
            self.timed = Some(Instant::now());
        }
        std::hint::spin_loop();
        true
    }

    /// The wait is about to sleep; `now` is the clock its caller read
    /// for the sleep's deadline.
    pub(crate) fn sleeping(&mut self, now: Instant) {
        if !self.slept {
            self.slept = true;
            if self.spins > 0 {
                self.missed_at = Some(now);
            }
        }
    }

    /// The wait woke from a sleep: the first one, after a spin that ran
    /// out, tells the policy how long the spin and the sleep took.
    pub(crate) fn woke(&mut self, policy: &mut Spin) {
        if let Some(at) = self.missed_at.take() {
            policy.missed(self.timed.map(|t| at - t), at.elapsed());
        }
    }

    /// The wait got what it waited for: caught by the spin, if it never
    /// slept.
    pub(crate) fn done(&self, policy: &mut Spin) {
        if self.spins > 0 && !self.slept {
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

    const SPIN: Duration = Duration::from_micros(4);

    /// Runs one wait: spins up to the budget, caught after `needs` spins
    /// (`None`: nothing came during the spin) or else a short sleep;
    /// returns the budget it had.
    fn wait(s: &mut Spin, needs: Option<u32>) -> u32 {
        wait_sleeping(s, needs, SPIN)
    }

    fn wait_sleeping(s: &mut Spin, needs: Option<u32>, slept: Duration) -> u32 {
        let b = s.budget();
        match needs {
            Some(k) if b > 0 && k <= b => s.caught(k),
            _ if b > 0 => s.missed((b > TIMED_AFTER).then_some(SPIN), slept),
            _ => {}
        }
        b
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
    fn a_long_sleep_after_a_spin_keeps_the_budget_and_brings_it_back() {
        let long = SPIN * LONG_SLEEP;
        let mut s = Spin::for_cpus(200, Some(8));
        for _ in 0..100 {
            assert_eq!(wait_sleeping(&mut s, None, long), 200);
        }
        // Short sleeps take it to nothing; a probe with a long sleep
        // restores it.
        while wait(&mut s, None) > 0 {}
        while wait_sleeping(&mut s, None, long) == 0 {}
        assert_eq!(s.budget(), 200);
    }

    #[test]
    fn an_untimed_spin_counts_as_short() {
        let mut s = Spin::for_cpus(200, Some(8));
        while s.budget() > TIMED_AFTER {
            s.missed(Some(SPIN), SPIN);
        }
        let b = s.budget();
        s.missed(None, Duration::from_secs(1));
        assert_eq!(s.budget(), b / 2);
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
