//! A work queue: producers push jobs, each job is delivered to exactly one
//! of many consumer processes, and stays the queue's until that consumer
//! acknowledges it; a consumer that dies first has its jobs delivered
//! again, to another.
//!
//! A queue is a named shared-memory object (`/dev/shm/NAME`, 0600) of
//! fixed slots ([`layout`]); either end may create it, the others open it
//! by name, waiting for it as channels do.
//!
//! - [`Producer::push`] adds a job and returns its id. A slot is held from
//!   the push until the ack, so a queue of `capacity` slots holds that many
//!   jobs waiting or in work; a full queue blocks the push
//!   ([`Producer::try_push`], [`Producer::push_timeout`] do not). Up to
//!   [`layout::MAX_PRODUCERS`] processes push at once.
//! - [`Consumer::next`] hands out the oldest job waiting as a [`Job`],
//!   whose [`ack`](Job::ack) removes it from the queue. Up to
//!   [`layout::MAX_CONSUMERS`] processes consume at once; a consumer may
//!   hold several jobs.
//! - Redelivery: a job whose consumer died (any instruction, SIGKILL
//!   included) before acknowledging it goes to the next consumer that
//!   looks (each checks, once per 20 ms liveness slice, whether the
//!   consumers named by taken slots live: the pidfd check a channel uses
//!   for its peer). So does a [`Job`] dropped without an ack: a guard let
//!   go unacknowledged is work not done, as if its process had died. A
//!   redelivered job says so ([`Job::deliveries`] > 1). A job is
//!   acknowledged at most once: an ack of a job that was redelivered
//!   meanwhile fails ([`AckError::Lost`]). So work may be *started* twice
//!   (the first consumer died in it), never *completed* twice.
//! - A producer killed mid-push loses only that job: the consumer that
//!   finds its slot half written and its producer dead frees it (counted,
//!   [`Consumer::skipped`], and traced as a `drop` with source
//!   `sender_died`, as a channel does).
//! - Every slot carries the channel frame's checksum: a damaged job is a
//!   [`TakeError::Corrupt`] for that job only, which is removed.
//! - Traced on an `ipclib_queue`: each push a `msg_send`, each acknowledged
//!   delivery a `msg_recv` with the same id (at the ack; `aux` the
//!   delivery it was, `duration_ns` how long the job was held), and each
//!   delivery that was not acknowledged a `drop` with source `redelivered`
//!   (`msg_id` the job, `obj` the pid that lost it). So ipcscope pairs
//!   every push with the receive that acknowledged it, and counts
//!   redeliveries.
//! - With the `tokio` feature, [`Consumer::into_async`] gives a consumer
//!   whose `next` is a future that never blocks a runtime worker thread.
//!
//! ```
//! use std::time::Duration;
//! use ipc_lib::queue::{Consumer, Producer};
//!
//! let name = format!("doc-queue-{}", std::process::id());
//! let mut producer = Producer::builder(&name).capacity(64).max_message_size(256).create()?;
//! // In worker processes (here the same one):
//! let mut worker = Consumer::builder(&name).open()?;
//! producer.push(b"resize cat.jpg")?;
//! let job = worker.next_timeout(Duration::from_secs(5))?;
//! assert_eq!(job.payload(), b"resize cat.jpg");
//! job.ack()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "tokio")]
mod aio;
mod consumer;
pub mod layout;
mod producer;

#[cfg(feature = "tokio")]
pub use aio::AsyncConsumer;
pub use consumer::{Consumer, ConsumerBuilder, Job};
pub use layout::Layout;
pub use producer::{Producer, ProducerBuilder};

pub use crate::channel::{CodecError, Corruption, OpenError};

/// Why a job was not pushed. Nothing of it is in the queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The job is larger than the queue's maximum.
    #[error("job of {len} bytes exceeds the queue's maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// Every slot holds a job waiting or in work (`try_push`).
    #[error("queue is full")]
    Full,
    /// `push_timeout` waited its whole timeout for a free slot.
    #[error("timed out waiting for a free slot in the queue")]
    Timeout,
    /// The value could not be serialized.
    #[error("could not encode the job")]
    Encode(#[source] CodecError),
    /// The push position in shared memory is impossible: someone wrote
    /// over the header.
    #[error("queue state is corrupt: {0}")]
    Corrupt(#[source] Corruption),
}

/// Why no job was handed out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TakeError {
    /// `try_next`: no job is waiting.
    #[error("queue is empty")]
    Empty,
    /// `next_timeout`: no job came within the timeout.
    #[error("timed out waiting for a job")]
    Timeout,
    /// The job at position `pos` was damaged in shared memory. It is
    /// removed from the queue; the next call hands out the next job.
    #[error("corrupt job at position {pos}: {reason}")]
    Corrupt {
        pos: u64,
        #[source]
        reason: Corruption,
    },
    /// A typed receive got a job that does not decode as `type_name`. It
    /// is acknowledged (it never will decode, and redelivering it would
    /// hand it round for ever).
    #[error("job {msg_id} does not decode as {type_name}")]
    Decode {
        msg_id: u64,
        type_name: &'static str,
        #[source]
        source: CodecError,
    },
    /// A system call failed: `op` says which (an async wait that could
    /// not start the process's watcher thread).
    #[error("{op}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Why an ack did not take.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The job is no longer this consumer's: it was handed to another
    /// (this process was taken for dead, or the queue was written over).
    /// Its work will be done again there.
    #[error("job {msg_id} was taken back from this consumer before the ack")]
    Lost { msg_id: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "ipclib-unit-q-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn queue(tag: &str, capacity: usize) -> (Producer, Consumer) {
        let p = Producer::builder(unique(tag))
            .capacity(capacity)
            .max_message_size(64)
            .create()
            .unwrap();
        let c = Consumer::builder(p.name()).open().unwrap();
        (p, c)
    }

    #[test]
    fn jobs_come_out_in_push_order_once_each() {
        let (mut p, mut c) = queue("order", 8);
        let mut other = Consumer::builder(p.name()).open().unwrap();
        for round in 0..5u8 {
            let ids: Vec<u64> = (0..8u8).map(|i| p.push(&[round, i]).unwrap()).collect();
            assert!(matches!(p.try_push(b"x"), Err(PushError::Full)));
            for (i, id) in ids.iter().enumerate() {
                // Two consumers share the jobs between them.
                let end = if i % 2 == 0 { &mut c } else { &mut other };
                let job = end.try_next().unwrap();
                assert_eq!((job.id(), job.payload()), (*id, &[round, i as u8][..]));
                assert_eq!(job.deliveries(), 1);
                job.ack().unwrap();
            }
            assert!(matches!(c.try_next(), Err(TakeError::Empty)));
        }
    }

    #[test]
    fn a_job_dropped_without_an_ack_is_delivered_again() {
        let (mut p, mut c) = queue("drop", 4);
        let id = p.push(b"work").unwrap();
        drop(c.try_next().unwrap());
        let again = c.next_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((again.id(), again.deliveries()), (id, 2));
        again.ack().unwrap();
        assert_eq!(c.redelivered(), 1);
        assert!(matches!(c.try_next(), Err(TakeError::Empty)));
    }

    #[test]
    fn an_unacknowledged_job_holds_its_slot() {
        let (mut p, mut c) = queue("hold", 2);
        p.push(b"a").unwrap();
        p.push(b"b").unwrap();
        let a = c.try_next().unwrap();
        let b = c.try_next().unwrap();
        assert!(matches!(
            p.push_timeout(b"c", Duration::from_millis(30)),
            Err(PushError::Timeout)
        ));
        b.ack().unwrap();
        assert!(matches!(p.try_push(b"c"), Err(PushError::Full)));
        a.ack().unwrap();
        p.try_push(b"c").unwrap();
    }

    #[test]
    fn typed_jobs_round_trip_and_a_job_of_another_type_is_removed() {
        let (mut p, mut c) = queue("typed", 4);
        p.push_value(&(7u32, "seven".to_string())).unwrap();
        let (job, v) = c.try_next_value::<(u32, String)>().unwrap();
        assert_eq!(v, (7, "seven".into()));
        job.ack().unwrap();
        p.push(&[0xff]).unwrap();
        assert!(matches!(
            c.try_next_value::<String>(),
            Err(TakeError::Decode { .. })
        ));
        assert!(matches!(c.try_next(), Err(TakeError::Empty)));
    }

    #[test]
    fn oversized_jobs_are_refused_whole() {
        let (mut p, _c) = queue("big", 2);
        assert!(matches!(
            p.push(&[0; 65]),
            Err(PushError::TooLarge { len: 65, max: 64 })
        ));
    }

    #[test]
    fn a_sleeping_consumer_is_woken_by_a_push() {
        let (mut p, mut c) = queue("wake", 4);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            p.push(b"late").unwrap();
            p
        });
        let job = c.next_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(job.payload(), b"late");
        job.ack().unwrap();
        drop(t.join().unwrap());
    }

    /// A pid no process has: a child that exited and was reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// The queue's segment as another process maps it.
    fn segment(name: &str) -> layout::Segment {
        let req = Default::default();
        let opening =
            layout::Segment::opening(name, crate::shm::OpenHow::Open, &req, Duration::ZERO);
        crate::patience::block(opening.unwrap()).unwrap().0
    }

    /// A queue whose position 0 a producer in another process took and
    /// was killed before it finished the job.
    fn queue_with_a_half_written_job(name: &str) -> (Producer, Consumer) {
        use crate::channel::layout::slot;
        use layout::State;
        let (p, c) = queue(name, 4);
        let seg = segment(p.name());
        let h = seg.header();
        h.producers[5]
            .state_pid
            .store(slot::pack(slot::ATTACHED, dead_pid()), Ordering::SeqCst);
        seg.slot(0)[0].store(State::writing(0, 5), Ordering::SeqCst);
        h.head.store(1, Ordering::SeqCst);
        (p, c)
    }

    #[test]
    fn a_job_left_half_written_by_a_dead_producer_is_skipped_and_counted() {
        let (mut p, mut c) = queue_with_a_half_written_job("deadw");
        p.push(b"after").unwrap();
        let job = c.next_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(job.payload(), b"after");
        assert_eq!(c.skipped(), 1);
        job.ack().unwrap();
    }

    #[test]
    fn a_select_steps_over_a_job_a_dead_producer_left_half_written() {
        use crate::select::{Select, SelectError};
        let (mut p, mut c) = queue_with_a_half_written_job("deadw-select");
        let mut select = Select::new();
        let got = select.wait(&mut [(&mut c).into()], Some(Duration::ZERO));
        assert!(matches!(got, Err(SelectError::Timeout)), "{got:?}");
        // A job behind the dead one: the select finds it once the dead
        // producer's is stepped over, as a blocking next would.
        p.push(b"after").unwrap();
        let got = select.wait(&mut [(&mut c).into()], Some(Duration::from_secs(10)));
        assert_eq!(got.unwrap(), 0);
        assert_eq!(c.skipped(), 1);
        let job = c.try_next().unwrap();
        assert_eq!(job.payload(), b"after");
        job.ack().unwrap();
    }

    #[test]
    fn a_job_held_by_a_dead_consumer_goes_to_a_live_one() {
        use crate::channel::layout::slot;
        use layout::State;
        let (mut p, mut c) = queue("deadc", 4);
        let id = p.push(b"work").unwrap();
        let seg = segment(p.name());
        let h = seg.header();
        // A consumer in another process took the job and was killed.
        h.consumers[9]
            .state_pid
            .store(slot::pack(slot::ATTACHED, dead_pid()), Ordering::SeqCst);
        seg.slot(0)[0].store(State::taken(0, 1, 9), Ordering::SeqCst);
        h.next.store(1, Ordering::SeqCst);
        let job = c.next_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((job.id(), job.deliveries()), (id, 2));
        job.ack().unwrap();
        assert_eq!(c.redelivered(), 1);
    }
}
