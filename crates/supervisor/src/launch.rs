//! What a component runs: `base_script_name` resolved to a program, and `launch_args_json`
//! turned into argv exactly as the original did (each key, then its value as Python's `str()`
//! would print it, in the order written, then `--run_type <run_type_on_boot>`).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use n0m1_core::home::{ENV_NATIVE, Home};

/// Components shipped as binaries beside the managers; `<name>` or `<name>.py` selects one.
pub const BUNDLED_COMPONENTS: &[&str] = &[
    "temp_main_daemon",
    "cpu_usage_daemon",
    "mem_usage_daemon",
    "llm_processor",
    "nano_instance",
    "llm_config_daemon",
    "llm_command_daemon",
    "n0m1_alerts",
    "n0m1_web",
    "n0m1_model_service",
];

/// The bundled components that run a model: config.json's `models.memory_max` is their
/// default memory limit.
pub const MODEL_COMPONENTS: &[&str] = &["llm_processor", "nano_instance", "n0m1_model_service"];

/// Whether a row's script is one of `MODEL_COMPONENTS` (`.py` spelling included).
pub fn runs_a_model(base_script_name: &str) -> bool {
    let name = base_script_name
        .strip_suffix(".py")
        .unwrap_or(base_script_name);
    MODEL_COMPONENTS.contains(&name)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "script {name:?} is not a plain file name (no '/', no '..', not hidden): put it in {components}"
    )]
    UnsafeScriptName { name: String, components: PathBuf },
    #[error(
        "script {name:?} is neither a bundled component ({bundled}) nor a file in {components}"
    )]
    UnknownScript {
        name: String,
        bundled: String,
        components: PathBuf,
    },
    #[error(
        "{name} is a bundled component but its binary {path} is missing: build every binary with `cargo build --release --workspace` (the model components are in the n0m1-models package)"
    )]
    BundledBinaryMissing { name: String, path: PathBuf },
    #[error(
        "script {path} resolves outside {components}: symlinks out of the components folder are refused"
    )]
    OutsideComponents { path: PathBuf, components: PathBuf },
    #[error("script {path} is {kind}, not a regular file: put an executable file there")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("script {path} is not executable: chmod +x it")]
    NotExecutable { path: PathBuf },
    #[error(
        "launch_args_json is not valid JSON ({reason}): expected an object like {{\"--flag\": \"value\"}}"
    )]
    BadJson { reason: String },
    #[error("launch_args_json is {kind}, not an object: expected {{\"--flag\": \"value\"}}")]
    NotAnObject { kind: &'static str },
    #[error(
        "launch_args_json value of {key:?} is {kind}: only strings, numbers, booleans and null are allowed"
    )]
    NotAScalar { key: String, kind: &'static str },
    #[error(
        "launch_args_json {what} {key:?} contains a NUL byte, which no program argument can hold: remove it"
    )]
    NulByte { what: &'static str, key: String },
    #[error("launch_args_json is {size} bytes, more than the {limit} allowed")]
    TooLarge { size: usize, limit: usize },
}

/// A resolved program and the arguments that come before the component's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub path: PathBuf,
    pub leading_args: Vec<OsString>,
}

impl Program {
    /// Shown in the lifecycle log's `script_path`.
    pub fn describe(&self) -> String {
        let mut text = self.path.display().to_string();
        for arg in &self.leading_args {
            text.push(' ');
            text.push_str(&arg.to_string_lossy());
        }
        text
    }
}

/// Resolves `base_script_name` values for one home and one folder of bundled binaries.
#[derive(Debug, Clone)]
pub struct ScriptResolver {
    pub bin_dir: PathBuf,
    pub components_dir: PathBuf,
    pub venv_python: PathBuf,
    pub native: bool,
}

impl ScriptResolver {
    pub fn new(home: &Home, bin_dir: PathBuf) -> ScriptResolver {
        ScriptResolver {
            bin_dir,
            components_dir: home.components_dir(),
            venv_python: home.root().join("venv/bin/python"),
            native: std::env::var_os(ENV_NATIVE).is_some_and(|v| !v.is_empty()),
        }
    }

    pub fn resolve(&self, name: &str) -> Result<Program, LaunchError> {
        let unsafe_name = name.is_empty()
            || name.contains('/')
            || name.contains('\0')
            || name.starts_with('.')
            || name.len() > 255;
        if unsafe_name {
            return Err(LaunchError::UnsafeScriptName {
                name: name.to_owned(),
                components: self.components_dir.clone(),
            });
        }
        let stem = name.strip_suffix(".py").unwrap_or(name);
        if BUNDLED_COMPONENTS.contains(&stem) {
            let bundled = self.bin_dir.join(stem);
            if bundled.is_file() {
                return Ok(Program {
                    path: bundled,
                    leading_args: Vec::new(),
                });
            }
        }
        let script = self.components_dir.join(name);
        if BUNDLED_COMPONENTS.contains(&stem) && !script.exists() {
            return Err(LaunchError::BundledBinaryMissing {
                name: stem.to_owned(),
                path: self.bin_dir.join(stem),
            });
        }
        if !script.exists() {
            return Err(LaunchError::UnknownScript {
                name: name.to_owned(),
                bundled: BUNDLED_COMPONENTS.join(", "),
                components: self.components_dir.clone(),
            });
        }
        let outside = || LaunchError::OutsideComponents {
            path: script.clone(),
            components: self.components_dir.clone(),
        };
        let real = script.canonicalize().map_err(|_| outside())?;
        let real_dir = self.components_dir.canonicalize().map_err(|_| outside())?;
        if !real.starts_with(&real_dir) {
            return Err(outside());
        }
        if let Some(kind) = not_a_file(&real) {
            return Err(LaunchError::NotAFile { path: script, kind });
        }
        if name.ends_with(".py") {
            let python = if !self.native && self.venv_python.is_file() {
                self.venv_python.clone()
            } else {
                PathBuf::from("python3")
            };
            return Ok(Program {
                path: python,
                leading_args: vec![real.into_os_string()],
            });
        }
        if !is_executable(&real) {
            return Err(LaunchError::NotExecutable { path: script });
        }
        Ok(Program {
            path: real,
            leading_args: Vec::new(),
        })
    }
}

/// What `path` is when it is not a regular file.
fn not_a_file(path: &Path) -> Option<&'static str> {
    n0m1_core::home::not_a_regular_file(&path.metadata().ok()?.file_type())
}

/// Python's `str()` of a JSON number, from its text: an integer keeps every digit (Python's
/// ints are unbounded, while serde_json turns one beyond 64 bits into a float); a float is
/// printed as serde_json prints an f64, which matches `repr(float)` for ordinary values.
fn python_number(raw: &str, number: &serde_json::Number) -> String {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if digits.bytes().all(|b| b == b'0') {
            return "0".to_owned();
        }
        return raw.to_owned();
    }
    number.to_string()
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// The largest `launch_args_json` accepted; anything bigger is an operator's mistake.
pub const MAX_LAUNCH_ARGS_BYTES: usize = 64 * 1024;

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Builds the component's argv (after the program) from `launch_args_json` and its run type.
/// An empty or NULL `launch_args_json` means no arguments, as in the original.
pub fn launch_args(
    launch_args_json: Option<&str>,
    run_type: &str,
) -> Result<Vec<String>, LaunchError> {
    let text = launch_args_json
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or("{}");
    if text.len() > MAX_LAUNCH_ARGS_BYTES {
        return Err(LaunchError::TooLarge {
            size: text.len(),
            limit: MAX_LAUNCH_ARGS_BYTES,
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| LaunchError::BadJson {
            reason: e.to_string(),
        })?;
    let serde_json::Value::Object(map) = value else {
        return Err(LaunchError::NotAnObject {
            kind: json_kind(&value),
        });
    };
    // The same text again, keeping each value's source text (a repeated key: the last one
    // wins, as in `map` and in Python's json.loads).
    let raw: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(text).map_err(|e| LaunchError::BadJson {
            reason: e.to_string(),
        })?;
    let mut argv = Vec::with_capacity(map.len() * 2 + 2);
    let mut has_run_type = false;
    for (key, value) in map {
        // Python's str() of each JSON scalar, so rows written for the original mean the same.
        let text = match &value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => match raw.get(&key) {
                Some(raw) => python_number(raw.get(), n),
                None => n.to_string(),
            },
            serde_json::Value::Bool(true) => "True".to_owned(),
            serde_json::Value::Bool(false) => "False".to_owned(),
            serde_json::Value::Null => "None".to_owned(),
            other => {
                return Err(LaunchError::NotAScalar {
                    key,
                    kind: json_kind(other),
                });
            }
        };
        if key.contains('\0') {
            return Err(LaunchError::NulByte { what: "key", key });
        }
        if text.contains('\0') {
            return Err(LaunchError::NulByte {
                what: "value of",
                key,
            });
        }
        has_run_type |= key == "--run_type";
        argv.push(key);
        argv.push(text);
    }
    // A row that already passes --run_type keeps its own; appending a second one would make
    // the component reject its arguments.
    if !has_run_type {
        argv.push("--run_type".to_owned());
        argv.push(run_type.to_owned());
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: Option<&str>, expected: &[&str]) {
        assert_eq!(launch_args(json, "PRIMARY_RUN").unwrap(), expected);
    }

    #[test]
    fn args_follow_the_written_order_then_run_type() {
        check(
            Some(r#"{"--model": "default", "--threads": "4"}"#),
            &[
                "--model",
                "default",
                "--threads",
                "4",
                "--run_type",
                "PRIMARY_RUN",
            ],
        );
        check(
            Some(r#"{"--z": 1, "--a": 2.5, "--b": true, "--c": null}"#),
            &[
                "--z",
                "1",
                "--a",
                "2.5",
                "--b",
                "True",
                "--c",
                "None",
                "--run_type",
                "PRIMARY_RUN",
            ],
        );
        // Python's str(): big ints keep their digits, -0 is 0, floats as repr prints them.
        check(
            Some(
                r#"{"--big": 123456789012345678901234, "--neg": -98765432109876543210, "--zero": -0, "--f": 1e5, "--g": -0.5}"#,
            ),
            &[
                "--big",
                "123456789012345678901234",
                "--neg",
                "-98765432109876543210",
                "--zero",
                "0",
                "--f",
                "100000.0",
                "--g",
                "-0.5",
                "--run_type",
                "PRIMARY_RUN",
            ],
        );
        check(None, &["--run_type", "PRIMARY_RUN"]);
        check(Some(""), &["--run_type", "PRIMARY_RUN"]);
        check(Some(r#"{"--run_type": "X"}"#), &["--run_type", "X"]);
    }

    #[test]
    fn bad_args_are_errors_not_panics() {
        assert!(matches!(
            launch_args(Some("{"), "R"),
            Err(LaunchError::BadJson { .. })
        ));
        assert!(matches!(
            launch_args(Some("[1]"), "R"),
            Err(LaunchError::NotAnObject { .. })
        ));
        assert!(matches!(
            launch_args(Some(r#"{"a": [1]}"#), "R"),
            Err(LaunchError::NotAScalar { .. })
        ));
        assert!(matches!(
            launch_args(Some(r#"{"--a": "x\u0000y"}"#), "R"),
            Err(LaunchError::NulByte { .. })
        ));
        assert!(matches!(
            launch_args(Some(r#"{"--a\u0000": 1}"#), "R"),
            Err(LaunchError::NulByte { .. })
        ));
        let huge = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_LAUNCH_ARGS_BYTES));
        assert!(matches!(
            launch_args(Some(&huge), "R"),
            Err(LaunchError::TooLarge { .. })
        ));
    }

    fn resolver(tmp: &Path) -> ScriptResolver {
        let home = Home::new(tmp.join("home"));
        home.ensure().unwrap();
        let bin_dir = tmp.join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::fs::write(bin_dir.join("cpu_usage_daemon"), "").unwrap();
        ScriptResolver::new(&home, bin_dir)
    }

    #[test]
    fn resolves_bundled_then_components() {
        let tmp = tempfile::tempdir().unwrap();
        let r = resolver(tmp.path());
        assert_eq!(
            r.resolve("cpu_usage_daemon.py").unwrap().path,
            tmp.path().join("bin/cpu_usage_daemon")
        );
        assert_eq!(
            r.resolve("cpu_usage_daemon").unwrap().path,
            tmp.path().join("bin/cpu_usage_daemon")
        );

        let script = r.components_dir.join("sleeper.sh");
        std::fs::write(&script, "#!/bin/sh\nsleep 100\n").unwrap();
        assert!(matches!(
            r.resolve("sleeper.sh"),
            Err(LaunchError::NotExecutable { .. })
        ));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            r.resolve("sleeper.sh").unwrap().path,
            script.canonicalize().unwrap()
        );

        std::fs::write(r.components_dir.join("tool.py"), "print(1)\n").unwrap();
        let python = r.resolve("tool.py").unwrap();
        assert_eq!(python.path, PathBuf::from("python3"));
        assert_eq!(python.leading_args.len(), 1);
    }

    #[test]
    fn refuses_paths_unknown_names_and_escaping_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let r = resolver(tmp.path());
        for name in ["/bin/sh", "../../bin/sh", "a/b", ".hidden", "", "x\0y"] {
            assert!(
                matches!(r.resolve(name), Err(LaunchError::UnsafeScriptName { .. })),
                "{name:?}"
            );
        }
        assert!(matches!(
            r.resolve("nope.py"),
            Err(LaunchError::UnknownScript { .. })
        ));
        // A bundled name whose binary was not built says which binary and how to build it.
        let missing = r.resolve("nano_instance.py").unwrap_err();
        assert!(matches!(missing, LaunchError::BundledBinaryMissing { .. }));
        let message = missing.to_string();
        assert!(message.contains("bin/nano_instance"), "{message}");
        assert!(
            message.contains("cargo build --release --workspace"),
            "{message}"
        );
        assert!(matches!(
            r.resolve("sh; rm -rf /"),
            Err(LaunchError::UnsafeScriptName { .. })
        ));
        assert!(matches!(
            r.resolve("x; rm -rf ~"),
            Err(LaunchError::UnknownScript { .. })
        ));
        std::os::unix::fs::symlink("/bin/sh", r.components_dir.join("escape")).unwrap();
        assert!(matches!(
            r.resolve("escape"),
            Err(LaunchError::OutsideComponents { .. })
        ));
        // Inside the folder but not a file: said as such, not as an escape.
        std::fs::create_dir(r.components_dir.join("adir")).unwrap();
        nix::unistd::mkfifo(
            &r.components_dir.join("afifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o700),
        )
        .unwrap();
        for (name, kind) in [("adir", "a directory"), ("afifo", "a FIFO")] {
            match r.resolve(name) {
                Err(LaunchError::NotAFile { kind: found, .. }) => assert_eq!(found, kind),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_args_or_an_error(text in "\\PC{0,200}") {
            let _ = launch_args(Some(&text), "PRIMARY_RUN");
        }

        #[test]
        fn string_objects_become_key_value_pairs_in_order(
            pairs in proptest::collection::vec(("--[a-z_]{1,12}", "[ -~]{0,20}"), 0..8)
        ) {
            let mut seen = std::collections::HashSet::new();
            let pairs: Vec<(String, String)> =
                pairs.into_iter().filter(|(k, _)| k != "--run_type" && seen.insert(k.clone())).collect();
            let mut object = serde_json::Map::new();
            for (k, v) in &pairs {
                object.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
            let json = serde_json::Value::Object(object).to_string();
            let mut expected: Vec<String> = pairs.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect();
            expected.extend(["--run_type".to_owned(), "R".to_owned()]);
            proptest::prop_assert_eq!(launch_args(Some(&json), "R").unwrap(), expected);
        }
    }
}
