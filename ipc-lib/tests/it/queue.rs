//! The work queue between real processes: worker processes SIGKILLed at
//! random moments while thousands of jobs go through, every job still
//! acknowledged exactly once; a producer SIGKILLed mid-push does not
//! break the queue.
//!
//! Workers keep their books in a shared region, one pair of words per
//! job: the pid that last started it (written before the ack) and how
//! many acks of it succeeded (added after). A job acknowledged twice
//! shows a count of 2. A count of 0 is allowed only for a job last
//! started by a killed worker, which may have died between its ack and
//! its bookkeeping (nanoseconds; the run says how often it happened),
//! and only once nothing more can change it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ipc_lib::queue::{AckError, Consumer, Producer, TakeError};
use ipc_lib::region::Region;

use crate::child::nums;
use crate::support::{open_when_ready, spawn, unique_name, wait_bounded, NameGuard, PATIENCE};

/// Jobs per round, rounds, workers alive at once, kills per round.
const JOBS: u64 = 2000;
const ROUNDS: u64 = 3;
const WORKERS: usize = 4;
const KILLS: usize = 8;

/// The job that tells a worker to leave.
const STOP: u64 = u64::MAX;

fn books(name: &str) -> String {
    format!("{name}-books")
}

/// The child's side (see `child::play`).
pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    match role {
        // Takes jobs until told to stop: each is a job number and a work
        // time in µs; records the start, works, acks, records the ack.
        "queue-worker" => {
            let mut queue = open_when_ready(|| Consumer::builder(name).open());
            let books = open_when_ready(|| Region::builder(books(name)).open());
            let me = u64::from(std::process::id());
            loop {
                let job = queue
                    .next_timeout(PATIENCE)
                    .map_err(|e| format!("next: {e}"))?;
                let [n, work] = job_fields(job.payload())?;
                if n == STOP {
                    return job.ack().map_err(|e| format!("ack stop: {e}"));
                }
                books
                    .write_value(16 * n as usize, me)
                    .map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_micros(work));
                match job.ack() {
                    Ok(()) => {
                        books
                            .fetch_add_u64(16 * n as usize + 8, 1)
                            .map_err(|e| e.to_string())?;
                    }
                    Err(AckError::Lost { msg_id }) => {
                        return Err(format!(
                            "job {n} (id {msg_id}) was taken from a live worker"
                        ))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        // Pushes jobs of ARG bytes as fast as it can until killed.
        "queue-flood" => {
            let [len] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let mut producer = open_when_ready(|| Producer::builder(name).open());
            let job = vec![0xee; len as usize];
            loop {
                producer.push(&job).map_err(|e| format!("push: {e}"))?;
            }
        }
        other => Err(format!("unknown role {other:?}")),
    }
}

fn job(n: u64, work_us: u64) -> Vec<u8> {
    [n.to_le_bytes(), work_us.to_le_bytes()].concat()
}

fn job_fields(payload: &[u8]) -> Result<[u64; 2], String> {
    let word = |i: usize| {
        payload
            .get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    match (payload.len(), word(0), word(1)) {
        (16, Some(n), Some(work)) => Ok([n, work]),
        _ => Err(format!("not a job: {payload:?}")),
    }
}

/// xorshift64: kill moments and work times, reproducible from the
/// printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What one round's books say.
struct Tally {
    /// Jobs acknowledged once, twice or more, and not at all.
    once: u64,
    twice: Vec<u64>,
    unacked: Vec<(u64, u32)>,
}

fn tally(books: &Region) -> Tally {
    let mut t = Tally {
        once: 0,
        twice: Vec::new(),
        unacked: Vec::new(),
    };
    for n in 0..JOBS {
        let started: u64 = books.read_value(16 * n as usize).unwrap();
        match books.read_value::<u64>(16 * n as usize + 8).unwrap() {
            0 => t.unacked.push((n, started as u32)),
            1 => t.once += 1,
            _ => t.twice.push(n),
        }
    }
    t
}

#[test]
fn every_job_is_acknowledged_exactly_once_while_workers_are_killed() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let (mut killed_total, mut redelivered_total, mut window_total) = (0, 0, 0);
    for round in 0..ROUNDS {
        let name = unique_name(&format!("q-kill{round}"));
        let _names = (NameGuard(name.clone()), NameGuard(books(&name)));
        let books = Region::builder(books(&name))
            .size(16 * JOBS as usize)
            .create()
            .unwrap();
        let mut producer = Producer::builder(&name)
            .capacity(64)
            .max_message_size(16)
            .create()
            .unwrap();
        let mut workers: Vec<_> = (0..WORKERS)
            .map(|_| spawn("queue-worker", &name, ""))
            .collect();
        let mut killed: HashSet<u32> = HashSet::new();
        // Kill moments: after which job pushed each kill comes.
        let mut kill_at: Vec<u64> = (0..KILLS).map(|_| rng.below(JOBS)).collect();
        kill_at.sort_unstable();
        for n in 0..JOBS {
            producer
                .push_timeout(&job(n, rng.below(300)), PATIENCE)
                .unwrap();
            while kill_at.first() == Some(&n) {
                kill_at.remove(0);
                // A random moment of a random worker's work.
                std::thread::sleep(Duration::from_micros(rng.below(500)));
                let i = rng.below(WORKERS as u64) as usize;
                let mut victim =
                    std::mem::replace(&mut workers[i], spawn("queue-worker", &name, ""));
                killed.insert(victim.id());
                victim.kill().unwrap();
                victim.wait().unwrap();
            }
        }
        // Every job acked, but for those a killed worker may have acked
        // without recording it: those must stay so for a while (a job
        // still to be redelivered would not).
        let deadline = Instant::now() + PATIENCE;
        let mut quiet_since: Option<Instant> = None;
        let t = loop {
            let t = tally(&books);
            assert!(t.twice.is_empty(), "jobs acknowledged twice: {:?}", t.twice);
            let explained = t.unacked.iter().all(|(_, pid)| killed.contains(pid));
            if t.unacked.is_empty() {
                break t;
            }
            if explained {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    break t;
                }
            } else {
                quiet_since = None;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: jobs never acknowledged: {:?} (killed {killed:?})",
                t.unacked
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(t.once + t.unacked.len() as u64, JOBS);
        for _ in 0..WORKERS {
            producer.push(&job(STOP, 0)).unwrap();
        }
        for w in &mut workers {
            assert!(wait_bounded(w, PATIENCE).success(), "a worker failed");
        }
        let mut watcher = Consumer::builder(&name).open().unwrap();
        assert!(matches!(watcher.try_next(), Err(TakeError::Empty)));
        killed_total += killed.len();
        redelivered_total += watcher.redelivered();
        window_total += t.unacked.len();
    }
    eprintln!(
        "{} jobs, {killed_total} workers killed, {redelivered_total} redeliveries, \
         {window_total} acks recorded by nobody (killed between ack and books)",
        JOBS * ROUNDS
    );
    // Workers spend nearly all their time holding a job: most kills
    // take one with them, which is then delivered again.
    assert!(
        redelivered_total > 0,
        "{killed_total} kills and no redelivery"
    );
}

#[test]
fn a_producer_killed_while_pushing_does_not_break_the_queue() {
    let name = unique_name("q-flood");
    let _guard = NameGuard(name.clone());
    let mut consumer = Consumer::builder(&name)
        .capacity(16)
        .max_message_size(4096)
        .create()
        .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..5 {
        // Large jobs, so that a kill lands mid-write often.
        let mut flood = spawn("queue-flood", &name, "4096");
        // Drain while it pushes, then kill it at a random moment.
        let until = Instant::now() + Duration::from_millis(20 + rng.below(80));
        while Instant::now() < until {
            if let Ok(job) = consumer.next_timeout(Duration::from_millis(5)) {
                job.ack().unwrap();
            }
        }
        flood.kill().unwrap();
        flood.wait().unwrap();
    }
    // Drain what the floods left (a half-written job is stepped over
    // once its producer is seen dead).
    while let Ok(job) = consumer.next_timeout(Duration::from_millis(200)) {
        assert_eq!(job.payload(), &[0xee; 4096][..]);
        job.ack().unwrap();
    }
    let mut producer = Producer::builder(&name).open().unwrap();
    for n in 0..100 {
        producer.push_timeout(&job(n, 0), PATIENCE).unwrap();
        let got = consumer.next_timeout(PATIENCE).unwrap();
        assert_eq!(job_fields(got.payload()).unwrap(), [n, 0]);
        got.ack().unwrap();
    }
    eprintln!("jobs lost to killed producers: {}", consumer.skipped());
}
