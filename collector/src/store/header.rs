//! The SQLite file header, read without SQLite, so that a file can be judged
//! before anything that might write to it opens it.
//! Layout: <https://www.sqlite.org/fileformat.html#the_database_header>.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// `PRAGMA application_id` of ipcscope databases: "IPCS".
pub const APPLICATION_ID: u32 = u32::from_be_bytes(*b"IPCS");

const MAGIC: &[u8; 16] = b"SQLite format 3\0";
const HEADER_LEN: usize = 100;

/// The fields of the header ipcscope looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub page_size: u32,
    pub change_counter: u32,
    pub page_count: u32,
    pub version_valid_for: u32,
    pub user_version: u32,
    pub application_id: u32,
}

impl Header {
    /// Reads the header; `None` when the file is not SQLite (too short for
    /// a header, or the magic string is missing).
    pub fn read(path: &Path) -> io::Result<Option<Header>> {
        let mut bytes = Vec::with_capacity(HEADER_LEN);
        File::open(path)?
            .take(HEADER_LEN as u64)
            .read_to_end(&mut bytes)?;
        Ok(Self::parse(&bytes))
    }

    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let bytes: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        if &bytes[..16] != MAGIC {
            return None;
        }
        let be32 = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        // The page size is a two-byte number; 65536 does not fit and is stored as 1.
        let raw_page = u16::from_be_bytes([bytes[16], bytes[17]]);
        let page_size = if raw_page == 1 {
            65536
        } else {
            u32::from(raw_page)
        };
        Some(Header {
            page_size,
            change_counter: be32(24),
            page_count: be32(28),
            version_valid_for: be32(92),
            user_version: be32(60),
            application_id: be32(68),
        })
    }

    /// The file length the header vouches for. SQLite trusts the in-header
    /// page count only when the version-valid-for number matches the change
    /// counter (older writers did not maintain it), and so do we.
    pub fn described_len(&self) -> Option<u64> {
        (self.version_valid_for == self.change_counter && self.page_count > 0)
            .then(|| u64::from(self.page_size) * u64::from(self.page_count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes() -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[..16].copy_from_slice(MAGIC);
        b[16..18].copy_from_slice(&4096u16.to_be_bytes());
        b[24..28].copy_from_slice(&7u32.to_be_bytes());
        b[28..32].copy_from_slice(&3u32.to_be_bytes());
        b[60..64].copy_from_slice(&2u32.to_be_bytes());
        b[68..72].copy_from_slice(&APPLICATION_ID.to_be_bytes());
        b[92..96].copy_from_slice(&7u32.to_be_bytes());
        b
    }

    #[test]
    fn parses_the_fields_ipcscope_uses() {
        let h = Header::parse(&header_bytes()).unwrap();
        assert_eq!(h.page_size, 4096);
        assert_eq!(h.user_version, 2);
        assert_eq!(h.application_id, APPLICATION_ID);
        assert_eq!(h.described_len(), Some(3 * 4096));
    }

    #[test]
    fn stale_page_count_is_not_trusted() {
        let mut b = header_bytes();
        b[92..96].copy_from_slice(&6u32.to_be_bytes());
        assert_eq!(Header::parse(&b).unwrap().described_len(), None);
    }

    #[test]
    fn non_sqlite_bytes_are_rejected() {
        assert_eq!(Header::parse(b"root:x:0:0:root:/root:/bin/bash\n"), None);
        let mut b = header_bytes();
        b[0] = b's';
        assert_eq!(Header::parse(&b), None);
        assert_eq!(Header::parse(&header_bytes()[..99]), None);
    }
}
