//! The log writer's report of a full disk, for boot to record. The log writer links no
//! SQLite (it stays as small as a supervisor), so it says what happened in `run/logd.disk`, a
//! file of fixed size written in place (no new block is needed to overwrite one, so the report
//! can be written while the disk is full); boot reads it on its timer and records one
//! `DISK_FULL` per episode and one `DISK_FULL_CLEARED` with the bytes dropped.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The report's size on disk: written whole at the start, overwritten in place after.
pub const REPORT_BYTES: usize = 256;

/// One episode of a full disk, as the log writer saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskReport {
    /// Counts episodes since the log writer started (0: none yet).
    pub episode: u64,
    /// When the first write was refused (Unix seconds).
    pub since: i64,
    /// Bytes dropped so far in this episode.
    pub dropped: u64,
    /// When a write went through again (Unix seconds); `None` while the disk is full.
    pub cleared: Option<i64>,
    /// The log files that lost lines (file names, comma-separated, cut to fit).
    pub files: String,
}

impl DiskReport {
    pub fn full_message(&self) -> String {
        format!(
            "no space left on the device of logs/{}: log lines are dropped (and counted) until space returns; free space on it",
            self.files.split(',').next().unwrap_or("")
        )
    }

    pub fn cleared_message(&self) -> String {
        format!(
            "space is back after {} s: {} bytes of log lines were dropped ({})",
            self.cleared.unwrap_or(self.since) - self.since,
            self.dropped,
            self.files.replace(',', ", ")
        )
    }

    fn encode(&self) -> [u8; REPORT_BYTES] {
        let mut line = format!(
            "n0m1 disk v1 episode={} since={} dropped={} cleared={} files=",
            self.episode,
            self.since,
            self.dropped,
            self.cleared.unwrap_or(0)
        );
        let room = REPORT_BYTES - 1 - line.len();
        let mut files = self.files.as_str();
        while files.len() > room {
            files = files.rsplit_once(',').map_or("", |(head, _)| head);
        }
        line.push_str(files);
        let mut bytes = [b' '; REPORT_BYTES];
        bytes[..line.len()].copy_from_slice(line.as_bytes());
        bytes[REPORT_BYTES - 1] = b'\n';
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<DiskReport> {
        let text = std::str::from_utf8(bytes).ok()?.trim_end();
        let rest = text.strip_prefix("n0m1 disk v1 ")?;
        let mut report = DiskReport {
            episode: 0,
            since: 0,
            dropped: 0,
            cleared: None,
            files: String::new(),
        };
        for field in rest.split(' ') {
            let (key, value) = field.split_once('=')?;
            match key {
                "episode" => report.episode = value.parse().ok()?,
                "since" => report.since = value.parse().ok()?,
                "dropped" => report.dropped = value.parse().ok()?,
                "cleared" => report.cleared = Some(value.parse().ok()?).filter(|t| *t > 0),
                "files" => report.files = value.to_owned(),
                _ => return None,
            }
        }
        Some(report)
    }
}

/// The log writer's side: the file made whole at start, then overwritten in place.
pub struct DiskReportFile(File);

impl DiskReportFile {
    /// Makes the file (0600) with a report of no episode, written to its full size now, while
    /// there is room.
    pub fn create(path: &Path) -> std::io::Result<DiskReportFile> {
        crate::home::write_private(path, &DiskReport::default().encode())
            .map_err(std::io::Error::other)?;
        Ok(DiskReportFile(
            std::fs::OpenOptions::new().write(true).open(path)?,
        ))
    }

    /// Overwrites the report in place.
    pub fn write(&self, report: &DiskReport) -> std::io::Result<()> {
        self.0.write_all_at(&report.encode(), 0)
    }
}

/// Boot's side: the report, if there is a readable one.
pub fn read(path: &Path) -> Option<DiskReport> {
    let mut bytes = Vec::with_capacity(REPORT_BYTES);
    File::open(path)
        .ok()?
        .take(REPORT_BYTES as u64)
        .read_to_end(&mut bytes)
        .ok()?;
    DiskReport::decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_written_in_place_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logd.disk");
        let file = DiskReportFile::create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), REPORT_BYTES as u64);
        assert_eq!(read(&path).unwrap().episode, 0);
        let mut report = DiskReport {
            episode: 3,
            since: 1_800_000_000,
            dropped: 0,
            cleared: None,
            files: "a.log,b.err".into(),
        };
        file.write(&report).unwrap();
        assert_eq!(read(&path).unwrap(), report);
        report.dropped = 900;
        report.cleared = Some(1_800_000_012);
        file.write(&report).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), REPORT_BYTES as u64);
        let back = read(&path).unwrap();
        assert_eq!(back, report);
        assert_eq!(
            back.cleared_message(),
            "space is back after 12 s: 900 bytes of log lines were dropped (a.log, b.err)"
        );
        assert!(back.full_message().contains("logs/a.log"));
        // Too many files to name: cut at a whole name.
        report.files = (0..100)
            .map(|i| format!("file{i}.log"))
            .collect::<Vec<_>>()
            .join(",");
        file.write(&report).unwrap();
        let cut = read(&path).unwrap();
        assert!(cut.files.starts_with("file0.log,") && cut.files.ends_with(".log"));
    }
}
