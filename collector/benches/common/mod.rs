//! What the rusqlite floors of several benches share.

/// Applies the migrations up to number `last`, in order, to `conn`; with
/// `u32::MAX`, the schema `record` writes, every table and index of it.
pub fn migrate(conn: &rusqlite::Connection, last: u32) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name[..4].parse::<u32>().unwrap() <= last
        })
        .collect();
    files.sort();
    for f in files {
        conn.execute_batch(&std::fs::read_to_string(f).unwrap())
            .unwrap();
    }
}
