//! ipcscope's eBPF programs: the kernel end of the event flow.
//!
//! Each program sits on a tracepoint, decides in the kernel whether the
//! current process is one ipcscope follows (one hash lookup for the ones it
//! does not), and writes an `ipc_events::raw::RawEvent` into the `EVENTS`
//! ring buffer, which the collector (`collector::ebpf`) drains and decodes.
//!
//! Which processes are followed lives in `TRACKED`: user space registers a
//! *launcher* (the recorder, just before it spawns the command) and the
//! kernel extends the set to every process a tracked process forks, so a
//! whole process tree is followed from its first instruction with no race.
//!
//! Programs are thin wrappers over `try_*` functions; nothing here panics,
//! and an event the ring has no room for is counted in `DROPS`, never lost
//! without a trace.
// no_std and no_main only for the BPF target: on the host the crate is an
// ordinary, empty binary, so `cargo check`/`clippy --workspace` (which
// build every member for the host) lint it instead of failing on it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::ptr;

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated,
};
use aya_ebpf::macros::{map, tracepoint};
use aya_ebpf::maps::{HashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::TracePointContext;
use aya_ebpf::{EbpfContext, Global};
use ipc_events::raw::{chan, kind, RawEvent, MAX_NAME, RECORD_ALIGN};

/// `TRACKED` value bits. The collector (`collector::ebpf`) writes the same
/// values; keep the two in step.
mod flag {
    /// The process's own events are reported.
    pub const TRACED: u8 = 1;
    /// The process's new children are traced; its own events are not.
    pub const LAUNCHER: u8 = 2;
}

/// `CLONE_THREAD` from `<linux/sched.h>`: a new thread, not a new process.
const CLONE_THREAD: u64 = 0x0001_0000;

/// Every process is traced, whatever `TRACKED` says. Set by the loader
/// (`EbpfLoader::override_global`); read-only once loaded.
#[no_mangle]
static TRACE_ALL: Global<u8> = Global::new(0);

/// tgid -> `flag` bits. Big enough for a large build's process tree; an
/// insert into a full map fails and the child goes untraced, which is
/// reported as a drop.
#[map]
static TRACKED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Every event, in the order the kernel committed them. 16 MiB holds about
/// 170k events: several seconds of a busy workload if the reader stalls.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// DROPS[0]: events lost in the kernel: no room in `EVENTS`, a child that
/// could not be added to a full `TRACKED`, or a failed read of a tracepoint
/// field. Per CPU so that counting losses under load does not contend on
/// one cache line.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// An exec record: the header and room for the program's path. The ring
/// only takes reservations of a size known to the verifier, so the area is
/// fixed and `name_len` says how much of it is the path; the decoder reads
/// `name_len` bytes and ignores the rest.
#[repr(C)]
struct ExecRecord {
    header: RawEvent,
    /// MAX_NAME bytes of path plus the NUL the kernel's string copy writes.
    path: [u8; MAX_NAME + 1],
}

// The ring's reservations are 8-byte aligned and sized in multiples of 8.
const _: () = assert!(core::mem::size_of::<ExecRecord>().is_multiple_of(RECORD_ALIGN));

// Where this kernel puts the tracepoint fields the programs read. Tracepoint
// layouts are not a promised ABI, so the loader reads the real offsets from
// tracefs's format files and overrides these (collector::ebpf::format); the
// defaults are those of Linux 6.x.
/// task:task_newtask `pid_t pid` (the child's).
#[no_mangle]
static OFFSET_NEWTASK_PID: Global<u32> = Global::new(8);
/// task:task_newtask `char comm[16]` (the child's, still the parent's name).
#[no_mangle]
static OFFSET_NEWTASK_COMM: Global<u32> = Global::new(12);
/// task:task_newtask `u64 clone_flags`.
#[no_mangle]
static OFFSET_NEWTASK_CLONE_FLAGS: Global<u32> = Global::new(32);
/// sched:sched_process_exec `__data_loc char[] filename`: a u32 holding
/// the string's offset in the record (low 16 bits) and length (high 16).
#[no_mangle]
static OFFSET_EXEC_FILENAME: Global<u32> = Global::new(8);
/// sched:sched_process_exit `bool group_dead`.
#[no_mangle]
static OFFSET_EXIT_GROUP_DEAD: Global<u32> = Global::new(32);

// The programs return 0 whatever happens: for a tracepoint, anything else
// asks the kernel to also hand the event to perf, which nobody reads. A
// failure after a process was found to be traced is an event lost, so it
// is counted with the ring buffer's losses.

#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    if try_task_newtask(&ctx).is_err() {
        count_drop();
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    if try_sched_process_exec(&ctx).is_err() {
        count_drop();
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    if try_sched_process_exit(&ctx).is_err() {
        count_drop();
    }
    0
}

/// A new task, seen in its parent before the child first runs: adding the
/// child to `TRACKED` here means none of its own activity can be missed.
fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i64> {
    let (parent_tgid, _) = current_ids();
    let trace_all = TRACE_ALL.load() != 0;
    if !trace_all && flags_of(parent_tgid) & (flag::TRACED | flag::LAUNCHER) == 0 {
        return Ok(());
    }
    // SAFETY: the offsets are those of task_newtask's format, and read_at
    // goes through bpf_probe_read_kernel, which faults safely.
    let clone_flags: u64 =
        unsafe { ctx.read_at(offset(&OFFSET_NEWTASK_CLONE_FLAGS)) }.map_err(i64::from)?;
    if clone_flags & CLONE_THREAD != 0 {
        // Threads share their process's tgid, which is already tracked.
        return Ok(());
    }
    // SAFETY: as above.
    let child: i32 = unsafe { ctx.read_at(offset(&OFFSET_NEWTASK_PID)) }.map_err(i64::from)?;
    // SAFETY: as above.
    let comm: [u8; 16] = unsafe { ctx.read_at(offset(&OFFSET_NEWTASK_COMM)) }.map_err(i64::from)?;
    let child = child as u32;

    if !trace_all && TRACKED.insert(child, flag::TRACED, 0).is_err() {
        // A full map: the child goes untraced, and the user must hear of it.
        count_drop();
        return Ok(());
    }
    emit(&RawEvent {
        ts_ns: now(),
        pid: child,
        tid: child,
        kind: kind::PROCESS_START,
        chan_kind: chan::NONE,
        aux: u64::from(parent_tgid),
        comm,
        ..RawEvent::default()
    });
    Ok(())
}

/// A successful exec; the tracepoint fires after the new program is in
/// place, so the current comm is already the new one.
fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    // SAFETY: the offset is that of sched_process_exec's __data_loc word;
    // read_at goes through bpf_probe_read_kernel, which faults safely.
    let loc: u32 = unsafe { ctx.read_at(offset(&OFFSET_EXEC_FILENAME)) }.map_err(i64::from)?;
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_drop();
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // The __data_loc offset is relative to the start of the record.
    let filename = ctx
        .as_ptr()
        .cast::<u8>()
        .wrapping_add((loc & 0xffff) as usize);
    // The raw helper rather than aya's slice wrapper: it writes through a
    // pointer, so no reference to the uninitialised reservation is made.
    // SAFETY: `record` points at a live reservation of ExecRecord's size, and
    // the copy is bounded by the size of its `path` area. The helper
    // NUL-terminates what it copies and faults safely on a bad source.
    let copied = unsafe {
        generated::bpf_probe_read_kernel_str(
            ptr::addr_of_mut!((*record).path).cast(),
            (MAX_NAME + 1) as u32,
            filename.cast(),
        )
    };
    // `copied` counts the NUL; a failed copy leaves the path empty rather
    // than losing the exec.
    let path_len = if copied > 1 {
        (copied as usize - 1).min(MAX_NAME)
    } else {
        0
    };
    let header = RawEvent {
        ts_ns: now(),
        pid: tgid,
        tid,
        kind: kind::PROCESS_EXEC,
        chan_kind: chan::NONE,
        name_len: path_len as u16,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..RawEvent::default()
    };
    // SAFETY: as above; `header` lies within the reservation, and
    // ptr::write does not read the uninitialised memory it replaces.
    unsafe { ptr::write(ptr::addr_of_mut!((*record).header), header) };
    entry.submit(0);
    Ok(())
}

/// A task ends; only the last thread of a process (`group_dead`) ends the
/// process.
fn try_sched_process_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    let flags = flags_of(tgid);
    let trace_all = TRACE_ALL.load() != 0;
    if !trace_all && flags == 0 {
        return Ok(());
    }
    // SAFETY: the offset is that of sched_process_exit's bool group_dead;
    // read_at goes through bpf_probe_read_kernel, which faults safely.
    let group_dead: u8 =
        unsafe { ctx.read_at(offset(&OFFSET_EXIT_GROUP_DEAD)) }.map_err(i64::from)?;
    if group_dead == 0 {
        return Ok(());
    }
    if flags != 0 {
        // Pids are reused: a stale entry would trace an unrelated process.
        let _ = TRACKED.remove(tgid);
    }
    if !trace_all && flags & flag::TRACED == 0 {
        return Ok(());
    }
    emit(&RawEvent {
        ts_ns: now(),
        pid: tgid,
        tid,
        kind: kind::PROCESS_EXIT,
        chan_kind: chan::NONE,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..RawEvent::default()
    });
    Ok(())
}

/// The current task's (tgid, pid): the process and thread ids user space
/// calls pid and tid.
fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

fn offset(global: &Global<u32>) -> usize {
    global.load() as usize
}

fn flags_of(tgid: u32) -> u8 {
    // SAFETY: the value is a plain u8 copied out at once; a concurrent
    // update can at worst make this one decision on the old value.
    unsafe { TRACKED.get(tgid) }.copied().unwrap_or(0)
}

/// Whether this process's own events are reported.
fn is_traced(tgid: u32) -> bool {
    TRACE_ALL.load() != 0 || flags_of(tgid) & flag::TRACED != 0
}

fn now() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Writes a header-only record, counting it as dropped when the ring is
/// full.
fn emit(event: &RawEvent) {
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(0);
        }
        None => count_drop(),
    }
}

fn count_drop() {
    if let Some(slot) = DROPS.get_ptr_mut(0) {
        // A plain increment is enough: the slot is this CPU's, tracepoint
        // programs run with preemption off, and the kernel's per-CPU
        // bpf_prog_active guard keeps a second program from interleaving.
        // (The BPF target's core has no atomic read-modify-write either.)
        // SAFETY: `slot` points at this CPU's u64 in the map, valid for the
        // program's whole run, and nothing else writes it meanwhile (above).
        unsafe { *slot += 1 };
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path may reach this: the verifier rejects the endless loop,
    // so a program that could panic fails to load instead of misbehaving.
    loop {}
}

// GPL-compatible, as bpf_probe_read_kernel and the ring buffer helpers
// require; "Dual MIT/GPL" is what aya's template uses.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
