//! Server-sent event streams: the lifecycle log (each event's `id:` is its row id, so a
//! browser that reconnects with `Last-Event-ID` resumes where it left off and misses nothing)
//! and a component's log files, followed across rotation.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use futures_util::Stream;
use n0m1_core::Home;
use n0m1_core::lifecycle::LoggedEvent;
use tokio::sync::watch;

use crate::{ApiError, App, blocking};

/// How often the one lifecycle poller looks for new rows (only while a stream listens).
const LIFECYCLE_POLL: Duration = Duration::from_millis(200);
/// How often a log stream looks at its files.
const LOG_POLL: Duration = Duration::from_millis(250);
/// Events sent per database read.
const EVENT_BATCH: usize = 500;
/// The most a log stream reads from a file per poll (a burst is sent over several polls).
const LOG_CHUNK: u64 = 256 * 1024;

/// Publishes the newest lifecycle row id while any stream listens.
pub async fn poll_lifecycle(
    home: Home,
    sender: watch::Sender<i64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(LIFECYCLE_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        if sender.receiver_count() <= 1 {
            // Only App's own receiver: nobody streams.
            continue;
        }
        let home = home.clone();
        let last = blocking(move || {
            let conn = n0m1_ctl::open_database(&home)
                .map_err(|e| ApiError::database("the database", e))?;
            n0m1_core::lifecycle::last_id(&conn)
                .map_err(|e| ApiError::database("the lifecycle log", e))
        })
        .await;
        match last {
            Ok(id) => {
                sender.send_if_modified(|current| {
                    let changed = *current != id;
                    *current = id;
                    changed
                });
            }
            Err(error) => tracing::warn!("lifecycle poll: {}", error.message),
        }
    }
}

type EventStream =
    Sse<KeepAliveStream<std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>>>;

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> EventStream {
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(stream);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

struct LifecycleCursor {
    app: Arc<App>,
    after: i64,
    component: Option<String>,
    pending: VecDeque<LoggedEvent>,
    changes: watch::Receiver<i64>,
    shutdown: watch::Receiver<bool>,
}

/// Lifecycle events after row `after` (of one component, or all), then live.
pub fn lifecycle(app: Arc<App>, after: i64, component: Option<String>) -> EventStream {
    let cursor = LifecycleCursor {
        changes: app.last_event.clone(),
        shutdown: app.shutdown.clone(),
        app,
        after,
        component,
        pending: VecDeque::new(),
    };
    sse(futures_util::stream::unfold(
        cursor,
        |mut cursor| async move {
            loop {
                if let Some(event) = cursor.pending.pop_front() {
                    cursor.after = event.id;
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    let sse = Event::default()
                        .id(event.id.to_string())
                        .event("lifecycle")
                        .data(data);
                    return Some((Ok(sse), cursor));
                }
                let (home, after, component) = (
                    cursor.app.home.clone(),
                    cursor.after,
                    cursor.component.clone(),
                );
                let page = blocking(move || {
                    let conn = n0m1_ctl::open_database(&home)
                        .map_err(|e| ApiError::database("the database", e))?;
                    n0m1_ctl::events::page(&conn, after, component.as_deref(), EVENT_BATCH, false)
                        .map_err(|e| ApiError::database("the lifecycle log", e))
                })
                .await;
                match page {
                    Ok(events) if !events.is_empty() => {
                        cursor.pending.extend(events);
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!("event stream: {}", error.message),
                }
                // Nothing new: wait for the poller to see a new row (or a retry after an error).
                cursor.changes.mark_unchanged();
                tokio::select! {
                    changed = cursor.changes.changed() => if changed.is_err() { return None },
                    _ = cursor.shutdown.changed() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        },
    ))
}

struct FollowedFile {
    path: PathBuf,
    inode: Option<u64>,
    offset: u64,
    partial: Vec<u8>,
}

impl FollowedFile {
    /// Starts at the end: the tail came from `logs/{id}`.
    fn at_end(path: PathBuf) -> FollowedFile {
        let meta = std::fs::metadata(&path).ok();
        FollowedFile {
            inode: meta.as_ref().map(|m| m.ino()),
            offset: meta.map_or(0, |m| m.len()),
            path,
            partial: Vec::new(),
        }
    }

    /// Complete lines written since the last read. A rotated file (new inode) or a truncated
    /// one is read again from its start; the file is opened per read, so a stream holds no
    /// descriptor between polls.
    fn read_lines(&mut self) -> Vec<String> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Vec::new();
        };
        if Some(meta.ino()) != self.inode || meta.len() < self.offset {
            self.inode = Some(meta.ino());
            self.offset = 0;
            self.partial.clear();
        }
        if meta.len() == self.offset {
            return Vec::new();
        }
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        let read = file.take(LOG_CHUNK).read_to_end(&mut bytes).unwrap_or(0);
        self.offset += read as u64;
        self.partial.extend_from_slice(&bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        lines
    }
}

#[derive(serde::Serialize)]
struct LogLine<'a> {
    file: &'a str,
    line: &'a str,
}

struct LogCursor {
    files: Vec<FollowedFile>,
    pending: VecDeque<Event>,
    shutdown: watch::Receiver<bool>,
}

/// New lines of the given files, as they are written.
pub fn log_lines(app: Arc<App>, files: Vec<PathBuf>) -> EventStream {
    let cursor = LogCursor {
        files: files.into_iter().map(FollowedFile::at_end).collect(),
        pending: VecDeque::new(),
        shutdown: app.shutdown.clone(),
    };
    sse(futures_util::stream::unfold(
        cursor,
        |mut cursor| async move {
            loop {
                if let Some(event) = cursor.pending.pop_front() {
                    return Some((Ok(event), cursor));
                }
                tokio::select! {
                    _ = tokio::time::sleep(LOG_POLL) => {}
                    _ = cursor.shutdown.changed() => return None,
                }
                let mut files = std::mem::take(&mut cursor.files);
                let (files, events) = tokio::task::spawn_blocking(move || {
                    let mut events = Vec::new();
                    for file in &mut files {
                        let name = file.path.display().to_string();
                        for line in file.read_lines() {
                            let data = serde_json::to_string(&LogLine {
                                file: &name,
                                line: &line,
                            })
                            .unwrap_or_default();
                            events.push(Event::default().event("log").data(data));
                        }
                    }
                    (files, events)
                })
                .await
                .ok()?;
                cursor.files = files;
                cursor.pending.extend(events);
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_followed_file_gives_whole_lines_across_rotation_and_truncation() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut followed = FollowedFile::at_end(path.clone());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"one\ntw").unwrap();
        assert_eq!(followed.read_lines(), ["one"]);
        file.write_all(b"o\n").unwrap();
        assert_eq!(followed.read_lines(), ["two"]);
        // Rotation: the file is renamed away and a new one takes its name.
        std::fs::rename(&path, tmp.path().join("c.log.1")).unwrap();
        std::fs::write(&path, "three\n").unwrap();
        assert_eq!(followed.read_lines(), ["three"]);
        std::fs::write(&path, "").unwrap();
        assert!(followed.read_lines().is_empty());
        std::fs::write(&path, "four\n").unwrap();
        assert_eq!(followed.read_lines(), ["four"]);
    }
}
