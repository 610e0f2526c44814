//! The dashboard in a real headless Chromium, driven through chromedriver with fantoccini:
//! it lists the components, disabling one from the page shows it stopped without a reload, a
//! metric graph has drawn its points, and a screenshot of each page lands under target/.

#![allow(clippy::disallowed_methods)] // tests start the binaries under test directly

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::support::{TestEnv, free_port, system_tool, wait_until};
use crate::web::{start_web, write_config};

/// Polls `check` in the page until it returns true, or fails naming `what`.
async fn wait_js(client: &Client, timeout: Duration, what: &str, check: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let value = client.execute(check, vec![]).await.unwrap();
        if value == json!(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the element `css` names. The page redraws its tables as events arrive (a crashing
/// component makes one a second): an element found just before a redraw is stale by the
/// click, so it is found again until a click lands.
async fn click_fresh(client: &Client, css: &str) {
    for _ in 0..100 {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && element.click().await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{css} could not be clicked");
}

fn screenshot_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Pixels of the chart's first series (stroke #2563eb) on its canvas: axes and grid are
/// grey, so any such pixel is a drawn point or line.
const SERIES_PIXELS: &str = r#"
    const box = document.querySelector(arguments[0]);
    const canvas = box && box.querySelector('canvas');
    if (!canvas) return {points: 0, pixels: 0};
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let pixels = 0;
    for (let i = 0; i < data.length; i += 4) {
        if (data[i + 3] > 0 && data[i] < 90 && data[i + 1] > 70 && data[i + 1] < 140 && data[i + 2] > 200) pixels++;
    }
    return {points: Number(box.dataset.points), pixels};
"#;

#[test]
fn the_dashboard_lists_components_disables_one_live_and_draws_a_metric_graph() {
    let Some(chromedriver) = system_tool("chromedriver", "chromium-driver") else {
        return;
    };
    let Some(chromium) = system_tool("chromium", "chromium") else {
        return;
    };
    let mut env = TestEnv::new();
    write_config(&env, json!({}));
    env.add_component("runner", "sleeper.sh", "daemon_manager", "{}");
    // An incident for the panel (a crash loop the real alerter finds: each run lasts a
    // second, so the loop outlives the alerter's start) and a proposal from the real command
    // daemon to approve from the page.
    env.script(
        "crashy.sh",
        "#!/bin/sh\nsleep 1\necho 'disk full' >&2\nexit 4\n",
    );
    env.add_component("crashy", "crashy.sh", "daemon_manager", "{}");
    env.add_component("patient", "sleeper.sh", "daemon_manager", "{}");
    env.sql(
        "UPDATE autorun_components SET desired_state = 'active'
           WHERE component_id IN ('n0m1_alerts', 'llm_command_daemon')",
    );
    env.sql(
        "INSERT INTO cpu_usage_log (timestamp, cpu_usage) VALUES
           (datetime('now', '-50 seconds'), 15.0), (datetime('now', '-40 seconds'), 35.0),
           (datetime('now', '-30 seconds'), 25.0), (datetime('now', '-20 seconds'), 55.0),
           (datetime('now', '-10 seconds'), 45.0);
         INSERT INTO memory_usage_log (timestamp, mem_usage) VALUES
           (datetime('now', '-30 seconds'), 41.0), (datetime('now', '-15 seconds'), 43.5);",
    );
    // A limit, so the component page has one to show (with its cgroup's use, as root).
    env.ctl(&["limit", "n0m1_web", "--memory", "512M"])
        .success();
    let web = start_web(&mut env);
    wait_until(Duration::from_secs(10), "runner running", || {
        env.state_of("runner").as_deref() == Some("running")
    });
    let driver_port = free_port();
    let mut driver = Command::new(chromedriver)
        .arg(format!("--port={driver_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "chromedriver listening", || {
        std::net::TcpStream::connect(("127.0.0.1", driver_port)).is_ok()
    });
    let rows: i64 = env.count_rows("autorun_components");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(async {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a chromium session");
        let base = web.url();
        client.goto(&format!("{base}/")).await.unwrap();
        wait_js(
            &client,
            Duration::from_secs(20),
            "the component table",
            &format!("return document.querySelectorAll('#components tr').length === {rows};"),
        )
        .await;
        let listed = client
            .execute(
                "return [...document.querySelectorAll('#components tr')].map(r => r.dataset.component);",
                vec![],
            )
            .await
            .unwrap();
        let ids: Vec<String> = env
            .db()
            .prepare("SELECT component_id FROM autorun_components ORDER BY manager_affinity, component_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(listed, json!(ids), "the page lists every row");
        wait_js(
            &client,
            Duration::from_secs(20),
            "the CPU chart",
            "const b = document.querySelector('#chart-cpu_usage'); return !!b && Number(b.dataset.points) === 5 && !!b.querySelector('canvas');",
        )
        .await;
        let drawn = client
            .execute(SERIES_PIXELS, vec![json!("#chart-cpu_usage")])
            .await
            .unwrap();
        assert_eq!(drawn["points"], 5);
        assert!(drawn["pixels"].as_u64().unwrap() > 20, "the CPU series is drawn: {drawn}");
        std::fs::write(screenshot_dir().join("dashboard.png"), client.screenshot().await.unwrap()).unwrap();

        // Disable from the page: it asks for the token first, then the row turns stopped
        // through the lifecycle stream, with no reload (the marker survives).
        client.execute("window.__sameDocument = true; return true;", vec![]).await.unwrap();
        click_fresh(&client, r#"button[data-action="disable"][data-component="runner"]"#).await;
        let input = client.wait().for_element(Locator::Id("token-input")).await.unwrap();
        wait_js(&client, Duration::from_secs(5), "the token dialog", "return document.getElementById('token-dialog').open;").await;
        input.send_keys(&web.token).await.unwrap();
        client.find(Locator::Id("token-save")).await.unwrap().click().await.unwrap();
        let clicked = Instant::now();
        wait_js(
            &client,
            Duration::from_secs(2),
            "runner shown stopped within 2 s of the click",
            r#"const r = document.querySelector('#components tr[data-component="runner"]'); return !!r && r.dataset.actual === 'stopped';"#,
        )
        .await;
        let shown_after = clicked.elapsed();
        let same = client.execute("return window.__sameDocument === true;", vec![]).await.unwrap();
        assert_eq!(same, json!(true), "no reload");
        std::fs::write(screenshot_dir().join("dashboard-disabled.png"), client.screenshot().await.unwrap()).unwrap();

        // The incident panel: the crash loop's diagnosis; a model's restart proposal,
        // approved from the page, restarts the component.
        wait_js(
            &client,
            Duration::from_secs(20),
            "the crash loop's incident with its diagnosis",
            r#"const d = document.querySelector('.incident[data-component="crashy"] .diagnosis'); return !!d && d.textContent.includes('crashy crashed') && d.textContent.includes('disk full');"#,
        )
        .await;
        let patient = env.pid_of("patient").expect("patient running");
        env.db()
            .execute("INSERT INTO llm_outputs (llm_id, content) VALUES ('main_llm_processor', 'CMD:RESTART patient')", [])
            .unwrap();
        wait_js(
            &client,
            Duration::from_secs(20),
            "the proposal on the page",
            r#"return !!document.querySelector('.proposal button[data-decision="approve"]');"#,
        )
        .await;
        assert_eq!(env.pid_of("patient"), Some(patient), "nothing ran before the approval");
        std::fs::write(screenshot_dir().join("dashboard-incident.png"), client.screenshot().await.unwrap()).unwrap();
        click_fresh(&client, r#".proposal button[data-decision="approve"]"#).await;
        wait_js(
            &client,
            Duration::from_secs(20),
            "the approval's answer",
            "const n = document.getElementById('note'); return !!n && n.textContent.includes('executed');",
        )
        .await;
        let (state, after): (String, String) = env
            .db()
            .query_row("SELECT state, state_after FROM action_proposals WHERE component_id = 'patient'", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(state, "executed");
        let new_pid = env.pid_of("patient").unwrap();
        assert_ne!(new_pid, patient, "restarted");
        assert!(after.contains(&new_pid.to_string()), "{after}");

        // The component page: its limits, its log, its history and its resource graph.
        client.goto(&format!("{base}/components/n0m1_web")).await.unwrap();
        wait_js(
            &client,
            Duration::from_secs(20),
            "its limits",
            "const s = document.querySelector('#summary'); return !!s && s.textContent.includes('memory_max 512.0 MiB');",
        )
        .await;
        wait_js(&client, Duration::from_secs(20), "the component page's history", "return document.querySelectorAll('#events li').length > 0;").await;
        wait_js(
            &client,
            Duration::from_secs(20),
            "the RSS graph",
            r#"const b = document.querySelector('[data-chart="rss"]'); return !!b && Number(b.dataset.points) > 0 && !!b.querySelector('canvas');"#,
        )
        .await;
        let rss = client
            .execute(SERIES_PIXELS, vec![json!(r#"[data-chart="rss"]"#)])
            .await
            .unwrap();
        assert!(rss["pixels"].as_u64().unwrap() > 0, "the RSS series is drawn: {rss}");
        std::fs::write(screenshot_dir().join("component.png"), client.screenshot().await.unwrap()).unwrap();
        client.close().await.unwrap();
        shown_after
    });
    let _ = driver.kill();
    let _ = driver.wait();
    assert_eq!(env.state_of("runner").as_deref(), Some("stopped"));
    assert_eq!(env.status_json("runner")["desired"], "inactive");
    eprintln!(
        "runner shown stopped {} ms after the click; screenshots in {}",
        outcome.as_millis(),
        screenshot_dir().display()
    );
}
