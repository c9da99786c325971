//! Opening a name whose segment is not the channel asked for: a clear error
//! naming what differs.

use std::ffi::CString;
use std::time::Instant;

use ipc_lib::channel::layout::{
    HEADER_SIZE, LAYOUT_VERSION, MAGIC, OFFSET_CAPACITY, OFFSET_MAGIC, OFFSET_VERSION,
};
use ipc_lib::channel::{Mode, OpenError, Receiver, Sender};

use crate::support::{spawn, unique_name, wait_bounded, Hostile, NameGuard, PATIENCE};

/// Opens a sender with `configure`, waiting while the child has not created
/// the name yet.
fn open_sender_err(
    name: &str,
    configure: impl Fn(ipc_lib::channel::SenderBuilder) -> ipc_lib::channel::SenderBuilder,
) -> Result<Sender, OpenError> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match configure(Sender::builder(name)).open() {
            Err(OpenError::NotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            other => return other,
        }
    }
}

#[test]
fn opening_a_channel_of_another_process_with_another_layout_is_a_clear_error() {
    let name = unique_name("mismatch");
    let _g = NameGuard(name.clone());
    let mut child = spawn("create-and-hold", &name, "8192,256,1");

    let err = open_sender_err(&name, |b| b.capacity(4096)).unwrap_err();
    match &err {
        OpenError::LayoutMismatch {
            field: "capacity",
            expected: 4096,
            found: 8192,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("capacity 8192"), "{err}");

    let err = open_sender_err(&name, |b| b.max_message_size(1000)).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::LayoutMismatch {
                field: "max message size",
                expected: 1000,
                found: 256,
                ..
            }
        ),
        "{err:?}"
    );

    let err = open_sender_err(&name, |b| b.mode(Mode::Mpsc)).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::ModeMismatch {
                expected: Mode::Mpsc,
                found: Mode::Spsc,
                ..
            }
        ),
        "{err:?}"
    );

    // Asking for nothing, or for exactly what is there, adopts the layout.
    let tx = open_sender_err(&name, |b| b.capacity(8192).max_message_size(256)).unwrap();
    assert_eq!(tx.layout().capacity, 8192);
    assert_eq!(tx.layout().max_message_size, 256);
    drop(tx);
    let tx = open_sender_err(&name, |b| b).unwrap();
    assert_eq!(tx.layout().mode, Mode::Spsc);
    drop(tx);

    drop(child.stdin.take());
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn a_foreign_magic_or_version_is_a_clear_error() {
    let name = unique_name("magic");
    let _g = NameGuard(name.clone());
    let _rx = Receiver::builder(&name).capacity(4096).create().unwrap();
    let shm = Hostile::map(&name);

    shm.write_u64(OFFSET_MAGIC, u64::from_le_bytes(*b"NOTACHAN"));
    let err = Sender::builder(&name).open().unwrap_err();
    assert!(matches!(err, OpenError::BadMagic { .. }), "{err:?}");
    assert!(err.to_string().contains("not an ipc-lib channel"), "{err}");

    shm.write_u64(OFFSET_MAGIC, MAGIC);
    shm.write_u32(OFFSET_VERSION, LAYOUT_VERSION + 1);
    let err = Sender::builder(&name).open().unwrap_err();
    assert!(
        matches!(err, OpenError::VersionMismatch { found, expected, .. }
            if found == LAYOUT_VERSION + 1 && expected == LAYOUT_VERSION),
        "{err:?}"
    );

    // A channel made by the build before (version 2 summed frames with
    // another checksum): refused as clearly, not read as corrupt frames.
    shm.write_u32(OFFSET_VERSION, LAYOUT_VERSION - 1);
    let err = Sender::builder(&name).open().unwrap_err();
    assert!(
        matches!(err, OpenError::VersionMismatch { found, expected, .. }
            if found == LAYOUT_VERSION - 1 && expected == LAYOUT_VERSION),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!(
            "has layout version {}, this library speaks version {LAYOUT_VERSION}",
            LAYOUT_VERSION - 1
        )),
        "{err}"
    );

    shm.write_u32(OFFSET_VERSION, LAYOUT_VERSION);
    shm.write_u64(OFFSET_CAPACITY, 1 << 20);
    let err = Sender::builder(&name).open().unwrap_err();
    assert!(matches!(err, OpenError::CorruptHeader { .. }), "{err:?}");
}

#[test]
fn a_segment_that_is_not_a_channel_is_refused() {
    let name = unique_name("foreign");
    let _g = NameGuard(name.clone());
    let path = CString::new(format!("/{name}")).unwrap();
    // SAFETY: a NUL-terminated path.
    let fd = unsafe {
        libc::shm_open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o600,
        )
    };
    assert!(fd >= 0);
    let junk = vec![0xABu8; HEADER_SIZE * 2];
    // SAFETY: valid fd and buffer.
    let n = unsafe { libc::write(fd, junk.as_ptr().cast(), junk.len()) };
    assert_eq!(n as usize, junk.len());
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    let err = Receiver::builder(&name).open().unwrap_err();
    assert!(matches!(err, OpenError::BadMagic { .. }), "{err:?}");
}

#[test]
fn a_segment_of_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot hand a segment to another user; skipped");
        return;
    }
    let name = unique_name("owner");
    let _g = NameGuard(name.clone());
    let _rx = Receiver::builder(&name).create().unwrap();
    std::os::unix::fs::chown(format!("/dev/shm/{name}"), Some(65534), None).unwrap();
    let err = Sender::builder(&name).open().unwrap_err();
    assert!(
        matches!(err, OpenError::NotOwner { owner: 65534, .. }),
        "{err:?}"
    );
}

#[test]
fn impossible_layouts_and_names_are_refused_up_front() {
    let name = unique_name("tiny");
    let err = Receiver::builder(&name).capacity(16).create().unwrap_err();
    assert!(matches!(err, OpenError::InvalidLayout { .. }), "{err:?}");
    let err = Receiver::builder(&name)
        .capacity(4096)
        .max_message_size(4096)
        .create()
        .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let err = Sender::builder("a/b").create().unwrap_err();
    assert!(matches!(err, OpenError::InvalidName { .. }), "{err:?}");
    assert!(matches!(
        Sender::builder(unique_name("absent"))
            .wait(std::time::Duration::ZERO)
            .open(),
        Err(OpenError::NotFound { .. })
    ));
}
