//! Tests of loading, parsing and validating a configuration, and of the example configuration
//! shipped with the broker.

use super::*;

#[test]
fn defaults_are_valid() {
    BrokerConfig::default()
        .validate()
        .expect("defaults validate");
}

#[test]
fn toml_round_trip_keeps_every_value() {
    let mut config = BrokerConfig::default();
    config.limits.max_packet_size = 4096;
    config.listeners.ws = Some("127.0.0.1:8083".parse().expect("addr"));
    config.shutdown.server_reference = Some("other:1883".into());
    let text = config.to_toml_string().expect("render");
    let parsed = BrokerConfig::from_toml_str(&text).expect("parse");
    assert_eq!(parsed, config);
}

#[test]
fn listeners_switched_off_stay_off_through_toml() {
    let mut config = BrokerConfig::default();
    config.listeners.tcp = None;
    config.listeners.ws = Some("127.0.0.1:8083".parse().expect("addr"));
    config.admin.bind = None;
    let text = config.to_toml_string().expect("render");
    assert!(text.contains("tcp = \"off\""), "{text}");
    assert_eq!(BrokerConfig::from_toml_str(&text).expect("parse"), config);
}

#[test]
fn a_bad_address_names_the_field() {
    let err = BrokerConfig::from_toml_str("[listeners]\ntcp = \"nowhere\"\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("listeners.tcp") && text.contains("\"off\""),
        "{text}"
    );
}

#[test]
fn unknown_field_is_named() {
    let err = BrokerConfig::from_toml_str("[limits]\nmax_packet_sise = 10\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("max_packet_sise"), "{text}");
}

#[test]
fn wrong_type_names_the_field() {
    let err = BrokerConfig::from_toml_str("[limits]\nmax_inflight = \"many\"\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("limits.max_inflight"), "{text}");
}

#[test]
fn packet_size_out_of_range_names_field_and_fix() {
    let err = BrokerConfig::from_toml_str("[limits]\nmax_packet_size = 10\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("limits.max_packet_size"), "{text}");
    assert!(text.contains("between 64 and"), "{text}");
}

#[test]
fn retained_payload_size_of_zero_names_field_and_fix() {
    let err = BrokerConfig::from_toml_str("[limits]\nmax_retained_payload_size = 0\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("limits.max_retained_payload_size"), "{text}");
    assert!(text.contains("choose a size in bytes"), "{text}");
}

#[test]
fn retained_bytes_below_the_payload_size_names_field_and_fix() {
    let err = BrokerConfig::from_toml_str(
        "[limits]\nmax_retained_payload_size = 1000\nmax_retained_bytes = 999\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("limits.max_retained_bytes"), "{text}");
    assert!(text.contains("or 0 for no total limit"), "{text}");
}

#[test]
fn retained_limits_parse_and_zero_messages_means_no_limit() {
    let config = BrokerConfig::from_toml_str(
        "[limits]\nmax_retained_messages = 0\nmax_retained_payload_size = 1\nmax_retained_bytes = 0\n",
    )
    .expect("valid");
    assert_eq!(config.limits.max_retained_messages, 0);
    assert_eq!(config.limits.max_retained_bytes, 0);
    assert_eq!(config.limits.max_retained_payload_size, 1);
}

#[test]
fn clashing_ports_are_rejected() {
    let err = BrokerConfig::from_toml_str(
        "[listeners]\ntcp = \"127.0.0.1:1883\"\nws = \"127.0.0.1:1883\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("listeners.ws"), "{err}");
}

#[test]
fn no_listener_is_rejected() {
    let mut config = BrokerConfig::default();
    config.listeners.tcp = None;
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("`listeners`"), "{err}");
}

#[test]
fn closed_broker_without_users_is_rejected() {
    let err = BrokerConfig::from_toml_str("[auth]\nallow_anonymous = false\n").unwrap_err();
    assert!(err.to_string().contains("auth.password_file"), "{err}");
}

#[test]
fn cluster_defaults_to_standalone_and_takes_gossip_settings() {
    assert_eq!(BrokerConfig::default().cluster, ClusterConfig::default());
    let config = BrokerConfig::from_toml_str(
            "[cluster]\ngossip_bind = \"0.0.0.0:7946\"\n\
             gossip_advertise = \"10.1.2.3:7946\"\n\
             gossip_seeds = [\"starling-0.starling:7946\", \"10.0.0.5:7946\", \"[fd00::5]:7946\", \"a.b.svc.cluster.local.:7946\"]\n\
             gossip_key_file = \"/etc/starling/gossip.key\"\n\
             redis_url = \"redis://redis:6379/0\"\n",
        )
        .expect("valid cluster section");
    assert_eq!(config.cluster.gossip_seeds.len(), 4);
}

#[test]
fn cluster_seeds_must_be_host_port() {
    for bad in [
        "starling-0",
        "starling-0:",
        "starling-0:0",
        "starling-0:70000",
        ":7946",
        "fd00::5:7946",
        "[fd00::5:7946",
        "bad host:7946",
        "a..b:7946",
    ] {
        let text = format!("[cluster]\ngossip_bind = \"0.0.0.0:7946\"\ngossip_seeds = [{bad:?}]\n");
        let err = BrokerConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("cluster.gossip_seeds"), "{bad}: {err}");
    }
}

#[test]
fn gossip_settings_need_gossip_bind() {
    for line in [
        "gossip_seeds = [\"a:7946\"]",
        "gossip_advertise = \"10.0.0.1:7946\"",
        "gossip_key_file = \"/k\"",
    ] {
        let err = BrokerConfig::from_toml_str(&format!("[cluster]\n{line}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.gossip_bind"), "{line}: {err}");
    }
}

#[test]
fn cluster_values_that_cannot_work_are_named() {
    let cases = [
        ("redis_url = \"localhost:6379\"", "cluster.redis_url"),
        (
            "gossip_bind = \"0.0.0.0:7946\"\ngossip_advertise = \"0.0.0.0:7946\"",
            "cluster.gossip_advertise",
        ),
        ("gossip_bind = \"0.0.0.0:1883\"", "cluster.gossip_bind"),
        (
            "gossip_bind = \"0.0.0.0:7946\"\ngossip_key_file = \"\"",
            "cluster.gossip_key_file",
        ),
        (
            "[cluster.rebalance]\ntolerance_percent = 0",
            "cluster.rebalance.tolerance_percent",
        ),
        (
            "[cluster.rebalance]\nrate_per_sec = 0",
            "cluster.rebalance.rate_per_sec",
        ),
    ];
    for (body, field) in cases {
        let err = BrokerConfig::from_toml_str(&format!("[cluster]\n{body}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{body}: {err}");
    }
}

#[test]
fn a_sentinel_run_redis_is_accepted_with_a_replication_wait() {
    let config = BrokerConfig::from_toml_str(
        "[cluster]\n[cluster.redis_sentinel]\nmaster_name = \"mymaster\"\n\
             sentinels = [\"sentinel-0:26379\", \"10.0.0.7:26379\"]\n\
             password_file = \"/run/secrets/redis-password\"\n\
             [cluster.redis_replication]\nwait_replicas = 1\n",
    )
    .expect("valid sentinel section");
    assert!(config.cluster.has_redis());
    let sentinel = config.cluster.redis_sentinel.expect("sentinel");
    assert_eq!(sentinel.master_name, "mymaster");
    assert_eq!(sentinel.sentinels.len(), 2);
    assert_eq!(config.cluster.redis_replication.wait_replicas, 1);
    assert_eq!(config.cluster.redis_replication.wait_timeout_ms, 1000);
    let tls = BrokerConfig::from_toml_str(
            "[cluster]\nredis_url = \"rediss://r:6379\"\n[cluster.redis_tls]\nca_file = \"/ca.crt\"\ncert_file = \"/c.crt\"\nkey_file = \"/c.key\"\n",
        )
        .expect("TLS files with a rediss URL");
    assert!(tls.cluster.redis_tls.is_set());
}

#[test]
fn sentinel_and_replication_values_that_cannot_work_are_named() {
    let sentinel = "[cluster.redis_sentinel]\nmaster_name = \"m\"\nsentinels = [\"s:26379\"]\n";
    let cases = [
        (
            format!("redis_url = \"redis://r:6379\"\n{sentinel}"),
            "cluster.redis_sentinel",
        ),
        (
            "[cluster.redis_sentinel]\nsentinels = [\"s:26379\"]\n".to_string(),
            "cluster.redis_sentinel.master_name",
        ),
        (
            "[cluster.redis_sentinel]\nmaster_name = \"m\"\n".to_string(),
            "cluster.redis_sentinel.sentinels",
        ),
        (
            "[cluster.redis_sentinel]\nmaster_name = \"m\"\nsentinels = [\"s\"]\n".to_string(),
            "cluster.redis_sentinel.sentinels",
        ),
        (
            "redis_url = \"redis://r:6379\"\n[cluster.redis_tls]\nca_file = \"/ca.crt\"\n"
                .to_string(),
            "cluster.redis_tls",
        ),
        (
            "redis_url = \"rediss://r:6379\"\n[cluster.redis_tls]\ncert_file = \"/c.crt\"\n"
                .to_string(),
            "cluster.redis_tls.key_file",
        ),
        (
            "[cluster.redis_replication]\nwait_replicas = 1\n".to_string(),
            "cluster.redis_replication.wait_replicas",
        ),
        (
            format!(
                "{sentinel}[cluster.redis_replication]\nwait_replicas = 1\nwait_timeout_ms = 0\n"
            ),
            "cluster.redis_replication.wait_timeout_ms",
        ),
    ];
    for (body, field) in cases {
        let err = BrokerConfig::from_toml_str(&format!("[cluster]\n{body}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{body}: {err}");
    }
}

const TLS: &str = "[listeners.tls]\nbind = \"127.0.0.1:8883\"\ncert_file = \"/tls.crt\"\nkey_file = \"/tls.key\"\n";

#[test]
fn client_certificate_settings_parse_and_default_to_none() {
    let plain = BrokerConfig::from_toml_str(TLS).expect("plain TLS listener");
    let tls = plain.listeners.tls.expect("tls");
    assert_eq!(tls.client_auth, ClientAuth::None);
    assert_eq!(tls.client_ca_file, None);
    assert_eq!(tls.username_from_certificate, CertificateUsername::None);

    let mtls = BrokerConfig::from_toml_str(&format!(
        "{TLS}client_auth = \"required\"\nclient_ca_file = \"/ca.crt\"\nusername_from_certificate = \"san_email\"\n"
    ))
    .expect("mutual TLS listener");
    let tls = mtls.listeners.tls.clone().expect("tls");
    assert_eq!(tls.client_auth, ClientAuth::Required);
    assert_eq!(tls.client_ca_file, Some("/ca.crt".into()));
    assert_eq!(tls.username_from_certificate, CertificateUsername::SanEmail);
    let text = mtls.to_toml_string().expect("render");
    assert_eq!(BrokerConfig::from_toml_str(&text).expect("parse"), mtls);

    let err = BrokerConfig::from_toml_str(&format!("{TLS}username_from_certificate = \"dn\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("listeners.tls.username_from_certificate") && err.contains("san_dns"),
        "{err}"
    );
}

#[test]
fn client_certificate_settings_that_cannot_work_are_named() {
    let cases = [
        (
            "client_auth = \"required\"\n",
            "listeners.tls.client_ca_file",
        ),
        (
            "client_auth = \"optional\"\n",
            "listeners.tls.client_ca_file",
        ),
        (
            "client_auth = \"optional\"\nusername_from_certificate = \"cn\"\n",
            "listeners.tls.client_ca_file",
        ),
        (
            "client_ca_file = \"/ca.crt\"\n",
            "listeners.tls.client_auth",
        ),
        (
            "username_from_certificate = \"cn\"\n",
            "listeners.tls.username_from_certificate",
        ),
    ];
    for (body, field) in cases {
        let err = BrokerConfig::from_toml_str(&format!("{TLS}{body}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{body}: {err}");
    }
    let ok = "client_auth = \"optional\"\nclient_ca_file = \"/ca.crt\"\nusername_from_certificate = \"cn\"\n";
    BrokerConfig::from_toml_str(&format!("{TLS}{ok}")).expect("a complete mutual TLS listener");
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
fn environment_overrides_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("starling.toml", "[limits]\nmax_inflight = 5\n")?;
        jail.set_env("STARLING_LIMITS__MAX_INFLIGHT", "7");
        jail.set_env("STARLING_NODE_ID", "node-b");
        let figment = BrokerConfig::figment(Some(std::path::Path::new("starling.toml")));
        let config = BrokerConfig::from_figment(&figment).expect("config");
        assert_eq!(config.limits.max_inflight, 7);
        assert_eq!(config.node_id, "node-b");
        Ok(())
    });
}

mod example_file {
    use super::*;

    /// The example configuration shipped with the broker must stay valid and complete.
    #[test]
    fn example_configuration_parses() {
        let text = include_str!("../../broker/starling.example.toml");
        let config = BrokerConfig::from_toml_str(text).expect("example parses and validates");
        assert_eq!(
            config.listeners.ws,
            Some("0.0.0.0:8083".parse().expect("addr"))
        );
        let mut defaults = BrokerConfig::default();
        defaults.listeners.ws = config.listeners.ws;
        assert_eq!(
            config, defaults,
            "the example's values are the defaults it claims"
        );
    }
}
