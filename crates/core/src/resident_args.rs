//! The command line of the resident binaries: boot, the log writer and the three managers.
//!
//! They take `--home DIR` and little else, and they stay in memory for as long as n0m1 runs, so
//! they parse with lexopt (one small module) instead of clap, whose parser, help renderer and
//! error styling are about 180 KB of code mapped into each of the five for no use. The
//! command-line tools (`n0m1ctl`, the daemons) keep clap and `HomeArg`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::home::HomeArg;

/// `value()?.parse()` for an option's value, so a binary's extra options need no lexopt import.
pub use lexopt::ValueExt;

/// What one resident binary is called and says about itself in `--help`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub name: &'static str,
    pub about: &'static str,
    /// The options besides `--home`, `--help` and `--version`: (flag and value, what it does).
    pub options: &'static [(&'static str, &'static str)],
}

/// Parses `args` (without the program name). `extra` is offered each long option other than
/// `--home`, `--help` and `--version` and returns whether it took it. `Err` carries the exit
/// code once help or the version was printed (0) or the error was (2, as clap's).
pub fn parse(
    usage: &Usage,
    args: impl IntoIterator<Item = OsString>,
    mut extra: impl FnMut(&str, &mut lexopt::Parser) -> Result<bool, lexopt::Error>,
) -> Result<HomeArg, ExitCode> {
    match parse_inner(usage, args, &mut extra) {
        Ok(Some(home)) => Ok(home),
        Ok(None) => Err(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!(
                "error: {error}\n\nUsage: {} [--home DIR]\nFor more information, try '--help'.",
                usage.name
            );
            Err(ExitCode::from(2))
        }
    }
}

fn parse_inner(
    usage: &Usage,
    args: impl IntoIterator<Item = OsString>,
    extra: &mut impl FnMut(&str, &mut lexopt::Parser) -> Result<bool, lexopt::Error>,
) -> Result<Option<HomeArg>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut home = HomeArg::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("home") => home.path = Some(PathBuf::from(parser.value()?)),
            Short('h') | Long("help") => {
                print!("{}", help(usage));
                return Ok(None);
            }
            Short('V') | Long("version") => {
                println!("{} {}", usage.name, env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Long(name) => {
                let name = name.to_owned();
                if !extra(&name, &mut parser)? {
                    return Err(Long(&name).unexpected());
                }
            }
            other => return Err(other.unexpected()),
        }
    }
    Ok(Some(home))
}

fn help(usage: &Usage) -> String {
    const HOME: (&str, &str) = (
        "--home <DIR>",
        "The n0m1 home folder (default: $N0M1_HOME, else ~/n0m1_agi)",
    );
    // A long-only flag lines up under the long half of "-h, --help", as clap prints them.
    let rows: Vec<(String, &str)> = std::iter::once(&HOME)
        .chain(usage.options)
        .map(|(flag, what)| (format!("    {flag}"), *what))
        .chain([
            ("-h, --help".to_owned(), "Print help"),
            ("-V, --version".to_owned(), "Print version"),
        ])
        .collect();
    let width = rows.iter().map(|(flag, _)| flag.len()).max().unwrap_or(0);
    let mut text = format!(
        "{}\n\nUsage: {} [OPTIONS]\n\nOptions:\n",
        usage.about, usage.name
    );
    for (flag, what) in rows {
        text.push_str(&format!("  {flag:<width$}  {what}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: Usage = Usage {
        name: "test_manager",
        about: "A resident binary",
        options: &[("--every <MS>", "How often")],
    };

    fn run(args: &[&str]) -> (Result<HomeArg, ExitCode>, Option<u64>) {
        let mut every = None;
        let parsed = parse(&USAGE, args.iter().map(OsString::from), |name, parser| {
            Ok(match name {
                "every" => {
                    every = Some(parser.value()?.parse()?);
                    true
                }
                _ => false,
            })
        });
        (parsed, every)
    }

    #[test]
    fn home_in_both_spellings_and_an_extra_option() {
        let (home, every) = run(&["--home", "/srv/n0m1", "--every=50"]);
        assert_eq!(home.unwrap().path, Some(PathBuf::from("/srv/n0m1")));
        assert_eq!(every, Some(50));
        let (home, every) = run(&["--home=/srv/other"]);
        assert_eq!(home.unwrap().path, Some(PathBuf::from("/srv/other")));
        assert_eq!(every, None);
        assert_eq!(run(&[]).0.unwrap().path, None);
    }

    #[test]
    fn unknown_options_a_missing_value_and_a_bad_number_exit_2() {
        for args in [
            &["--hom", "/x"][..],
            &["--home"],
            &["stray"],
            &["--every", "soon"],
            &["-x"],
        ] {
            assert_eq!(run(args).0.unwrap_err(), ExitCode::from(2), "{args:?}");
        }
    }

    #[test]
    fn help_and_version_exit_0_and_help_names_every_option() {
        assert_eq!(run(&["--help"]).0.unwrap_err(), ExitCode::SUCCESS);
        assert_eq!(run(&["-V"]).0.unwrap_err(), ExitCode::SUCCESS);
        let text = help(&USAGE);
        for part in [
            "A resident binary",
            "Usage: test_manager",
            "--home <DIR>",
            "--every <MS>",
            "--help",
            "--version",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }
}
