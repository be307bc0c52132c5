//! Tests of the Redis objects and of how broker pods reach the managed, an external or a
//! Sentinel-run Redis.

use super::*;
use crate::resources::test_support::{assert_child, cluster_from_yaml};

#[test]
fn managed_redis_is_reached_through_its_service_with_the_generated_password() {
    let object = cluster_from_yaml("{}");
    let c = Cluster::new(&object).expect("cluster");
    let conn = connection(&c)
        .expect("connection")
        .expect("a Redis at one URL");
    assert_eq!(
        conn.url,
        "redis://:$(REDIS_PASSWORD)@demo-redis.iot.svc:6379/0"
    );
    let password = conn.password.expect("password");
    assert_eq!(password.name, "demo-redis");
    assert_eq!(password.key, "password");
}

#[test]
fn external_redis_gets_the_password_from_its_secret() {
    let object = cluster_from_yaml(
            "redis: {external: {url: 'rediss://cache.example:6380/2', passwordSecretRef: {name: r, key: pw}}}",
        );
    let c = Cluster::new(&object).expect("cluster");
    let conn = connection(&c)
        .expect("connection")
        .expect("a Redis at one URL");
    assert_eq!(conn.url, "rediss://:$(REDIS_PASSWORD)@cache.example:6380/2");
    let password = conn.password.expect("password");
    assert_eq!((password.name.as_str(), password.key.as_str()), ("r", "pw"));
    // No managed Redis objects for an external Redis.
    assert!(deployment(&c).is_none());
    assert!(service(&c).is_none());
    assert!(persistent_volume_claim(&c).is_none());
}

#[test]
fn external_redis_without_password_keeps_its_url() {
    let object = cluster_from_yaml("redis: {external: {url: 'redis://cache:6379'}}");
    let c = Cluster::new(&object).expect("cluster");
    let conn = connection(&c)
        .expect("connection")
        .expect("a Redis at one URL");
    assert_eq!(conn.url, "redis://cache:6379");
    assert_eq!(conn.password, None);
}

#[test]
fn external_sentinel_is_named_in_the_config_with_its_passwords_as_mounted_files() {
    let object = cluster_from_yaml(
            "redis: {external: {sentinel: {masterName: mymaster, sentinels: ['s-0.s:26379', 's-1.s:26379']}, \
             passwordSecretRef: {name: r, key: pw}, sentinelPasswordSecretRef: {name: s, key: spw}}}",
        );
    let c = Cluster::new(&object).expect("cluster");
    assert_eq!(connection(&c).expect("valid"), None, "no URL with Sentinel");
    let config = sentinel(&c).expect("a sentinel configuration");
    assert_eq!(config.master_name, "mymaster");
    assert_eq!(config.sentinels, ["s-0.s:26379", "s-1.s:26379"]);
    assert_eq!(
        config.password_file.as_deref(),
        Some(std::path::Path::new(SENTINEL_DATA_PASSWORD_FILE))
    );
    assert_eq!(
        config.sentinel_password_file.as_deref(),
        Some(std::path::Path::new(SENTINEL_PASSWORD_FILE))
    );
    let files: Vec<(String, String, &str)> = sentinel_password_files(&c)
        .into_iter()
        .map(|(r, path)| (r.name, r.key, path))
        .collect();
    assert_eq!(
        files,
        [
            (
                "r".to_string(),
                "pw".to_string(),
                SENTINEL_DATA_PASSWORD_FILE
            ),
            ("s".to_string(), "spw".to_string(), SENTINEL_PASSWORD_FILE)
        ]
    );
    assert!(deployment(&c).is_none());
}

#[test]
fn external_with_both_url_and_sentinel_is_an_error() {
    let object = cluster_from_yaml(
            "redis: {external: {url: 'redis://cache:6379', sentinel: {masterName: m, sentinels: ['s:26379']}}}",
        );
    let c = Cluster::new(&object).expect("cluster");
    assert!(matches!(connection(&c), Err(Error::InvalidSpec(_))));
}

#[test]
fn both_or_neither_redis_is_an_error() {
    for yaml in [
        "redis: {}",
        "redis: {managed: {}, external: {url: 'redis://x'}}",
    ] {
        let object = cluster_from_yaml(yaml);
        let c = Cluster::new(&object).expect("cluster");
        let err = connection(&c).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{yaml}: {err}");
    }
}

#[test]
fn password_goes_into_the_user_info() {
    let p = "$(P)";
    assert_eq!(
        url_with_password("redis://h:1", p).unwrap(),
        "redis://:$(P)@h:1"
    );
    assert_eq!(
        url_with_password("redis://app@h:1/3", p).unwrap(),
        "redis://app:$(P)@h:1/3"
    );
    assert_eq!(
        url_with_password("redis://h?db=2", p).unwrap(),
        "redis://:$(P)@h?db=2"
    );
    assert!(url_with_password("redis://app:secret@h", p).is_err());
    assert!(url_with_password("h:6379", p).is_err());
}

#[test]
fn generated_passwords_are_url_safe_and_differ() {
    let a = generate_password().expect("password");
    let b = generate_password().expect("password");
    assert_eq!(a.len(), 32);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
    assert_ne!(a, b);
}

#[test]
fn password_secret_holds_the_password() {
    let object = cluster_from_yaml("{}");
    let c = Cluster::new(&object).expect("cluster");
    let secret = password_secret(&c, "s3cret");
    assert_child(&secret.metadata, "demo-redis", "redis");
    let data = secret.string_data.expect("data");
    assert_eq!(data["password"], "s3cret");
    assert_eq!(data["redis.conf"], "requirepass \"s3cret\"\n");
}

#[test]
fn managed_redis_without_persistence_uses_an_empty_dir() {
    let object = cluster_from_yaml("{}");
    let c = Cluster::new(&object).expect("cluster");
    let d = deployment(&c).expect("deployment");
    assert_child(&d.metadata, "demo-redis", "redis");
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.selector.match_labels,
        Some(c.selector_labels(COMPONENT_REDIS))
    );
    let pod = spec.template.spec.expect("pod");
    let volume = &pod.volumes.as_ref().expect("volumes")[0];
    assert!(volume.empty_dir.is_some());
    assert!(volume.persistent_volume_claim.is_none());
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("redis:7.4-alpine"));
    let args = container.args.clone().expect("args");
    // The password is read from the mounted configuration file, never from the command line.
    assert_eq!(args[0], "/etc/redis-auth/redis.conf");
    assert!(!args
        .iter()
        .any(|a| a.contains("requirepass") || a.contains("REDIS_PASSWORD")));
    assert!(args.windows(2).any(|w| w == ["--appendonly", "no"]));
    assert!(
        container.env.is_none(),
        "no password in the environment either"
    );
    let mount = container
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| m.name == "auth")
        .expect("auth mount");
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/redis-auth", Some(true))
    );
    let auth = pod
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == "auth")
        .and_then(|v| v.secret.as_ref())
        .expect("auth volume from a Secret");
    assert_eq!(auth.secret_name.as_deref(), Some("demo-redis"));
    let items = auth.items.as_ref().expect("items");
    assert_eq!(
        (items.len(), items[0].key.as_str(), items[0].path.as_str()),
        (1, "redis.conf", "redis.conf")
    );
    assert!(persistent_volume_claim(&c).is_none());

    let svc = service(&c).expect("service");
    assert_child(&svc.metadata, "demo-redis", "redis");
    let svc_spec = svc.spec.expect("spec");
    assert_eq!(svc_spec.selector, Some(c.selector_labels(COMPONENT_REDIS)));
    assert_eq!(svc_spec.ports.expect("ports")[0].port, 6379);
}

#[test]
fn managed_redis_never_evicts_and_keeps_below_its_memory_limit() {
    let args_of = |yaml: &str| {
        let object = cluster_from_yaml(yaml);
        let c = Cluster::new(&object).expect("cluster");
        let d = deployment(&c).expect("deployment");
        let pod = d.spec.template.spec.expect("pod");
        pod.containers[0].args.clone().expect("args")
    };
    let value_of =
        |args: &[String], flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());

    // No memory limit: no maxmemory, but never evicting all the same.
    let args = args_of("{}");
    assert_eq!(
        value_of(&args, "--maxmemory-policy").as_deref(),
        Some("noeviction")
    );
    assert_eq!(value_of(&args, "--maxmemory"), None);

    // 512Mi limit: 80% of it.
    let args = args_of(
            "redis: {managed: {resources: {requests: {memory: 256Mi}, limits: {memory: 512Mi, cpu: '1'}}}}",
        );
    assert_eq!(
        value_of(&args, "--maxmemory-policy").as_deref(),
        Some("noeviction")
    );
    assert_eq!(
        value_of(&args, "--maxmemory").as_deref(),
        Some(((512u64 << 20) * 8 / 10).to_string().as_str())
    );

    // A zero limit is no limit to size from.
    let args = args_of("redis: {managed: {resources: {limits: {memory: '0'}}}}");
    assert_eq!(value_of(&args, "--maxmemory"), None);

    // Only a request: no maxmemory.
    let args = args_of("redis: {managed: {resources: {requests: {memory: 256Mi}}}}");
    assert_eq!(value_of(&args, "--maxmemory"), None);
    assert_eq!(
        value_of(&args, "--maxmemory-policy").as_deref(),
        Some("noeviction")
    );
}

#[test]
fn quantities_read_as_bytes() {
    for (quantity, bytes) in [
        ("128974848", Some(128_974_848)),
        ("129e6", Some(129_000_000)),
        ("129E6", Some(129_000_000)),
        ("129M", Some(129_000_000)),
        ("123Mi", Some(123 * 1024 * 1024)),
        ("1.5Gi", Some(1536 * 1024 * 1024)),
        ("1Gi", Some(1 << 30)),
        ("2k", Some(2000)),
        ("1Ki", Some(1024)),
        ("128974848000m", Some(128_974_848)),
        ("1289748480e-1", Some(128_974_848)),
        ("+1Ki", Some(1024)),
        ("0", Some(0)),
        ("", None),
        ("Mi", None),
        ("-1Gi", None),
        ("1.2.3", None),
        ("12Qi", None),
        ("1e", None),
        ("1e999", None),
    ] {
        assert_eq!(quantity_bytes(quantity), bytes, "{quantity:?}");
    }
    assert_eq!(maxmemory_for_limit(1000), 800);
    assert_eq!(
        maxmemory_for_limit(1),
        1,
        "never 0, which means no limit to Redis"
    );
    assert_eq!(maxmemory_for_limit(u64::MAX), 14_757_395_258_967_641_292);
}

#[test]
fn persistence_adds_a_claim_and_mounts_it() {
    let object = cluster_from_yaml(
            "redis: {managed: {image: 'valkey/valkey:8', persistence: {storageClassName: fast, size: 5Gi}}}",
        );
    let c = Cluster::new(&object).expect("cluster");
    let pvc = persistent_volume_claim(&c).expect("claim");
    assert_child(&pvc.metadata, "demo-redis-data", "redis");
    let spec = pvc.spec.expect("spec");
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        spec.resources
            .expect("resources")
            .requests
            .expect("requests")["storage"]
            .0,
        "5Gi"
    );
    let d = deployment(&c).expect("deployment");
    let pod = d.spec.template.spec.expect("pod");
    let volume = &pod.volumes.expect("volumes")[0];
    assert_eq!(
        volume
            .persistent_volume_claim
            .as_ref()
            .map(|p| p.claim_name.as_str()),
        Some("demo-redis-data")
    );
    assert_eq!(pod.containers[0].image.as_deref(), Some("valkey/valkey:8"));
    let args = pod.containers[0].args.clone().expect("args");
    assert!(args.windows(2).any(|w| w == ["--appendonly", "yes"]));
}

#[test]
fn default_persistence_size_is_one_gibibyte() {
    let object = cluster_from_yaml("redis: {managed: {persistence: {}}}");
    let c = Cluster::new(&object).expect("cluster");
    let pvc = persistent_volume_claim(&c).expect("claim");
    let requests = pvc
        .spec
        .expect("spec")
        .resources
        .expect("r")
        .requests
        .expect("q");
    assert_eq!(requests["storage"].0, "1Gi");

    let object = cluster_from_yaml("redis: {managed: {persistence: {size: null}}}");
    let c = Cluster::new(&object).expect("cluster");
    let pvc = persistent_volume_claim(&c).expect("claim");
    let requests = pvc
        .spec
        .expect("spec")
        .resources
        .expect("r")
        .requests
        .expect("q");
    assert_eq!(requests["storage"].0, "1Gi", "null means the default");
}
