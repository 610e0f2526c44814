//! What a model says about a window is checked before it is written: repeated phrases are
//! cut, every number must be one of the window's statistics (after rounding), and a trend
//! word must agree with the computed trend. A text that fails is replaced by a plain sentence
//! built from the statistics, and the reason is kept in the row.

use crate::window::ColumnStats;

/// Words that claim a direction, by the trend they claim.
const TREND_WORDS: &[(&str, &[&str])] = &[
    (
        "rising",
        &[
            "rising",
            "rise",
            "rises",
            "rose",
            "increasing",
            "increase",
            "increases",
            "increased",
            "climbing",
            "climbs",
            "growing",
            "grows",
            "upward",
            "higher",
        ],
    ),
    (
        "falling",
        &[
            "falling",
            "fall",
            "falls",
            "fell",
            "decreasing",
            "decrease",
            "decreases",
            "decreased",
            "dropping",
            "drops",
            "dropped",
            "declining",
            "declines",
            "downward",
            "lower",
        ],
    ),
    (
        "flat",
        &["flat", "stable", "steady", "unchanged", "constant"],
    ),
    (
        "spike",
        &[
            "spike", "spiked", "spikes", "spiking", "surge", "surged", "burst",
        ],
    ),
    ("dip", &["dip", "dipped", "dips", "trough", "slump"]),
    (
        "volatile",
        &[
            "volatile",
            "fluctuating",
            "fluctuates",
            "fluctuated",
            "erratic",
            "swinging",
            "swings",
            "oscillating",
            "oscillates",
            "unstable",
        ],
    ),
];

/// The trends a text claims, each with the first word that claims it, in `TREND_WORDS` order.
pub fn claimed_trends(text: &str) -> Vec<(&'static str, String)> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    TREND_WORDS
        .iter()
        .filter_map(|(trend, list)| {
            let word = words.iter().find(|w| list.contains(&w.as_str()))?;
            Some((*trend, word.clone()))
        })
        .collect()
}

/// Words in a repeated run that makes the rest of a text a loop.
const REPEAT_NGRAM: usize = 3;

/// The text up to the first phrase of `REPEAT_NGRAM` words that it already said.
pub fn cut_repetition(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let key = |w: &str| {
        w.trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase()
    };
    let keys: Vec<String> = words.iter().map(|w| key(w)).collect();
    let mut seen = std::collections::HashSet::new();
    for start in 0..keys.len().saturating_sub(REPEAT_NGRAM - 1) {
        let gram = &keys[start..start + REPEAT_NGRAM];
        if gram.iter().all(|k| k.is_empty()) {
            continue;
        }
        if !seen.insert(gram.to_vec()) {
            return words[..start].join(" ");
        }
    }
    words.join(" ")
}

/// The numbers written in a text (`93.1`, `-2`, `40%` → 40) and the digits after the point.
pub fn numbers(text: &str) -> Vec<(f64, usize)> {
    numbers_at(text)
        .into_iter()
        .map(|(value, decimals, _)| (value, decimals))
        .collect()
}

/// Words that name a statistic, by the statistic.
const STATISTIC_WORDS: &[(&str, &[&str])] = &[
    ("mean", &["mean", "average", "averaging", "averaged", "avg"]),
    (
        "maximum",
        &["max", "maximum", "peak", "peaked", "peaking", "highest"],
    ),
    ("minimum", &["min", "minimum", "lowest"]),
    ("last", &["last", "latest", "current", "currently", "now"]),
];

/// Words that may stand between a statistic's name and its number ("a mean of 40").
const LINKING_WORDS: &[&str] = &["of", "at", "is", "was", "being", "value", "around", "about"];

/// The statistic a number is named as: the word before it, past at most two linking words
/// (`mean of 20.1`, `peaked at 95`, `max=60`); `None` when nothing names it.
fn named_statistic(before: &str) -> Option<&'static str> {
    let words = before
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .rev()
        .take(3);
    for (i, word) in words.enumerate() {
        let word = word.to_lowercase();
        if let Some((name, _)) = STATISTIC_WORDS
            .iter()
            .find(|(_, list)| list.contains(&word.as_str()))
        {
            return Some(name);
        }
        if i == 2 || !LINKING_WORDS.contains(&word.as_str()) {
            return None;
        }
    }
    None
}

/// Whether `value` with `decimals` digits is the statistic `name` of some column ("last" may
/// also be the count: "the last 10 samples").
fn is_the_statistic(name: &str, value: f64, decimals: usize, stats: &[ColumnStats]) -> bool {
    stats.iter().any(|s| {
        let last_or_count = [s.last, s.count as f64];
        let candidates: &[f64] = match name {
            "mean" => std::slice::from_ref(&s.mean),
            "maximum" => std::slice::from_ref(&s.max),
            "minimum" => std::slice::from_ref(&s.min),
            _ => &last_or_count,
        };
        candidates
            .iter()
            .any(|stat| (round(*stat, decimals) - value).abs() < 1e-9)
    })
}

/// `numbers`, each with the byte offset where it starts.
fn numbers_at(text: &str) -> Vec<(f64, usize, usize)> {
    let mut out = Vec::new();
    let (offsets, chars): (Vec<usize>, Vec<char>) = text.char_indices().unzip();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            || (chars[i] == '-'
                && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit())
                && (i == 0 || !chars[i - 1].is_alphanumeric()));
        // A digit inside a word (`cpu2`, `x86_64`) is a name, not a number.
        if !starts || (i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')) {
            i += 1;
            continue;
        }
        let begin = i;
        i += 1;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        let mut decimals = 0;
        if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
                decimals += 1;
            }
        }
        let text: String = chars[begin..i].iter().collect();
        if let Ok(value) = text.parse::<f64>() {
            out.push((value, decimals, offsets[begin]));
        }
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
    }
    out
}

fn round(value: f64, decimals: usize) -> f64 {
    let scale = 10f64.powi(decimals.min(6) as i32);
    (value * scale).round() / scale
}

/// Whether `value`, written with `decimals` digits, is one of the statistics rounded so.
fn is_a_statistic(value: f64, decimals: usize, stats: &[ColumnStats]) -> bool {
    stats.iter().any(|s| {
        [s.min, s.mean, s.max, s.last, s.count as f64]
            .into_iter()
            .any(|stat| (round(stat, decimals) - value).abs() < 1e-9)
    })
}

/// Repeats cut, and refused when it is not text: empty, undecodable bytes (U+FFFD, what a
/// model emits for broken UTF-8) or control characters.
fn readable(text: &str) -> Result<String, String> {
    let cleaned = cut_repetition(text.trim());
    if cleaned.is_empty() {
        return Err("empty".into());
    }
    if cleaned.chars().any(|c| c == '\u{FFFD}' || c.is_control()) {
        return Err("not text (undecodable bytes or control characters)".into());
    }
    if !cleaned.chars().any(char::is_alphabetic) {
        return Err("no words".into());
    }
    Ok(cleaned)
}

/// The model's text, cleaned, or why it cannot be written.
pub fn check(text: &str, stats: &[ColumnStats]) -> Result<String, String> {
    let cleaned = readable(text)?;
    for (value, decimals, at) in numbers_at(&cleaned) {
        if !is_a_statistic(value, decimals, stats) {
            return Err(format!("number {value} not in window"));
        }
        if let Some(name) = named_statistic(&cleaned[..at])
            && !is_the_statistic(name, value, decimals, stats)
        {
            return Err(format!("number {value} called the {name}, which it is not"));
        }
    }
    for (claimed, word) in claimed_trends(&cleaned) {
        if !stats.iter().any(|s| s.trend == claimed) {
            let actual: Vec<&str> = stats.iter().map(|s| s.trend).collect();
            return Err(format!(
                "trend word '{word}' but the window is {}",
                actual.join(", ")
            ));
        }
    }
    Ok(cleaned)
}

/// Words in a row a text may share with what the model was asked; more is a copy.
pub const COPIED_WORDS: usize = 8;

/// The text, or why it only repeats what the model was asked (a run of more than
/// `COPIED_WORDS` words of it, case and punctuation aside): a pretrained model continues
/// its prompt, and a copy of the prompt says nothing about the window.
pub fn not_copied(text: &str, asked: &str) -> Result<String, String> {
    let words = |t: &str| -> Vec<String> {
        t.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let (said, asked_words) = (words(text), words(asked));
    let run = COPIED_WORDS + 1;
    if said.len() >= run {
        let asked_runs: std::collections::HashSet<&[String]> = asked_words.windows(run).collect();
        if said.windows(run).any(|w| asked_runs.contains(w)) {
            return Err("it repeats what it was asked".into());
        }
    }
    Ok(text.to_owned())
}

/// The text, or why it is only one of the rows it read, copied (three words or more, case
/// and punctuation aside): a copied row says nothing the row did not.
pub fn not_a_row(text: &str, rows: &[String]) -> Result<String, String> {
    let words = |t: &str| -> String {
        t.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let said = words(text);
    if said.split(' ').count() >= 3
        && let Some(n) = rows
            .iter()
            .position(|row| format!(" {} ", words(row)).contains(&format!(" {said} ")))
    {
        return Err(format!("it copies row {} of what it read", n + 1));
    }
    Ok(text.to_owned())
}

/// The main model's reading of rows it was shown: cleaned of repeats, and every number in it
/// must be one written in those rows (after rounding to the digits the text gives).
pub fn check_against(text: &str, source: &str) -> Result<String, String> {
    let cleaned = readable(text)?;
    let known: Vec<f64> = numbers(source).into_iter().map(|(v, _)| v).collect();
    for (value, decimals) in numbers(&cleaned) {
        if !known
            .iter()
            .any(|k| (round(*k, decimals) - value).abs() < 1e-9)
        {
            return Err(format!("number {value} not in the rows read"));
        }
    }
    Ok(cleaned)
}

/// Words that claim a kind of problem, by the incident kinds they may be said of.
const KIND_WORDS: &[(&[&str], &[&str])] = &[
    (
        &[
            "out of memory",
            "oom",
            "memory limit",
            "ran out of memory",
            "memory_max",
        ],
        &["oom_killed"],
    ),
    (
        &[
            "hung",
            "hang",
            "hangs",
            "hanging",
            "unresponsive",
            "froze",
            "frozen",
            "deadlock",
            "stuck",
        ],
        &["unhealthy"],
    ),
    (
        &["crashed", "crash", "crashes", "crashing", "keeps dying"],
        &["crash_loop", "failed", "oom_killed"],
    ),
    (
        &["dependency", "depends on"],
        &["dependency_halted", "failed"],
    ),
];

/// A model's diagnosis of an incident, cleaned, or why it cannot stand: every number in it
/// must be one written in the evidence, every identifier (a word with `_`) and signal name
/// must appear there, a word that claims a kind of problem must match the incident's kind,
/// and it may not repeat the question it was asked.
pub fn check_diagnosis(
    text: &str,
    evidence: &str,
    kind: &str,
    asked: &str,
) -> Result<String, String> {
    let cleaned = check_against(text, evidence)
        .map_err(|reason| reason.replace("the rows read", "the evidence"))?;
    for word in cleaned.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'))
    {
        let word = word.trim_matches(|c: char| c == '.' || c == '-');
        let identifier = word.contains('_') && word.chars().any(char::is_alphabetic);
        let signal = word.len() > 3
            && word.starts_with("SIG")
            && word[3..].chars().all(|c| c.is_ascii_uppercase());
        if (identifier || signal) && !evidence.contains(word) {
            return Err(format!("'{word}' is not in the evidence"));
        }
    }
    let lower = cleaned.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    for (claims, kinds) in KIND_WORDS {
        let said = claims.iter().find(|claim| {
            if claim.contains(' ') {
                lower.contains(*claim)
            } else {
                words.contains(claim)
            }
        });
        if let Some(said) = said
            && !kinds.contains(&kind)
        {
            return Err(format!("it says '{said}' of a {kind} incident"));
        }
    }
    not_copied(&cleaned, asked)
}

/// A plain sentence from the statistics alone (it passes `check` by construction).
pub fn plain_reading(stats: &[ColumnStats]) -> String {
    stats
        .iter()
        .map(|s| {
            format!(
                "{} {} over {} samples: mean {:.2}, min {:.2}, max {:.2}, last {:.2}.",
                s.column, s.trend, s.count, s.mean, s.min, s.max, s.last
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values: &[f64]) -> Vec<ColumnStats> {
        let window = values
            .iter()
            .enumerate()
            .map(|(i, v)| crate::window::MetricRow {
                id: i as i64,
                values: vec![("cpu_usage".into(), *v)],
            })
            .collect();
        crate::window::window_stats(&window)
    }

    #[test]
    fn a_foreign_number_or_a_wrong_trend_is_rejected_by_name() {
        let rising = stats(&[20.0, 40.0, 60.5]);
        assert_eq!(
            check("CPU usage rose to 60.5% from 20, averaging 40.17.", &rising),
            Ok("CPU usage rose to 60.5% from 20, averaging 40.17.".into())
        );
        assert_eq!(
            check("CPU usage peaked at 93.1%.", &rising),
            Err("number 93.1 not in window".into())
        );
        assert_eq!(
            check("CPU usage is falling.", &rising),
            Err("trend word 'falling' but the window is rising".into())
        );
        assert_eq!(
            check("Usage is stable around 40.", &rising).unwrap_err(),
            "trend word 'stable' but the window is rising"
        );
        // 3 is the count; 61 is 60.5 written without decimals; 60 is nothing.
        assert!(check("3 samples, last 61.", &rising).is_ok());
        assert!(check("3 samples, last 60.5.", &rising).is_ok());
        assert_eq!(
            check("last 60", &rising),
            Err("number 60 not in window".into())
        );
        // Names with digits are not numbers.
        assert!(check("cpu0 on x86_64 is rising", &rising).is_ok());
    }

    #[test]
    fn a_statistic_named_as_another_is_rejected() {
        let rising = stats(&[20.0, 40.0, 60.5]);
        // SmolLM2's "a mean of 20.10" where 20.10 was the maximum.
        assert_eq!(
            check("The mean of 60.50 is high.", &rising),
            Err("number 60.5 called the mean, which it is not".into())
        );
        assert_eq!(
            check("It peaked at 20.", &rising),
            Err("number 20 called the maximum, which it is not".into())
        );
        assert_eq!(
            check("min=60.5 today", &rising),
            Err("number 60.5 called the minimum, which it is not".into())
        );
        let right = "A mean of 40.17, a maximum of 60.5 and a minimum of 20; currently 60.5.";
        assert_eq!(check(right, &rising), Ok(right.into()));
        assert!(check("The last 3 samples: the last at 60.5.", &rising).is_ok());
        assert!(check("It is now at 40.17.", &rising).is_err());
        assert_eq!(
            check(
                "The last value being 40.17 and the mean being 40.17.",
                &rising
            ),
            Err("number 40.17 called the last, which it is not".into())
        );
        // Names further away, or joined by other words, constrain nothing.
        assert!(check("The mean and maximum were 60.5 and 40.17.", &rising).is_ok());
        assert!(check("From the lowest reading it rose to 60.5.", &rising).is_ok());
    }

    #[test]
    fn repeated_phrases_are_cut_and_a_loop_of_numbers_is_caught() {
        assert_eq!(
            cut_repetition("CPU is busy. CPU is busy. CPU is busy."),
            "CPU is busy."
        );
        assert_eq!(cut_repetition("all quiet here"), "all quiet here");
        let flat = stats(&[100.0, 100.0, 100.0]);
        // The original model's output: `- 100.0: 100.0 - 99.9: 99.9 - …`
        assert_eq!(
            check("- 100.0: 100.0 - 99.9: 99.9 - 99.8", &flat),
            Err("no words".into())
        );
        assert_eq!(
            check("CPU at 100.0, then 99.9, then 99.8", &flat),
            Err("number 99.9 not in window".into())
        );
    }

    #[test]
    fn the_main_models_reading_may_only_quote_numbers_of_the_rows_it_read() {
        let rows = "cpu_usage_log window: cpu_usage: count=10 min=12.00 mean=41.37 max=88.20\nALERT: CPU usage 95.0 > 90";
        assert!(check_against("CPU peaked at 95 and averaged 41.4.", rows).is_ok());
        assert_eq!(
            check_against("CPU peaked at 97.", rows),
            Err("number 97 not in the rows read".into())
        );
        assert_eq!(check_against("ok ok ok ok ok ok", rows), Ok("ok".into()));
    }

    #[test]
    fn bytes_that_are_not_text_are_rejected() {
        let s = stats(&[1.0, 2.0]);
        assert!(
            check("\u{FFFD}\u{FFFD}\u{FFFD}", &s)
                .unwrap_err()
                .starts_with("not text")
        );
        assert!(
            check("ok\u{1b}[2J", &s)
                .unwrap_err()
                .starts_with("not text")
        );
        assert_eq!(check("... !!", &s), Err("no words".into()));
        assert_eq!(check("   ", &s), Err("empty".into()));
    }

    #[test]
    fn the_plain_reading_passes_the_checker() {
        for values in [&[1.0, 2.0, 3.0][..], &[5.0, 5.0], &[90.0, 10.0, 50.25]] {
            let s = stats(values);
            let text = plain_reading(&s);
            assert_eq!(check(&text, &s), Ok(text.clone()), "{text}");
        }
    }

    #[test]
    fn a_text_that_repeats_its_prompt_is_refused_and_a_short_quote_is_not() {
        let asked = "You watch one metric of a computer. In one sentence, say what the numbers show. Metric table cpu_usage_log.";
        assert_eq!(
            not_copied(
                "You watch one metric of a computer. In one sentence, say what the",
                asked
            ),
            Err("it repeats what it was asked".into())
        );
        let fine = "The numbers show the metric of a computer rising.";
        assert_eq!(not_copied(fine, asked), Ok(fine.into()));
    }
}
