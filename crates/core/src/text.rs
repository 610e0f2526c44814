//! Text from data (ids, messages, file names) on its way to a person's terminal.

use std::borrow::Cow;

/// `text` with every control character written as an escape (`\x1b`, `\n`), so an id or a
/// message from the database can neither move the cursor, retitle the window nor break a
/// table's lines.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// An error and its causes on one line, `printable`, each cause said once: many messages
/// already end with their source's text (`cannot read X: {source}`), and printing the chain
/// A 64-bit FNV-1a hash, stable across runs, versions and platforms (the digest mode's
/// fingerprint of rows, a home's cgroup id).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// as well would repeat it.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let said = next.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = next.source();
    }
    printable(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{error_chain, printable};

    #[test]
    fn each_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read config /h/config.json: {source}")]
        struct Read {
            #[source]
            source: std::io::Error,
        }
        let inner = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        );
        let error = anyhow::Error::new(Read { source: inner }).context("starting boot\x1b");
        assert_eq!(
            error_chain(error.as_ref()),
            "starting boot\\x1b: cannot read config /h/config.json: stream did not contain valid UTF-8"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("cpu_usage_daemon"), "cpu_usage_daemon");
        assert_eq!(
            printable("evil\u{1b}]0;PWNED\u{7}\u{1b}[2J"),
            "evil\\x1b]0;PWNED\\x07\\x1b[2J"
        );
        assert_eq!(printable("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(printable("température 80 °C"), "température 80 °C");
        assert_eq!(printable("\u{9b}31m"), "\\x9b31m", "C1 controls too");
    }
}
