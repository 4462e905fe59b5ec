//! Layering and checking of settings.

use super::*;

#[test]
fn flags_win_over_the_file_which_wins_over_defaults() {
    let file: FileConfig = toml::from_str(
        r#"
        listen = "0.0.0.0:9000"
        concurrency = 4
        lease_s = 12
        default_model = "mock"
        [[models]]
        name = "mock"
        provider = "mock"
        [[workspaces]]
        name = "demo"
        root = "/srv/demo"
        "#,
    )
    .expect("parse");
    let over = Overrides {
        concurrency: Some(9),
        ..Overrides::default()
    };
    let s = Settings::resolve(over, file).expect("resolve");
    assert_eq!(s.concurrency, 9);
    assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(s.lease, Duration::from_secs(12));
    assert_eq!(s.db_pool, 20);
    assert_eq!(s.worker().heartbeat, Duration::from_secs(4));
    assert_eq!(s.models.default_model().name, "mock");
    assert_eq!(s.workspaces.len(), 1);
    assert!(
        !s.workspaces[0].allow_commands,
        "commands are off unless enabled"
    );
}

#[test]
fn bad_values_are_named() {
    let over = Overrides {
        listen: Some("nowhere".into()),
        ..Overrides::default()
    };
    let err = Settings::resolve(over, FileConfig::default()).expect_err("must fail");
    assert!(err.to_string().contains("listen"), "{err}");
    let typed: Result<FileConfig, _> = toml::from_str("concurrency = \"many\"");
    assert!(typed.is_err());
    let over = Overrides {
        log_format: Some("yaml".into()),
        ..Overrides::default()
    };
    let err = Settings::resolve(over, FileConfig::default()).expect_err("must fail");
    assert!(err.to_string().contains("log_format"), "{err}");
    for ms in [0, 14, 1001] {
        let over = Overrides {
            event_window_ms: Some(ms),
            ..Overrides::default()
        };
        let err = Settings::resolve(over, FileConfig::default()).expect_err("must fail");
        assert!(err.to_string().contains("event_window_ms"), "{ms}: {err}");
    }
}

#[test]
fn the_event_window_reaches_the_worker() {
    let s = Settings::resolve(Overrides::default(), FileConfig::default()).expect("resolve");
    assert_eq!(s.worker().event_window, Duration::from_millis(30));
    let file: FileConfig = toml::from_str("event_window_ms = 50").expect("parse");
    let s = Settings::resolve(Overrides::default(), file).expect("resolve");
    assert_eq!(s.worker().event_window, Duration::from_millis(50));
}

#[test]
fn metrics_and_log_settings_layer_and_hide_the_token() {
    let file: FileConfig = toml::from_str(
        r#"
        metrics_token = "from-file"
        log_format = "json"
        metrics_listen = "127.0.0.1:9464"
        "#,
    )
    .expect("parse");
    assert!(file.unknown_keys().is_empty(), "{:?}", file.unknown_keys());
    let over = Overrides {
        metrics_token: Some("from-env".into()),
        ..Overrides::default()
    };
    let s = Settings::resolve(over, file).expect("resolve");
    assert_eq!(
        s.metrics_token.as_ref().map(Secret::expose),
        Some("from-env")
    );
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.metrics_listen.map(|a| a.port()), Some(9464));
    assert!(
        !format!("{s:?}").contains("from-env"),
        "the token is never printed"
    );
    let blank = Overrides {
        metrics_token: Some("  ".into()),
        ..Overrides::default()
    };
    let s = Settings::resolve(blank, FileConfig::default()).expect("resolve");
    assert!(s.metrics_token.is_none());
    assert_eq!(s.log_format, LogFormat::Text);
}
