//! Builds the eBPF programs (probe-ebpf) for the BPF target, so that
//! `collector::ebpf` can embed the object from `$OUT_DIR/probe`.
//!
//! aya-build runs a nested `cargo +nightly build -Z build-std=core` and
//! reports the failure of that command without saying why it failed; on a
//! fresh machine the why is nearly always a missing tool. So the tools are
//! checked first, and each missing one is named along with the way to get
//! it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use aya_build::{Package, Toolchain};

/// The one-step fix for every missing tool below.
const SETUP_HINT: &str = "run `cargo xtask setup` to install the eBPF toolchain";

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("collector has no parent directory")?
        .join("probe-ebpf");
    let root = root.to_str().context("the probe-ebpf path is not UTF-8")?;

    check_nightly_rust_src()?;
    let linker = find_in_path("bpf-linker").with_context(|| {
        format!("bpf-linker is not installed (not found in PATH or ~/.cargo/bin); {SETUP_HINT}")
    })?;
    // A new bpf-linker can produce a different object; the probes must be
    // rebuilt with it (the trick aya-template's eBPF build.rs uses).
    println!("cargo:rerun-if-changed={}", linker.display());
    // `sqlx::migrate!` embeds migrations/ when store.rs compiles; a new
    // migration file changes no Rust source, so this reruns the build (and
    // with it the embedding) when one comes (as sqlx's docs advise).
    println!("cargo:rerun-if-changed=../migrations");
    // aya-build runs cargo through rustup, whose PATH lookup must find the
    // linker too; ~/.cargo/bin may be missing from a build script's PATH.
    if let Some(dir) = linker.parent() {
        prepend_path(dir)?;
    }

    // aya-build turns every line the nested cargo prints into a
    // `cargo:warning`, so its progress lines ("Compiling core ...") would
    // show as dozens of warnings on every rebuild. Errors still come
    // through: compiler messages go through its JSON stream, and quiet
    // only silences cargo's status lines.
    env::set_var("CARGO_TERM_QUIET", "true");

    // aya-build prints rerun-if-changed for the whole probe-ebpf directory,
    // so any change to the programs rebuilds the object.
    aya_build::build_ebpf(
        [Package {
            name: "probe-ebpf",
            root_dir: root,
            ..Package::default()
        }],
        Toolchain::Nightly,
    )
    .with_context(|| {
        format!(
            "building the eBPF programs (probe-ebpf) failed; the compiler's messages are in \
             the `warning:` lines above. If a tool is missing, {SETUP_HINT}"
        )
    })
}

/// The BPF target has no prebuilt `core`, so it is built from the nightly
/// toolchain's rust-src component (`-Z build-std=core`).
fn check_nightly_rust_src() -> Result<()> {
    let output = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .with_context(|| {
            format!("rustup is not installed (needed to find the nightly toolchain); {SETUP_HINT}")
        })?;
    if !output.status.success() {
        bail!(
            "the nightly Rust toolchain is not installed ({}); {SETUP_HINT}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core.is_file() {
        bail!(
            "the nightly toolchain lacks the rust-src component ({} is missing; \
             `rustup component add rust-src --toolchain nightly`); {SETUP_HINT}",
            core.display()
        );
    }
    Ok(())
}

/// The first executable `name` in PATH, then in cargo's own bin directory
/// (where `cargo install` puts bpf-linker).
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;

    println!("cargo:rerun-if-env-changed=PATH");
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"));
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|path| {
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn prepend_path(dir: &Path) -> Result<()> {
    let old = env::var_os("PATH").unwrap_or_default();
    let paths = std::iter::once(dir.to_path_buf()).chain(env::split_paths(&old));
    let new = env::join_paths(paths).context("cannot add bpf-linker's directory to PATH")?;
    // Nothing else runs yet: the build script has no other threads.
    env::set_var("PATH", new);
    Ok(())
}
