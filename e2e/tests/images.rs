//! The container images `scripts/build-images.sh` assembles, checked from the outside: built from
//! this workspace's (debug) binaries into a temporary directory, each archive is opened as an
//! importer would (OCI layout, blobs named by their digest, Docker `manifest.json`), its
//! configuration compared with what the Dockerfile promises (user 65532:65532, entrypoint, ports,
//! stop signal, labels, version), its single layer listed (distroless-like contents: no shell, no
//! package manager, nothing executable but the binary and its libraries; every timestamp
//! SOURCE_DATE_EPOCH, every owner root but /home/nonroot), the binary run from the unpacked root
//! filesystem (through its own dynamic loader, and with `chroot` as UID 65532 when the test runs
//! as root), and a second build compared byte for byte with the first.
//!
//! Needs `python3`, `ldd` and `tar` (Debian), and both binaries built:
//! `cargo build -p starling-broker -p starling-operator` (scripts/test.sh does).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The timestamp the test builds with.
const EPOCH: u64 = 1_700_000_000;
const PREFIX: &str = "registry.example/starling-test";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const NONROOT: u64 = 65532;

/// One image and what its configuration must say.
struct Expected {
    name: &'static str,
    entrypoint: &'static str,
    cmd: Option<Vec<&'static str>>,
    ports: Vec<&'static str>,
}

fn expected() -> Vec<Expected> {
    vec![
        Expected {
            name: "broker",
            entrypoint: "/usr/local/bin/starling-broker",
            cmd: None,
            ports: vec![
                "1883/tcp", "7946/tcp", "7946/udp", "8083/tcp", "8883/tcp", "9090/tcp",
            ],
        },
        Expected {
            name: "operator",
            entrypoint: "/usr/local/bin/starling-operator",
            cmd: Some(vec!["run"]),
            ports: vec!["8080/tcp"],
        },
    ]
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in the workspace")
        .to_path_buf()
}

/// The directory holding this profile's `starling-broker` and `starling-operator`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    for name in ["starling-broker", "starling-operator"] {
        assert!(
            dir.join(name).exists(),
            "{} is missing: build both binaries first (cargo build -p starling-broker -p starling-operator)",
            dir.join(name).display()
        );
    }
    dir.to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the project's command; returns reference -> manifest digest as it printed them.
fn build_images(out: &Path) -> BTreeMap<String, String> {
    let printed = run(Command::new(workspace().join("scripts/build-images.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out)
        .args(["--prefix", PREFIX])
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string()));
    let mut digests = BTreeMap::new();
    for line in printed.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "unexpected output line {line:?}");
        digests.insert(fields[0].to_string(), fields[1].to_string());
    }
    digests
}

/// The SHA-256 of a file, by `sha256sum` (an unoptimised build of a Rust hasher takes a minute
/// over the debug binaries).
fn sha256_hex(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum printed nothing for {}", path.display()))
        .to_string()
}

/// One entry of a tar archive.
#[derive(Debug)]
struct Entry {
    path: String,
    kind: u8,
    mode: u64,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: String,
    data: std::ops::Range<usize>,
}

fn octal(field: &[u8]) -> u64 {
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    u64::from_str_radix(text.trim(), 8).unwrap_or_else(|_| panic!("bad octal tar field {text:?}"))
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Reads a ustar archive (what the builder writes; any other format is a failure).
fn tar_entries(bytes: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() {
        let header = &bytes[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        assert_eq!(&header[257..263], b"ustar\0", "entry at {at} is not ustar");
        let name = cstr(&header[0..100]);
        let prefix = cstr(&header[345..500]);
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = octal(&header[124..136]) as usize;
        let start = at + 512;
        entries.push(Entry {
            path: path.trim_end_matches('/').to_string(),
            kind: header[156],
            mode: octal(&header[100..108]),
            uid: octal(&header[108..116]),
            gid: octal(&header[116..124]),
            mtime: octal(&header[136..148]),
            link: cstr(&header[157..257]),
            data: start..start + size,
        });
        at = start + size.div_ceil(512) * 512;
    }
    entries
}

/// What one image archive holds, checked for the OCI and Docker structure on the way.
struct Image {
    config: Value,
    layer: Vec<u8>,
    /// The layer's blob in the unpacked archive (untarred in place, never copied).
    layer_file: PathBuf,
}

fn open_archive(path: &Path, reference: &str, manifest_digest: &str, dir: &Path) -> Image {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let entries = tar_entries(&bytes);
    drop(bytes);
    std::fs::create_dir_all(dir).expect("creating the unpack directory");
    run(Command::new("tar")
        .arg("-xf")
        .arg(path)
        .arg("-C")
        .arg(dir)
        .arg("--no-same-owner"));
    let json = |name: &str| -> Value {
        let data = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
        serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let blob = |digest: &str| -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("digest {digest} is not sha256"));
        let file = dir.join("blobs/sha256").join(hex);
        assert!(file.is_file(), "{}: no blob {digest}", path.display());
        assert_eq!(
            sha256_hex(&file),
            hex,
            "blob {digest} does not hash to its name"
        );
        file
    };
    let read =
        |file: PathBuf| std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));

    assert_eq!(
        json("oci-layout"),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    assert_eq!(entries[0].path, "oci-layout", "oci-layout comes first");
    for e in &entries {
        assert_eq!(
            (e.uid, e.gid, e.mtime),
            (0, 0, EPOCH),
            "{}: owner or mtime",
            e.path
        );
    }

    let index = json("index.json");
    let manifests = index["manifests"].as_array().expect("index.manifests");
    assert_eq!(manifests.len(), 1, "one image per archive");
    let descriptor = &manifests[0];
    assert_eq!(descriptor["digest"], manifest_digest);
    assert_eq!(
        descriptor["annotations"]["io.containerd.image.name"],
        reference
    );
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        VERSION
    );
    assert_eq!(descriptor["platform"]["os"], "linux");
    let manifest_bytes = read(blob(manifest_digest));
    assert_eq!(descriptor["size"], manifest_bytes.len());
    let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config: Value = serde_json::from_slice(&read(blob(config_digest))).expect("config JSON");
    let layers = manifest["layers"].as_array().expect("manifest.layers");
    assert_eq!(layers.len(), 1, "one layer");
    let layer_digest = layers[0]["digest"].as_str().expect("layer digest");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    let layer_file = blob(layer_digest);
    let layer = read(layer_file.clone());
    // Uncompressed: the layer's digest is its diff id.
    assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);

    // docker load reads manifest.json.
    let docker = json("manifest.json");
    assert_eq!(docker[0]["RepoTags"][0], reference);
    assert_eq!(
        docker[0]["Config"],
        format!("blobs/sha256/{}", &config_digest[7..])
    );
    assert_eq!(
        docker[0]["Layers"][0],
        format!("blobs/sha256/{}", &layer_digest[7..])
    );
    Image {
        config,
        layer,
        layer_file,
    }
}

fn check_config(config: &Value, want: &Expected) {
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"], serde_json::json!([want.entrypoint]));
    match &want.cmd {
        Some(cmd) => assert_eq!(c["Cmd"], serde_json::json!(cmd)),
        None => assert!(c.get("Cmd").is_none(), "unexpected Cmd {}", c["Cmd"]),
    }
    let ports: BTreeSet<&str> = c["ExposedPorts"]
        .as_object()
        .expect("ExposedPorts")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(ports, want.ports.iter().copied().collect());
    assert_eq!(c["StopSignal"], "SIGTERM");
    let labels = &c["Labels"];
    let title = format!("starling-{}", want.name);
    assert_eq!(labels["org.opencontainers.image.title"], title.as_str());
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://github.com/starling-mqtt/starling"
    );
    assert!(
        labels["org.opencontainers.image.description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "description label"
    );
}

/// Checks the layer's entries; returns them by path.
fn check_contents(layer: &[u8], want: &Expected) -> BTreeMap<String, Entry> {
    let entries = tar_entries(layer);
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(paths, sorted, "layer entries are sorted");
    let binary = want.entrypoint.trim_start_matches('/');
    for e in &entries {
        assert_eq!(e.mtime, EPOCH, "{}: mtime", e.path);
        let owner = if e.path == "home/nonroot" { NONROOT } else { 0 };
        assert_eq!((e.uid, e.gid), (owner, owner), "{}: owner", e.path);
        let name = e.path.rsplit('/').next().unwrap_or_default();
        for forbidden in ["sh", "bash", "dash", "busybox", "apt", "apt-get", "dpkg"] {
            assert_ne!(name, forbidden, "{} must not be in the image", e.path);
        }
        assert!(
            !e.path.starts_with("var/lib/dpkg") && !e.path.starts_with("etc/apt"),
            "{}: package manager state",
            e.path
        );
        // Nothing executable but the binary and shared objects.
        if e.kind == b'0' && e.mode & 0o111 != 0 {
            assert!(
                e.path == binary || name.contains(".so"),
                "{} is executable and neither the binary nor a library",
                e.path
            );
        }
    }
    let by_path: BTreeMap<String, Entry> =
        entries.into_iter().map(|e| (e.path.clone(), e)).collect();
    let get = |p: &str| {
        by_path
            .get(p)
            .unwrap_or_else(|| panic!("{} image has no {p}", want.name))
    };
    assert_eq!(get(binary).mode, 0o755);
    assert_eq!(get("tmp").mode, 0o1777);
    assert_eq!(get("tmp").kind, b'5');
    assert_eq!(get("home/nonroot").mode, 0o700);
    assert!(get("etc/ssl/certs/ca-certificates.crt").data.len() > 1000);
    let text = |p: &str| String::from_utf8_lossy(&layer[get(p).data.clone()]).into_owned();
    assert!(text("etc/passwd")
        .lines()
        .any(|l| l.starts_with("nonroot:x:65532:65532:")));
    assert!(text("etc/group")
        .lines()
        .any(|l| l.starts_with("nonroot:x:65532:")));
    for e in by_path.values().filter(|e| e.kind == b'2') {
        assert!(
            !e.link.starts_with('/'),
            "{} -> {}: absolute link",
            e.path,
            e.link
        );
    }
    by_path
}

/// Unpacks the layer with tar and runs the binary from it; returns the unpacked root.
fn check_runs(tar: &Path, want: &Expected, dir: &Path) -> PathBuf {
    let root = dir.join(format!("{}-root", want.name));
    std::fs::create_dir_all(&root).expect("creating the root directory");
    run(Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(&root)
        .arg("--no-same-owner"));
    let binary = root.join(want.entrypoint.trim_start_matches('/'));
    let loader = root.join("lib64/ld-linux-x86-64.so.2");
    let libs = root.join("lib/x86_64-linux-gnu");
    let expected = format!("starling-{} {VERSION}", want.name);

    // Every library the loader resolves comes from the image.
    let listed = run(Command::new(&loader)
        .arg("--library-path")
        .arg(&libs)
        .arg("--list")
        .arg(&binary));
    let root_text = root.display().to_string();
    for line in listed.lines().filter(|l| l.contains("=>")) {
        assert!(
            line.contains(&root_text),
            "{} resolves a library outside the image: {line}",
            want.name
        );
    }
    let said = run(Command::new(&loader)
        .arg("--library-path")
        .arg(&libs)
        .arg(&binary)
        .arg("--version"));
    assert_eq!(said.trim(), expected);

    // As root: the image's own view of the world, as its user.
    if unsafe { libc::geteuid() } == 0 {
        let said = run(Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(&root)
            .arg(want.entrypoint)
            .arg("--version"));
        assert_eq!(said.trim(), expected);
        println!(
            "{}: runs in a chroot of the image as 65532: {said}",
            want.name
        );
    } else {
        println!(
            "{}: NOT checked in a chroot (needs root); checked through the image's loader only",
            want.name
        );
    }
    root
}

#[test]
fn images_are_distroless_like_runnable_and_reproducible() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let first = tmp.path().join("first");
    let second = tmp.path().join("second");
    let digests = build_images(&first);
    let mut archive_hashes = BTreeMap::new();
    for want in expected() {
        let reference = format!("{PREFIX}/starling-{}:{VERSION}", want.name);
        let digest = digests
            .get(&reference)
            .unwrap_or_else(|| panic!("build-images.sh printed no line for {reference}"));
        let archive = first.join(format!("starling-{}.tar", want.name));
        let unpacked = tmp.path().join(format!("{}-archive", want.name));
        let image = open_archive(&archive, &reference, digest, &unpacked);
        check_config(&image.config, &want);
        check_contents(&image.layer, &want);
        let root = check_runs(&image.layer_file, &want, tmp.path());
        drop(image);
        // CI machines may have little disk: each image's unpacked copies go before the next.
        for done in [root, unpacked] {
            std::fs::remove_dir_all(&done)
                .unwrap_or_else(|e| panic!("removing {}: {e}", done.display()));
        }
        let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        archive_hashes.insert(want.name, sha256_hex(&archive));
        println!("{reference}: {digest}, {size} bytes");
    }

    // Same inputs, same bytes.
    let again = build_images(&second);
    assert_eq!(digests, again, "a second build gave other manifest digests");
    for want in expected() {
        assert_eq!(
            archive_hashes[want.name],
            sha256_hex(&second.join(format!("starling-{}.tar", want.name))),
            "starling-{}.tar differs between two builds",
            want.name
        );
    }
}
