//! `logs`: a component's or manager's output, the last N lines or followed.
//!
//! Following polls (read to EOF, sleep, reopen when the file was replaced or shrank), which
//! survives truncation and rotation without a file-watching dependency.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use n0m1_core::Home;
use n0m1_core::home::BOOT_LOG_STEM;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Component id, manager name, or `boot`; omit to list every log.
    pub id: Option<String>,
    /// How many lines to show from the end of each file.
    #[arg(short = 'n', long = "lines", default_value_t = 20)]
    pub lines: usize,
    /// Keep printing new lines as they are written (Ctrl-C to stop).
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// The `.log` and `.err` files of an id, wherever they live.
pub fn files_of(home: &Home, id: &str) -> Vec<PathBuf> {
    let stem = if matches!(id, "boot" | "boot_system") {
        BOOT_LOG_STEM
    } else {
        id
    };
    let (log, err) = home.component_logs(stem);
    let (mlog, merr) = home.manager_logs(stem);
    [log, err, mlog, merr]
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
}

/// The last `n` lines of the file's first `size` bytes.
fn last_lines(file: &mut File, size: u64, n: usize) -> anyhow::Result<String> {
    Ok(n0m1_core::logpipe::last_lines(file, size, n)?)
}

/// The last lines of one log file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogFileTail {
    pub path: String,
    pub lines: Vec<String>,
}

/// The files of an id, or an error naming where no log was found.
fn existing_files(home: &Home, id: &str) -> anyhow::Result<Vec<PathBuf>> {
    n0m1_core::home::validate_component_id(id)?;
    let files = files_of(home, id);
    if files.is_empty() {
        bail!(
            "no logs for {id:?} in {} or {}: `n0m1ctl logs` lists the logs there are",
            home.logs_dir().display(),
            home.manager_logs_dir().display()
        );
    }
    Ok(files)
}

/// The last `lines` lines of each of an id's log files.
pub fn tail(home: &Home, id: &str, lines: usize) -> anyhow::Result<Vec<LogFileTail>> {
    existing_files(home, id)?
        .into_iter()
        .map(|path| {
            let mut file =
                File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let size = file
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            let text = last_lines(&mut file, size, lines)?;
            Ok(LogFileTail {
                path: path.display().to_string(),
                lines: text.lines().map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// Prints tails as `logs` does (`==> path <==`, then the lines).
pub fn print_tails(tails: &[LogFileTail]) {
    for tail in tails {
        println!("==> {} <==", tail.path);
        let terminal = stdout_is_terminal();
        for line in &tail.lines {
            println!(
                "{}",
                String::from_utf8_lossy(&for_terminal(line.as_bytes(), terminal))
            );
        }
    }
}

pub fn run(home: &Home, args: &LogsArgs) -> anyhow::Result<()> {
    let Some(id) = &args.id else {
        return list(home);
    };
    let files = existing_files(home, id)?;
    // Each file is measured once: the tail is printed up to that size and following starts
    // there, so a line written in between is neither lost nor printed twice.
    let mut followed = Vec::with_capacity(files.len());
    for path in &files {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        println!("==> {} <==", path.display());
        let text = last_lines(&mut file, meta.len(), args.lines)?;
        if !text.is_empty() {
            let shown = for_terminal(text.as_bytes(), stdout_is_terminal());
            println!("{}", String::from_utf8_lossy(&shown));
        }
        followed.push(Followed {
            path: path.clone(),
            inode: meta.ino(),
            offset: meta.len(),
            file: Some(file),
        });
    }
    if args.follow {
        follow(followed)?;
    }
    Ok(())
}

fn list(home: &Home) -> anyhow::Result<()> {
    for dir in [home.logs_dir(), home.manager_logs_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut rows: Vec<(String, u64)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map_or(0, |m| m.len()),
                )
            })
            .filter(|(name, _)| !name.starts_with('.'))
            .collect();
        rows.sort();
        println!("{}:", dir.display());
        for (name, size) in rows {
            println!(
                "  {:<40} {size:>10} bytes",
                n0m1_core::text::printable(&name)
            );
        }
    }
    Ok(())
}

struct Followed {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    offset: u64,
}

/// What a log shows on a terminal: every control character but a line break and a tab
/// escaped (`\x1b`), so a component's output cannot retitle the window, clear the screen or
/// write the clipboard (OSC 52). Into a pipe or a file the bytes go as they are.
fn for_terminal(bytes: &[u8], terminal: bool) -> std::borrow::Cow<'_, [u8]> {
    if !terminal {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out.into_bytes())
}

fn stdout_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

fn follow(mut followed: Vec<Followed>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let terminal = stdout_is_terminal();
    loop {
        for f in &mut followed {
            // Rotation replaces the file (new inode); truncation shrinks it: either way,
            // start again from the beginning of what is there now.
            match std::fs::metadata(&f.path) {
                Ok(meta) if meta.ino() != f.inode || meta.len() < f.offset => {
                    // Rotated: what was written to the old file after our last read is still
                    // there through the open handle (now `<id>.log.1`): print it first.
                    if meta.ino() != f.inode
                        && let Some(old) = &mut f.file
                    {
                        old.seek(SeekFrom::Start(f.offset))?;
                        let mut rest = Vec::new();
                        old.read_to_end(&mut rest)?;
                        let mut out = stdout.lock();
                        let rest = for_terminal(&rest, terminal);
                        if out.write_all(&rest).and_then(|()| out.flush()).is_err() {
                            return Ok(());
                        }
                    }
                    f.file = File::open(&f.path).ok();
                    f.inode = meta.ino();
                    f.offset = 0;
                }
                _ => {}
            }
            let Some(file) = &mut f.file else { continue };
            file.seek(SeekFrom::Start(f.offset))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            if !bytes.is_empty() {
                f.offset += bytes.len() as u64;
                let mut out = stdout.lock();
                let bytes = for_terminal(&bytes, terminal);
                // A closed pipe (`n0m1ctl logs -f | head`) ends the command quietly.
                if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
