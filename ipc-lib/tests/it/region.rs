//! Shared-memory regions across real processes: data written by one is read
//! by the other, a mismatched open is a precise error, and an access out of
//! range is an error that touches nothing.

use std::io::Read;
use std::time::Duration;

use ipc_lib::region::{AccessError, Region};
use ipc_lib::sem::Semaphore;
use ipc_lib::{OpenError, Receiver};

use crate::support::{
    capture_ops, open_when_ready, pattern, spawn, unique_name, wait_bounded, Hostile, NameGuard,
    PATIENCE,
};

const SIZE: usize = 64 * 1024;

/// Offsets and lengths that start and end on and off word boundaries.
const PIECES: [(usize, usize); 5] = [(0, 8), (13, 1), (101, 3000), (4096, 4096), (SIZE - 7, 7)];

/// Child roles for these tests; `None` when `role` is not one of them.
pub fn role(role: &str, name: &str, arg: &str) -> Option<Result<(), String>> {
    Some(match role {
        // Writes PIECES and a value, then leaves.
        "region-write" => (|| {
            let r = open_when_ready(|| Region::builder(name).size(SIZE).open());
            for (i, &(off, len)) in PIECES.iter().enumerate() {
                r.write(off, &pattern(i as u64, len))
                    .map_err(|e| e.to_string())?;
            }
            r.write_value(8192, 0x1234_5678_9abc_def0u64)
                .map_err(|e| e.to_string())
        })(),
        // Checks what the parent wrote: PIECES shifted by one index.
        "region-verify" => (|| {
            let r = open_when_ready(|| Region::builder(name).open());
            for (i, &(off, len)) in PIECES.iter().enumerate() {
                let mut buf = vec![0u8; len];
                r.read(off, &mut buf).map_err(|e| e.to_string())?;
                if buf != pattern(i as u64 + 1, len) {
                    return Err(format!("piece {i} at {off} differs"));
                }
            }
            Ok(())
        })(),
        // Creates a region of ARG bytes and holds it until stdin closes;
        // the name stays for the parent to damage the header after.
        "region-create-and-hold" => (|| {
            let size = arg.parse().map_err(|_| format!("bad arg {arg:?}"))?;
            let _r = Region::builder(name)
                .size(size)
                .unlink_on_drop(false)
                .create()
                .map_err(|e| e.to_string())?;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            Ok(())
        })(),
        // Once stdin closes (so that several start together), adds 1 to
        // the u64 at offset 0, ARG times, without a lock.
        "region-add-n" => (|| {
            let n: u64 = arg.parse().map_err(|_| format!("bad arg {arg:?}"))?;
            let r = open_when_ready(|| Region::builder(name).open());
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            for _ in 0..n {
                r.fetch_add_u64(0, 1).map_err(|e| e.to_string())?;
            }
            Ok(())
        })(),
        _ => return None,
    })
}

/// No atomic operations on regions: a counter shared by processes needed a
/// semaphore around every increment (issue 18). Four processes add to one
/// word at once and none of their adds is lost; compare-exchange stores
/// only over the value it expects; both refuse a misaligned offset.
#[test]
fn processes_add_to_one_word_without_losing_an_add() {
    let name = unique_name("region-atomic");
    let _g = NameGuard(name.clone());
    let r = Region::builder(&name).size(64).create().unwrap();
    // Started together and long enough to overlap: a read-then-write
    // loses adds.
    let n = 2_000_000u64;
    let mut children: Vec<_> = (0..4)
        .map(|_| spawn("region-add-n", &name, &n.to_string()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for c in &mut children {
        drop(c.stdin.take());
    }
    for mut c in children {
        assert!(wait_bounded(&mut c, PATIENCE).success());
    }
    assert_eq!(r.read_value::<u64>(0).unwrap(), 4 * n);
    assert_eq!(r.fetch_add_u64(0, 1).unwrap(), 4 * n);

    assert_eq!(r.compare_exchange_u64(8, 0, 7).unwrap(), Ok(0));
    assert_eq!(r.compare_exchange_u64(8, 0, 9).unwrap(), Err(7));
    assert_eq!(r.read_value::<u64>(8).unwrap(), 7);
    assert!(matches!(
        r.fetch_add_u64(4, 1),
        Err(AccessError::Misaligned { align: 8, .. })
    ));
    assert!(matches!(
        r.compare_exchange_u64(64, 0, 1),
        Err(AccessError::OutOfRange { .. })
    ));
}

#[test]
fn bytes_and_values_written_by_one_process_are_read_by_another() {
    let name = unique_name("region-xp");
    let _g = NameGuard(name.clone());
    let r = Region::builder(&name).size(SIZE).create().unwrap();
    assert_eq!(r.len(), SIZE);

    let mut child = spawn("region-write", &name, "");
    assert!(wait_bounded(&mut child, PATIENCE).success());
    for (i, &(off, len)) in PIECES.iter().enumerate() {
        let mut buf = vec![0u8; len];
        r.read(off, &mut buf).unwrap();
        assert_eq!(buf, pattern(i as u64, len), "piece {i} at {off}");
    }
    assert_eq!(r.read_value::<u64>(8192).unwrap(), 0x1234_5678_9abc_def0);
    assert_eq!(
        r.read_value::<[u8; 4]>(8192).unwrap(),
        0x9abc_def0u32.to_ne_bytes()
    );

    for (i, &(off, len)) in PIECES.iter().enumerate() {
        r.write(off, &pattern(i as u64 + 1, len)).unwrap();
    }
    let mut child = spawn("region-verify", &name, "");
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn every_access_is_traced_with_its_offset_and_length() {
    let name = unique_name("region-trace");
    let _g = NameGuard(name.clone());
    let (_, ops) = capture_ops(|| {
        let r = Region::builder(&name).size(4096).create().unwrap();
        r.write(100, b"abc").unwrap();
        let mut buf = [0u8; 10];
        r.read(95, &mut buf).unwrap();
        r.write_value(16, 7u32).unwrap();
        assert!(r.read(4000, &mut [0u8; 100]).is_err());
    });
    let got: Vec<_> = ops
        .iter()
        .map(|o| (o.kind.as_str(), o.channel.as_str(), o.aux, o.size))
        .collect();
    assert_eq!(
        got,
        [
            ("shm_map", "ipclib_shm", 0, 4096),
            ("shm_write", "ipclib_shm", 100, 3),
            ("shm_read", "ipclib_shm", 95, 10),
            ("shm_write", "ipclib_shm", 16, 4),
            ("shm_unmap", "ipclib_shm", 0, 4096),
        ]
    );
    assert!(ops.iter().all(|o| o.name == name));
}

#[test]
fn opening_with_another_size_or_kind_of_object_is_a_precise_error() {
    let name = unique_name("region-layout");
    let _g = NameGuard(name.clone());
    let mut child = spawn("region-create-and-hold", &name, "4096");
    // Ours is the same region as the child's: it opens with the size the
    // child chose.
    let r = open_when_ready(|| Region::builder(&name).open());
    assert_eq!(r.len(), 4096);

    match Region::builder(&name).size(8192).open() {
        Err(OpenError::LayoutMismatch {
            field: "size",
            expected: 8192,
            found: 4096,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let err = Region::builder(&name).size(4096).create().unwrap_err();
    assert!(matches!(err, OpenError::AlreadyExists { .. }), "{err:?}");
    // open_or_create opens, with or without a size, and checks the size
    // like open.
    assert!(Region::builder(&name).size(4096).open_or_create().is_ok());
    assert_eq!(Region::builder(&name).open_or_create().unwrap().len(), 4096);
    assert!(Region::builder(&name).size(1).open_or_create().is_err());
    // A region is not a semaphore.
    assert!(matches!(
        Semaphore::builder(&name).open(),
        Err(OpenError::BadMagic {
            kind: "semaphore",
            ..
        })
    ));
    drop(child.stdin.take());
    assert!(wait_bounded(&mut child, PATIENCE).success());

    // Header damage is caught on open.
    let hostile = Hostile::map(&name);
    hostile.write_u64(16, 5000);
    let err = Region::builder(&name).open().unwrap_err();
    assert!(err.to_string().contains("size 5000"), "{err}");
    hostile.write_u64(8, 99);
    let err = Region::builder(&name).open().unwrap_err();
    assert!(
        matches!(err, OpenError::VersionMismatch { found: 99, .. }),
        "{err:?}"
    );
}

#[test]
fn other_objects_and_missing_names_are_not_regions() {
    let chan = unique_name("region-chan");
    let _g = NameGuard(chan.clone());
    let _rx = Receiver::builder(&chan).create().unwrap();
    match Region::builder(&chan).open() {
        Err(e @ OpenError::BadMagic { kind: "region", .. }) => {
            assert!(e.to_string().contains("not an ipc-lib region"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let sem = unique_name("region-sem");
    let _g2 = NameGuard(sem.clone());
    let _s = Semaphore::builder(&sem).create().unwrap();
    assert!(matches!(
        Region::builder(&sem).open(),
        Err(OpenError::BadMagic { kind: "region", .. })
    ));
    // A region is not a channel either.
    let reg = unique_name("region-as-chan");
    let _g3 = NameGuard(reg.clone());
    let _r = Region::builder(&reg).size(100_000).create().unwrap();
    assert!(matches!(
        Receiver::builder(&reg).open(),
        Err(OpenError::BadMagic {
            kind: "channel",
            ..
        })
    ));

    let missing = unique_name("region-missing");
    assert!(matches!(
        Region::builder(&missing).wait(Duration::ZERO).open(),
        Err(OpenError::NotFound { waited, .. }) if waited.is_zero()
    ));
    for bad in [
        Region::builder(&missing).create(),
        Region::builder(&missing).open_or_create(),
        Region::builder(&missing).size(0).create(),
    ] {
        assert!(
            matches!(bad, Err(OpenError::InvalidLayout { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Region::builder("a/b").size(8).create(),
        Err(OpenError::InvalidName { .. })
    ));
}

#[test]
fn out_of_range_and_misaligned_accesses_are_errors_that_touch_nothing() {
    let name = unique_name("region-bounds");
    let _g = NameGuard(name.clone());
    let r = Region::builder(&name)
        .size(100)
        .unlink_on_drop(true)
        .create()
        .unwrap();
    r.write(0, &[0xAA; 100]).unwrap();
    let before = {
        let mut b = [0u8; 100];
        r.read(0, &mut b).unwrap();
        b
    };
    let oob = |e: AccessError, offset, len| match e {
        AccessError::OutOfRange {
            offset: o,
            len: l,
            size: 100,
            ..
        } => assert_eq!((o, l), (offset, len)),
        other => panic!("{other:?}"),
    };
    oob(r.write(96, &[1; 5]).unwrap_err(), 96, 5);
    oob(r.write(100, &[1]).unwrap_err(), 100, 1);
    oob(r.write(usize::MAX, &[1; 2]).unwrap_err(), usize::MAX, 2);
    oob(r.read(1, &mut [0; 100]).unwrap_err(), 1, 100);
    oob(r.read_value::<u64>(96).unwrap_err(), 96, 8);
    oob(r.write_value(96, [0u8; 5]).unwrap_err(), 96, 5);
    match r.write_value(4, 1u64).unwrap_err() {
        AccessError::Misaligned {
            offset: 4,
            align: 8,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let err = r.read_value::<u32>(2).unwrap_err();
    assert!(err.to_string().contains("not a multiple of 4"), "{err}");
    // The edges are in range, and nothing above changed a byte.
    r.read(100, &mut []).unwrap();
    let mut after = [0u8; 100];
    r.read(0, &mut after).unwrap();
    assert_eq!(before, after);
}
