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
//! So each waiting end keeps statistics of its spins, as glibc's adaptive
//! mutexes keep a spin count per mutex: how often a spin caught what it
//! waited for (a moving average over the waits that spun, each weighing
//! 1/16), and how many spins a catch took (a slowly decaying maximum).
//! While the catch rate stays at 1 in 32 or more, a wait spins up to
//! about twice that many spins. Below it, waits sleep at once, except for
//! an occasional probe at the full limit, so that a change (a stream
//! starting, a peer moving to a free CPU) is found; probes that fail grow
//! further apart. On a machine with one CPU online, nothing else can run
//! while we spin, and no wait spins.
//!
//! The rate is what tells the two costs apart. A pair the scheduler keeps
//! on one CPU catches nothing (the peer cannot run until the spin ends),
//! so the rate falls under the line within about 30 waits and spinning
//! stops. A peer on another CPU is caught now and then even when most of
//! its messages come later than a spin lasts (5 to 14 in 100 waits of a
//! 64 B ping-pong on that VM at times when a wake-up across CPUs took
//! 20-30 µs; more than half of a 64 KiB stream's waits for room), and
//! each catch saves a sleep and a wake-up; the spin there costs CPU time,
//! not the peer's latency. Halving a budget on every miss instead stopped
//! those catches too: 64 B one way 25.6 µs against 17.5 µs with the fixed
//! spins, 64 KiB streams 13-15% slower (BENCHMARKS.md).
//!
//! What no count of catches sees: on that VM, spinning a few microseconds
//! before sleeping also made the wake-up itself cheaper when the answer
//! came later than the spin (a 64 KiB round trip to a peer busy-polling
//! on the other CPU: 32 µs with the fixed spin, 48 µs with this policy,
//! which stops spinning there, as with none).
//!
//! The bookkeeping is a few integer operations a wait (none when the wait
//! finds its message at once): no clock, no syscall.

use std::sync::OnceLock;

/// Spins a wait may make beyond twice the longest recent catch.
const SLACK: u32 = 16;
/// The catch rate's unit: 1024 is every spin caught.
const ONE: u32 = 1024;
/// The catch rate at and above which waits spin: 1 in 32.
const SPIN_RATE: u32 = ONE / 32;
/// The catch rate a new end starts with: spinning, for the 30 or so
/// waits it takes a pair that catches nothing to fall under the line.
const START_RATE: u32 = ONE / 4;
/// Waits without spinning before the first probe once the rate is under
/// the line.
const FIRST_PROBE_GAP: u32 = 16;
/// The most waits between two probes: a probe that fails costs one full
/// spin, at most once in this many waits.
const LAST_PROBE_GAP: u32 = 256;

/// One waiting end's spin statistics.
#[derive(Clone, Debug)]
pub(crate) struct Spin {
    /// The most spins a wait makes: the configured bound, or 0 where
    /// spinning cannot pay.
    limit: u32,
    /// How often the waits that spun caught what they waited for, in
    /// 1/`ONE`: each moves it 1/16 of the way towards `ONE` (caught) or
    /// 0 (missed).
    rate: u32,
    /// The most spins a recent catch took: set by a longer catch, decays
    /// by 1/8 with each shorter one.
    reach: u32,
    /// While the rate is under the line: waits left before the next
    /// probe.
    probe_in: u32,
    /// Waits between probes; doubles with each failed probe.
    probe_gap: u32,
}

impl Spin {
    /// Statistics for waits of at most `limit` spins. `limit` 0 never
    /// spins.
    pub(crate) fn new(limit: u32) -> Self {
        Self::for_cpus(limit, cpus())
    }

    fn for_cpus(limit: u32, cpus: Option<usize>) -> Self {
        // Unknown is not one: a machine whose count cannot be read is
        // left to the statistics to judge.
        let limit = if cpus.is_some_and(|n| n < 2) {
            0
        } else {
            limit
        };
        Spin {
            limit,
            rate: START_RATE,
            // Until a catch says otherwise, up to the limit.
            reach: limit / 2,
            probe_in: FIRST_PROBE_GAP,
            probe_gap: FIRST_PROBE_GAP,
        }
    }

    /// The spins a wait that found nothing at once may make. Call once a
    /// wait, and then [`caught`](Self::caught) or [`missed`](Self::missed)
    /// when it returned more than 0.
    pub(crate) fn budget(&mut self) -> u32 {
        // 0 never spins; `u32::MAX` asks to spin until something comes.
        if self.limit == 0 || self.limit == u32::MAX {
            return self.limit;
        }
        if self.rate >= SPIN_RATE {
            return self
                .reach
                .saturating_mul(2)
                .saturating_add(SLACK)
                .min(self.limit);
        }
        if self.probe_in > 0 {
            self.probe_in -= 1;
            return 0;
        }
        self.limit
    }

    /// The wait's spinning caught what it waited for, after `spins`.
    pub(crate) fn caught(&mut self, spins: u32) {
        self.rate += (ONE - self.rate) / 16;
        self.reach = spins.max(self.reach - self.reach.div_ceil(8));
        self.probe_gap = FIRST_PROBE_GAP;
        self.probe_in = FIRST_PROBE_GAP;
    }

    /// The wait spun all [`budget`](Self::budget) gave it, and sleeps.
    pub(crate) fn missed(&mut self) {
        let probing = self.rate < SPIN_RATE;
        self.rate -= self.rate / 16;
        if probing {
            self.probe_gap = (self.probe_gap * 2).min(LAST_PROBE_GAP);
        }
        if self.rate < SPIN_RATE {
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

/// The CPUs online, read once: `None` if unknown. Online, not the ones
/// this process may run on: a process pinned to one CPU whose peer runs
/// on another (a common low-latency setup) is where spinning pays most,
/// while on a machine with one CPU online it never can.
fn cpus() -> Option<usize> {
    static CPUS: OnceLock<Option<usize>> = OnceLock::new();
    *CPUS.get_or_init(crate::sys::online_cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one wait as the ends do: spins up to the budget, caught after
    /// `needs` spins (`None`: nothing came during the spin); returns the
    /// budget it had.
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

    fn spin(limit: u32) -> Spin {
        Spin::for_cpus(limit, Some(8))
    }

    #[test]
    fn starts_spinning_up_to_the_limit() {
        assert_eq!(spin(200).budget(), 200);
        assert_eq!(spin(100).budget(), 100);
    }

    #[test]
    fn a_pair_that_catches_nothing_stops_spinning_within_some_33_waits() {
        let mut s = spin(200);
        let spinning = (0..100).take_while(|_| wait(&mut s, None) > 0).count();
        assert!((30..=36).contains(&spinning), "{spinning}");
        assert_eq!(wait(&mut s, None), 0);
    }

    #[test]
    fn rare_catches_keep_it_spinning() {
        // One wait in ten caught, late in the spin: a peer on another CPU
        // whose messages mostly come later than a spin lasts.
        let mut s = spin(200);
        for i in 0..2000 {
            let b = wait(&mut s, (i % 10 == 0).then_some(150));
            assert!(b >= 150, "wait {i}: {b}");
        }
    }

    #[test]
    fn quick_catches_shrink_the_spin_to_about_twice_what_they_take() {
        let mut s = spin(200);
        for _ in 0..100 {
            wait(&mut s, Some(5));
        }
        assert_eq!(s.budget(), 2 * 5 + SLACK);
        // A longer catch (near the end of that spin) widens it at once.
        wait(&mut s, Some(20));
        assert_eq!(s.budget(), 2 * 20 + SLACK);
    }

    #[test]
    fn without_spinning_only_probes_spin_and_failed_probes_spread_out() {
        let mut s = spin(200);
        while wait(&mut s, None) > 0 {}
        let mut probes = Vec::new();
        for i in 0..2000 {
            match wait(&mut s, None) {
                0 => {}
                200 => probes.push(i),
                b => panic!("wait {i} spun {b}"),
            }
        }
        // 15 waits without spinning (the wait that ended the loop was
        // the 16th), then each gap twice the last, up to 256.
        let gaps: Vec<u32> = probes.windows(2).map(|w| w[1] - w[0] - 1).collect();
        assert_eq!(probes[0], FIRST_PROBE_GAP - 1);
        assert_eq!(&gaps[..5], [32, 64, 128, 256, 256]);
    }

    #[test]
    fn a_probe_that_catches_brings_spinning_back() {
        let mut s = spin(200);
        while wait(&mut s, None) > 0 {}
        // A message 30 spins away every time from now on: only a probe
        // can see it, then every wait does.
        let mut asleep = 1;
        while wait(&mut s, Some(30)) == 0 {
            asleep += 1;
        }
        assert_eq!(asleep, FIRST_PROBE_GAP);
        for _ in 0..100 {
            assert!(wait(&mut s, Some(30)) >= 30);
        }
    }

    #[test]
    fn a_wait_that_slept_is_no_catch_and_is_told_once() {
        let mut s = spin(200);
        let mut w = SpinWait::default();
        while w.spin(&mut s) {}
        let rate = s.rate;
        // Woken, it looks again, finds nothing and sleeps again; then its
        // message comes.
        assert!(!w.spin(&mut s));
        w.done(&mut s);
        assert_eq!(s.rate, rate);
        assert_eq!(rate, START_RATE - START_RATE / 16);
    }

    #[test]
    fn one_cpu_never_spins_and_a_zero_limit_never_probes() {
        let mut one = Spin::for_cpus(200, Some(1));
        let mut zero = spin(0);
        for _ in 0..1000 {
            assert_eq!(wait(&mut one, Some(1)), 0);
            assert_eq!(wait(&mut zero, Some(1)), 0);
        }
        // Unknown is left to the statistics.
        assert_eq!(Spin::for_cpus(200, None).budget(), 200);
    }

    #[test]
    fn an_unbounded_limit_spins_until_something_comes() {
        let mut s = spin(u32::MAX);
        for k in [1, 1_000, 3, 3, 3] {
            assert_eq!(wait(&mut s, Some(k)), u32::MAX);
        }
    }
}
