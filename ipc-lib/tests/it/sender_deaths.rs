//! Multi-producer channels whose senders are SIGKILLed at random moments:
//! before, during or after reserving a frame, while copying it in, while
//! publishing it, while waiting for room. Whatever the moment, the receiver
//! and the other senders carry on: every survivor's message arrives once,
//! intact and in its sender's order, and the stream ends with
//! `Disconnected` once the survivors leave. A victim killed mid-send loses
//! that one message, which the receiver counts and traces as a drop.

use std::io::Read;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ipc_lib::channel::{Mode, Receiver, RecvError};

use crate::child::nums;
use crate::support::{
    capture_ops, open_sender, spawn, unique_name, wait_bounded, NameGuard, PATIENCE,
};

/// Kills in an ordinary run (`IPCLIB_IT_DEATH_KILLS` asks for more, or
/// fewer, when hunting), spread over channels of this many kills each.
const KILLS: u64 = 2000;
const KILLS_PER_CHANNEL: u64 = 50;
/// Enough broken channels to say the rate; stop there.
const MAX_FAILURES: usize = 200;
/// Not a multiple of any message size, so frames wrap around the end of the
/// ring at ever different places; about three of the largest fit.
const CAPACITY: usize = 200 * 1024;
const MAX: usize = 64 * 1024;
/// A victim is killed this long at most after it starts sending, the moment
/// drawn uniformly.
const KILL_WINDOW_US: u64 = 3000;
/// Bytes of a message before its fill: tag, index, length.
const HEAD: usize = 13;
/// Survivors' tags; victims take the ones after, in turn.
const SURVIVOR_TAGS: u8 = 2;
/// A survivor's last message: `[tag] BYE count`, shorter than any other.
const BYE: &[u8] = b"BYE";

/// The length of sender `tag`'s message `i`: small, a few KiB or about
/// 60 KiB, in an order that differs per sender.
fn message_len(tag: u8, i: u64) -> usize {
    let h = ((i << 8 | u64::from(tag)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize;
    match h % 3 {
        0 => HEAD + h / 3 % 100,
        1 => 2048 + h / 3 % 4096,
        _ => 60 * 1024 + h / 3 % 4096,
    }
}

fn fill(tag: u8, i: u64) -> u8 {
    (i as u8).wrapping_mul(31) ^ tag.wrapping_mul(101)
}

/// Sender `tag`'s message `i`: who and which, its length, then a fill that
/// differs from its neighbours', so a frame mixing two messages shows.
fn message(tag: u8, i: u64) -> Vec<u8> {
    let len = message_len(tag, i);
    let mut m = vec![fill(tag, i); len];
    m[0] = tag;
    m[1..9].copy_from_slice(&i.to_le_bytes());
    m[9..13].copy_from_slice(&(len as u32).to_le_bytes());
    m
}

/// The sender and index of a received message, if it is exactly one of
/// `message`'s.
fn parse(m: &[u8]) -> Result<(u8, u64), String> {
    if m.len() < HEAD {
        return Err(format!("a {}-byte message", m.len()));
    }
    let tag = m[0];
    let i = u64::from_le_bytes(m[1..9].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(m[9..13].try_into().unwrap_or_default()) as usize;
    if len != m.len() || len != message_len(tag, i) {
        return Err(format!("sender {tag} message {i}: {} bytes", m.len()));
    }
    if m[HEAD..].iter().any(|&b| b != fill(tag, i)) {
        return Err(format!("sender {tag} message {i}: content differs"));
    }
    Ok((tag, i))
}

/// The child's side (see `child::play`).
pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    match role {
        // Says hello (its TAG alone), then sends its messages, sleeping
        // PACE µs after each, until the parent closes our stdin; then says
        // how many it sent.
        "death-survivor" => {
            let [tag, pace] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let tag = tag as u8;
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            std::thread::spawn(move || {
                let _ = std::io::stdin().read_to_end(&mut Vec::new());
                s.store(true, Ordering::Release);
            });
            let mut tx = open_sender(name);
            tx.send(&[tag]).map_err(|e| format!("hello: {e}"))?;
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                tx.send(&message(tag, i))
                    .map_err(|e| format!("send {i}: {e}"))?;
                i += 1;
                if pace > 0 {
                    std::thread::sleep(Duration::from_micros(pace));
                }
            }
            let mut bye = vec![tag];
            bye.extend_from_slice(BYE);
            bye.extend_from_slice(&i.to_le_bytes());
            tx.send(&bye).map_err(|e| format!("bye: {e}"))?;
            Ok(())
        }
        // Says hello, waits for the parent to close our stdin, then sends
        // its messages until killed.
        "death-victim" => {
            let [tag] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let tag = tag as u8;
            let mut tx = open_sender(name);
            tx.send(&[tag]).map_err(|e| format!("hello: {e}"))?;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            for i in 0.. {
                tx.send(&message(tag, i))
                    .map_err(|e| format!("send {i}: {e}"))?;
            }
            Ok(())
        }
        other => Err(format!("unknown role {other:?}")),
    }
}

/// xorshift64: the kill times, reproducible in distribution from the
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

/// What the receiving thread saw of one channel.
#[derive(Debug, Default)]
struct Seen {
    messages: u64,
    /// Each survivor's count, from its goodbye.
    byes: Vec<(u8, u64)>,
    /// What `Receiver::skipped` said at the end.
    skipped: u64,
    /// The senders named by the drops traced.
    dropped_by: Vec<u64>,
}

/// Receives until `Disconnected`, checking every message: each sender's
/// come in order from 0 (a hello starts a sender's count again: victims'
/// tags are reused), intact. Forwards each hello's tag to `hellos`.
fn receive(rx: Receiver, hellos: mpsc::Sender<u8>) -> Result<Seen, String> {
    let (seen, ops) = capture_ops(|| receive_checking(rx, hellos));
    let mut seen = seen?;
    for op in ops.iter().filter(|op| op.kind == "drop") {
        if op.result != -i64::from(libc::EOWNERDEAD) || op.size != 1 {
            return Err(format!("a drop traced as {op:?}"));
        }
        seen.dropped_by.push(op.obj);
    }
    Ok(seen)
}

fn receive_checking(mut rx: Receiver, hellos: mpsc::Sender<u8>) -> Result<Seen, String> {
    let mut next = [0u64; 256];
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    loop {
        match rx.recv_into(&mut buf, Some(PATIENCE)) {
            Ok(_) if buf.len() == 1 => {
                next[usize::from(buf[0])] = 0;
                let _ = hellos.send(buf[0]);
            }
            Ok(_) if buf.len() == 1 + BYE.len() + 8 && &buf[1..4] == BYE => {
                let tag = buf[0];
                let count = u64::from_le_bytes(buf[4..].try_into().unwrap_or_default());
                if count != next[usize::from(tag)] {
                    return Err(format!(
                        "survivor {tag} sent {count} messages, {} arrived",
                        next[usize::from(tag)]
                    ));
                }
                seen.byes.push((tag, count));
            }
            Ok(_) => {
                let (tag, i) = parse(&buf)?;
                let want = &mut next[usize::from(tag)];
                if i != *want {
                    return Err(format!("sender {tag}: message {i} where {want} was due"));
                }
                *want += 1;
                seen.messages += 1;
            }
            Err(RecvError::Disconnected) => {
                seen.skipped = rx.skipped();
                return Ok(seen);
            }
            Err(e) => return Err(format!("after {} messages: {e}", seen.messages)),
        }
    }
}

/// How one channel's run went.
struct ChannelRun {
    kills: u64,
    skipped: u64,
    failure: Option<String>,
}

/// One channel: `survivors` senders stream throughout (pausing `pace_us`
/// after each message) while `kills` victims, `together` at a time, attach,
/// start sending and are killed.
fn channel(survivors: u8, pace_us: u64, together: u64, kills: u64, rng: &mut Rng) -> ChannelRun {
    let name = unique_name("deaths");
    let _g = NameGuard(name.clone());
    let rx = match Receiver::builder(&name)
        .capacity(CAPACITY)
        .max_message_size(MAX)
        .mode(Mode::Mpsc)
        .create()
    {
        Ok(rx) => rx,
        Err(e) => {
            return ChannelRun {
                kills: 0,
                skipped: 0,
                failure: Some(e.to_string()),
            }
        }
    };
    let (hello_tx, hellos) = mpsc::channel();
    let mut children: Vec<Child> = (0..survivors)
        .map(|tag| spawn("death-survivor", &name, &format!("{tag},{pace_us}")))
        .collect();
    let mut victims = Vec::new();
    let mut skipped = 0;
    let mut failure = None;
    std::thread::scope(|s| {
        // Survivors never leave before the end, so the channel cannot look
        // deserted while the others attach.
        let receiving = s.spawn(|| receive(rx, hello_tx));
        victims = kill_victims(&name, &hellos, survivors, together, kills, rng);
        for c in &mut children {
            drop(c.stdin.take());
        }
        let seen = receiving
            .join()
            .unwrap_or_else(|_| Err("the receiving thread panicked".into()));
        failure = match seen {
            Err(e) => Some(e),
            Ok(seen) => {
                skipped = seen.skipped;
                check_losses(&seen, survivors, &victims).err()
            }
        };
    });
    for (tag, c) in children.iter_mut().enumerate() {
        if failure.is_some() {
            let _ = c.kill();
            let _ = c.wait();
        } else if !wait_bounded(c, PATIENCE).success() {
            failure = Some(format!("survivor {tag} failed"));
        }
    }
    ChannelRun {
        kills: victims.len() as u64,
        skipped,
        failure,
    }
}

/// Every survivor said goodbye, and the only messages lost were victims'
/// unfinished ones: at most one each, each counted and traced.
fn check_losses(seen: &Seen, survivors: u8, victims: &[u32]) -> Result<(), String> {
    if seen.byes.len() != usize::from(survivors) {
        return Err(format!("goodbyes from {:?} only", seen.byes));
    }
    if seen.dropped_by.len() as u64 != seen.skipped {
        return Err(format!(
            "{} skipped, but drops traced for {:?}",
            seen.skipped, seen.dropped_by
        ));
    }
    let mut by = seen.dropped_by.clone();
    by.sort_unstable();
    by.dedup();
    if by.len() != seen.dropped_by.len() {
        return Err(format!("two drops for one sender: {:?}", seen.dropped_by));
    }
    match by
        .iter()
        .find(|&&pid| !victims.iter().any(|&v| u64::from(v) == pid))
    {
        Some(pid) => Err(format!("a drop for pid {pid}, which was not killed")),
        None => Ok(()),
    }
}

/// Waits for the survivors' hellos, then starts victims, `together` at a
/// time, lets them send and kills them at one moment, until `kills` are
/// dead. Returns the pids killed: fewer than `kills` when the receiving
/// thread stopped (it says why).
fn kill_victims(
    name: &str,
    hellos: &mpsc::Receiver<u8>,
    survivors: u8,
    together: u64,
    kills: u64,
    rng: &mut Rng,
) -> Vec<u32> {
    let mut killed = Vec::new();
    for _ in 0..survivors {
        if hellos.recv_timeout(PATIENCE).is_err() {
            return killed;
        }
    }
    let tags = u64::from(u8::MAX - SURVIVOR_TAGS);
    let mut k = 0;
    while k < kills {
        let batch: Vec<(u8, Child)> = (k..kills.min(k + together))
            .map(|k| {
                let tag = SURVIVOR_TAGS + (k % tags) as u8;
                (tag, spawn("death-victim", name, &tag.to_string()))
            })
            .collect();
        k += batch.len() as u64;
        let mut waiting: Vec<u8> = batch.iter().map(|(tag, _)| *tag).collect();
        while !waiting.is_empty() {
            match hellos.recv_timeout(PATIENCE) {
                Ok(tag) if waiting.contains(&tag) => waiting.retain(|&t| t != tag),
                // Nothing comes once the receiver has stopped.
                _ => break,
            }
        }
        let attached = waiting.is_empty();
        let mut batch = batch;
        if attached {
            for (_, victim) in &mut batch {
                drop(victim.stdin.take());
            }
            std::thread::sleep(Duration::from_micros(rng.below(KILL_WINDOW_US)));
        }
        for (_, victim) in &mut batch {
            let _ = victim.kill();
        }
        for (_, mut victim) in batch {
            let _ = victim.wait();
            if attached {
                killed.push(victim.id());
            }
        }
        if !attached {
            break;
        }
    }
    killed
}

#[test]
fn senders_killed_at_random_moments_leave_the_others_unharmed() {
    let kills: u64 = std::env::var("IPCLIB_IT_DEATH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut done = 0;
    let mut skipped = 0;
    // A broken channel ends early and the next one takes up its kills, so
    // the failures counted are a rate over all of them.
    let mut c = 0u64;
    while done < kills && failures.len() < MAX_FAILURES {
        // One survivor or two; flat out (the ring stays full, so victims
        // die mostly waiting for room) or paced (they die mostly writing);
        // victims one at a time, or two killed at once (two unfinished
        // frames in a row, or two dead senders racing for one).
        let survivors = 1 + (c % 2) as u8;
        let pace_us = if c % 4 < 2 { 0 } else { 300 };
        let together = 1 + c / 4 % 2;
        let n = KILLS_PER_CHANNEL.min(kills - done);
        let run = channel(survivors, pace_us, together, n, &mut rng);
        done += run.kills;
        skipped += run.skipped;
        if let Some(e) = run.failure {
            failures.push(format!(
                "channel {c} ({survivors} survivors, pace {pace_us} µs, victims {together} at \
                 a time), after {} kills: {e}",
                run.kills
            ));
        }
        c += 1;
    }
    eprintln!(
        "sender deaths: {done} kills in {:.1?} (seed {seed}): {} channels broke, {skipped} \
         unfinished frames skipped",
        started.elapsed(),
        failures.len(),
    );
    assert!(
        failures.is_empty(),
        "{} channels broke in {done} kills (seed {seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Else the kills all missed the moments this is about.
    assert!(skipped > 0, "no kill left a frame unfinished");
}
