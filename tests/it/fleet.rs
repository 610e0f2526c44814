//! Many hosts from one place, on this machine's loopback addresses (127.0.0.2 and up): five
//! homes whose n0m1_web serves TLS with a self-signed certificate and `read_requires_token`,
//! driven through `n0m1ctl --fleet`; a real Prometheus scraping them over TLS through the
//! file_sd file `prometheus-targets` writes, and a real Alertmanager receiving the deploy
//! rules' alert with the failing host's label.

#![allow(clippy::disallowed_methods)] // tests start the binaries under test directly

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use predicates::str::contains;

use crate::support::{TestEnv, bin, free_port, system_tool, wait_until};

const T: Duration = Duration::from_secs(30);

/// A home serving TLS on `ip`, with only n0m1_web and one sleeper (`app`) under its
/// daemon_manager.
struct Host {
    name: String,
    env: TestEnv,
    url: String,
    addr: String,
}

fn tls_host(index: usize, token: Option<&str>) -> Host {
    let mut env = TestEnv::new();
    crate::web::write_config(
        &env,
        serde_json::json!({ "tls": "self-signed", "read_requires_token": true }),
    );
    if let Some(token) = token {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(env.home.web_token(), format!("{token}\n")).unwrap();
        std::fs::set_permissions(env.home.web_token(), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let addr = format!("127.0.0.{}:{}", index + 2, free_port());
    env.sql("UPDATE autorun_components SET desired_state = 'inactive'");
    env.db()
        .execute(
            "UPDATE autorun_components SET desired_state = 'active', launch_args_json = ?1 WHERE component_id = 'n0m1_web'",
            [format!(r#"{{"--listen": "{addr}"}}"#)],
        )
        .unwrap();
    env.add_component("app", "sleeper.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    Host {
        name: format!("edge{}", index + 1),
        env,
        url: format!("https://{addr}"),
        addr,
    }
}

fn wait_ready(host: &Host) {
    wait_until(T, &format!("{} serving TLS", host.name), || {
        host.env.status_json("n0m1_web")["ready"] == true
    });
}

fn fingerprint(host: &Host) -> String {
    let out = host.env.ctl(&["web", "fingerprint"]).success();
    String::from_utf8_lossy(&out.get_output().stdout)
        .trim()
        .to_owned()
}

/// The fleet file for `hosts`, pinning each one's certificate.
fn fleet_file(dir: &std::path::Path, hosts: &[Host], pins: &[String]) -> std::path::PathBuf {
    let mut text = String::from("# the test's fleet\n");
    for (host, pin) in hosts.iter().zip(pins) {
        text.push_str(&format!(
            "\n[[hosts]]\nname = \"{}\"\nurl = \"{}\"\ntoken_file = \"{}\"\nfingerprint = \"{pin}\"\n",
            host.name,
            host.url,
            host.env.home.web_token().display()
        ));
    }
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn fleet(file: &std::path::Path, args: &[&str]) -> assert_cmd::assert::Assert {
    assert_cmd::Command::new(bin("n0m1ctl"))
        .arg("--fleet")
        .arg(file)
        .args(args)
        .timeout(T)
        .assert()
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

#[test]
fn a_fleet_over_tls_answers_together_names_what_is_down_and_acts_on_one_host() {
    let hosts: Vec<Host> = (0..5).map(|i| tls_host(i, None)).collect();
    hosts.iter().for_each(wait_ready);
    let pins: Vec<String> = hosts.iter().map(fingerprint).collect();
    for pin in &pins {
        assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = fleet_file(dir.path(), &hosts, &pins);

    let shown = stdout(&fleet(&file, &["status"]).success());
    for host in &hosts {
        let line = shown
            .lines()
            .find(|l| l.starts_with(&format!("{} ", host.name)) && l.contains(" app "))
            .unwrap_or_else(|| panic!("{}'s app in\n{shown}", host.name));
        assert!(line.contains("running"), "{line}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&fleet(&file, &["status", "--json"]).success())).unwrap();
    assert_eq!(json["hosts"].as_array().unwrap().len(), 5);
    assert_eq!(json["hosts"][2]["host"], "edge3");
    assert!(json["hosts"][2]["answer"]["components"].is_array());
    fleet(&file, &["metrics"])
        .success()
        .stdout(contains("edge5:"));

    // restart app@edge2: that host only.
    let before: Vec<i64> = hosts
        .iter()
        .map(|h| h.env.status_json("app")["pid"].as_i64().unwrap())
        .collect();
    fleet(&file, &["restart", "app@edge2"])
        .success()
        .stdout(contains("edge2: "));
    wait_until(T, "app restarted on edge2", || {
        hosts[1].env.status_json("app")["pid"]
            .as_i64()
            .is_some_and(|pid| pid != before[1])
    });
    for (i, host) in hosts.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert_eq!(
            host.env.status_json("app")["pid"],
            before[i],
            "{}",
            host.name
        );
    }
    fleet(&file, &["disable", "app", "--host", "nowhere"])
        .failure()
        .stderr(contains("no host \"nowhere\" in the fleet"));

    // The stack as a file, through the API: edge1's exported over --remote and planned on
    // every host (each differs in its own n0m1_web address).
    let exported = hosts[0]
        .env
        .ctl(&[
            "--remote",
            &hosts[0].url,
            "--fingerprint",
            &pins[0],
            "export",
        ])
        .success();
    let stack = dir.path().join("edge1.toml");
    std::fs::write(&stack, &exported.get_output().stdout).unwrap();
    let local = hosts[0].env.ctl(&["export"]).success();
    assert_eq!(exported.get_output().stdout, local.get_output().stdout);
    let planned = stdout(&fleet(&file, &["plan", stack.to_str().unwrap()]).success());
    assert!(planned.contains("edge1 no changes"), "{planned}");
    assert!(
        planned.contains(&format!(
            "edge4 ~ components.n0m1_web: launch_args_json \"{{\\\"--listen\\\": \\\"{}\\\"}}\" -> ",
            hosts[3].addr
        )),
        "{planned}"
    );
    // edge1's file made edge4's (its own address) with app disabled, applied to edge4 alone
    // over --remote: one change there, and nothing left to plan.
    let edge4 = dir.path().join("edge4.toml");
    let text = std::fs::read_to_string(&stack)
        .unwrap()
        .replace(&hosts[0].addr, &hosts[3].addr)
        .replace(
            "component_id = \"app\"\nbase_script_name = \"sleeper.sh\"\nmanager_affinity = \"daemon_manager\"\ndesired_state = \"active\"",
            "component_id = \"app\"\nbase_script_name = \"sleeper.sh\"\nmanager_affinity = \"daemon_manager\"\ndesired_state = \"inactive\"",
        );
    std::fs::write(&edge4, text).unwrap();
    hosts[3]
        .env
        .ctl(&[
            "--remote",
            &hosts[3].url,
            "--fingerprint",
            &pins[3],
            "apply",
            edge4.to_str().unwrap(),
        ])
        .success()
        .stdout(contains("applied: 0 added, 1 changed, 0 removed"));
    let replanned = stdout(&fleet(&file, &["plan", edge4.to_str().unwrap()]).success());
    assert!(replanned.contains("edge4 no changes"), "{replanned}");
    wait_until(T, "app stopped on edge4", || {
        hosts[3].env.status_json("app")["actual"] == "stopped"
    });
    assert_eq!(hosts[2].env.status_json("app")["actual"], "running");
    // A file with a bad row is refused by every host, which says why; nothing changes.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[components]]\ncomponent_id = \"x\"\n").unwrap();
    let refused = fleet(&file, &["apply", bad.to_str().unwrap()]).failure();
    let said = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(
        said.contains("edge2 (https://") && said.contains("base_script_name is required"),
        "{said}"
    );

    // A wrong pin is refused naming both fingerprints; the others still answer.
    let mut wrong = pins.clone();
    wrong[3] = format!("sha256:{}", "0".repeat(64));
    let bad_file = fleet_file(dir.path(), &hosts, &wrong);
    let refused = fleet(&bad_file, &["status"]).failure();
    let said = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(
        said.contains("edge4") && said.contains(&pins[3]) && said.contains(&wrong[3]),
        "{said}"
    );
    assert!(stdout(&refused).contains("edge5 "), "the others answered");

    // One home stopped and one that accepts and never answers: both named, within the
    // timeout and a second, the rest listed.
    let silent = std::net::TcpListener::bind("127.0.0.7:0").unwrap();
    let mut pins = pins;
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "\n[[hosts]]\nname = \"blackhole\"\nurl = \"https://{}\"\nfingerprint = \"{}\"\n",
        silent.local_addr().unwrap(),
        pins[0]
    ));
    pins.push(pins[0].clone());
    std::fs::write(&file, text).unwrap();
    let stopped = &hosts[2];
    stopped.env.ctl(&["stop"]).success();
    let started = Instant::now();
    let answer = fleet(&file, &["--timeout", "1", "status"]).failure();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let said = String::from_utf8_lossy(&answer.get_output().stderr).into_owned();
    assert!(
        said.contains("edge3 (https://") && said.contains("cannot reach n0m1_web"),
        "{said}"
    );
    assert!(said.contains("blackhole (https://"), "{said}");
    let listed = stdout(&answer);
    assert!(
        listed.contains("edge1 ") && listed.contains("edge5 "),
        "{listed}"
    );
    assert!(!listed.contains("edge3 "), "{listed}");
    drop(silent);
}

#[test]
fn plain_http_off_loopback_is_flagged_by_status() {
    let env = TestEnv::new();
    crate::web::write_config(
        &env,
        serde_json::json!({ "insecure_http": true, "read_requires_token": true }),
    );
    env.db()
        .execute(
            "UPDATE autorun_components SET launch_args_json = ?1 WHERE component_id = 'n0m1_web'",
            [format!(r#"{{"--listen": "0.0.0.0:{}"}}"#, free_port())],
        )
        .unwrap();
    env.ctl(&["status"])
        .stdout(contains("WARNING: n0m1_web serves plain HTTP on 0.0.0.0:"));
}

/// Prometheus over TLS through the file_sd targets `prometheus-targets` writes, and the deploy
/// rules' N0m1ComponentFailed reaching a real Alertmanager with the host's label.
#[test]
fn prometheus_scrapes_the_fleet_over_tls_and_alertmanager_gets_the_failed_host() {
    let (Some(prometheus), Some(alertmanager)) = (
        system_tool("prometheus", "prometheus"),
        system_tool("prometheus-alertmanager", "prometheus-alertmanager"),
    ) else {
        return;
    };
    // One scrape token for the fleet: each home's web.token is a copy of it.
    let token = "5ca1ab1e".repeat(8);
    let hosts: Vec<Host> = (0..5).map(|i| tls_host(i, Some(&token))).collect();
    hosts.iter().for_each(wait_ready);
    let pins: Vec<String> = hosts.iter().map(fingerprint).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = fleet_file(dir.path(), &hosts, &pins);
    let targets = dir.path().join("targets.json");
    fleet(
        &file,
        &["prometheus-targets", "--output", targets.to_str().unwrap()],
    )
    .success();
    let groups: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&targets).unwrap()).unwrap();
    assert_eq!(groups[1]["labels"]["host"], "edge2");
    assert_eq!(groups[1]["targets"][0], hosts[1].addr);
    // Each self-signed certificate is its own CA: one bundle of them is the scrape's ca_file.
    let bundle: String = hosts
        .iter()
        .map(|h| std::fs::read_to_string(h.env.home.web_cert()).unwrap())
        .collect();
    std::fs::write(dir.path().join("fleet-ca.pem"), bundle).unwrap();
    std::fs::write(dir.path().join("n0m1.token"), &token).unwrap();

    let am_port = free_port();
    let am_listen = format!("127.0.0.1:{am_port}");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("deploy/alertmanager.yml"),
        dir.path().join("alertmanager.yml"),
    )
    .unwrap();
    let am_log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
    let mut am = Command::new(alertmanager)
        .arg(format!(
            "--config.file={}",
            dir.path().join("alertmanager.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("am-data").display()
        ))
        .arg(format!("--web.listen-address={am_listen}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(am_log)
        .spawn()
        .unwrap();
    // The deploy rules as shipped, their `for:` shortened so the test need not wait minutes.
    let rules = std::fs::read_to_string(root.join("deploy/rules/n0m1.yml"))
        .unwrap()
        .replace("for: 1m", "for: 0s")
        .replace("for: 2m", "for: 0s");
    std::fs::write(dir.path().join("n0m1-rules.yml"), rules).unwrap();
    // deploy/prometheus.yml's job, pointed at this test's files.
    let config = std::fs::read_to_string(root.join("deploy/prometheus.yml"))
        .unwrap()
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace(
            "rules/n0m1.yml",
            &dir.path().join("n0m1-rules.yml").display().to_string(),
        )
        .replace("127.0.0.1:9093", &am_listen)
        .replace(
            "/etc/prometheus/n0m1.token",
            &dir.path().join("n0m1.token").display().to_string(),
        )
        .replace(
            "/etc/prometheus/n0m1-ca.pem",
            &dir.path().join("fleet-ca.pem").display().to_string(),
        )
        .replace(
            "/etc/prometheus/n0m1-targets.json",
            &targets.display().to_string(),
        );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let prom_listen = format!("127.0.0.1:{}", free_port());
    let prom_log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut prom = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prom_listen}"))
        .stdout(Stdio::null())
        .stderr(prom_log)
        .spawn()
        .unwrap();
    let logs = || {
        format!(
            "prometheus:\n{}\nalertmanager:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("alertmanager.log")).unwrap_or_default()
        )
    };
    for listen in [&prom_listen, &am_listen] {
        wait_until(T, &format!("{listen} listening"), || {
            std::net::TcpStream::connect(listen).is_ok()
        });
    }
    let get = |addr: &str, path: &str| -> serde_json::Value {
        let answer = crate::web::http(addr, "GET", path, &[], b"");
        if answer.status == 200 {
            answer.json()
        } else {
            serde_json::Value::Null
        }
    };
    let mut up = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        up = get(
            &prom_listen,
            "/api/v1/query?query=n0m1_component_up%7Bcomponent%3D%22app%22%7D",
        );
        if up["data"]["result"]
            .as_array()
            .is_some_and(|r| r.len() == 5)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let series = up["data"]["result"].as_array().cloned().unwrap_or_default();
    if series.len() != 5 {
        let _ = (prom.kill(), am.kill());
        panic!("five hosts' app not scraped over TLS: {up}\n{}", logs());
    }
    let mut named: Vec<String> = series
        .iter()
        .map(|s| s["metric"]["host"].as_str().unwrap_or("").to_owned())
        .collect();
    named.sort();
    assert_eq!(named, ["edge1", "edge2", "edge3", "edge4", "edge5"]);

    // A component made FAILED on edge3 only.
    hosts[2]
        .env
        .add_component("crasher", "crasher.sh", "daemon_manager", "{}");
    let mut alert = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let alerts = get(&am_listen, "/api/v2/alerts");
        if let Some(found) = alerts.as_array().and_then(|all| {
            all.iter()
                .find(|a| a["labels"]["alertname"] == "N0m1ComponentFailed")
                .cloned()
        }) {
            alert = found;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = (prom.kill(), am.kill());
    let _ = (prom.wait(), am.wait());
    assert!(
        !alert.is_null(),
        "no N0m1ComponentFailed in Alertmanager\n{}",
        logs()
    );
    assert_eq!(alert["labels"]["host"], "edge3", "{alert}");
    assert_eq!(alert["labels"]["component"], "crasher", "{alert}");
}
