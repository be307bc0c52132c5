//! `starling-broker`: command line → configuration → run.

use anyhow::Context;
use clap::{Parser, Subcommand};
use starling_broker::ctl;
use starling_broker::server::Server;
use starling_config::{BrokerConfig, LogFormat};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: a message is allocated on the thread that read it and
/// freed on the thread that wrote it out, and glibc serialises such cross-thread frees on an
/// arena lock. Under a saturated fan-in that lock cost one futex call per three messages and
/// halved throughput in about one run in five. Its v2 line, because v3 held about 60% more
/// memory per idle connection.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Starling: a distributed MQTT 3.1.1 and 5.0 broker.
///
/// Configuration is layered: defaults, then the TOML file (--config), then STARLING_* environment
/// variables (STARLING_LIMITS__MAX_PACKET_SIZE sets limits.max_packet_size), then these flags.
#[derive(Parser, Debug)]
#[command(name = "starling-broker", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(short, long, env = "STARLING_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Name of this node (node_id).
    #[arg(long, global = true)]
    node_id: Option<String>,
    /// MQTT over TCP address (listeners.tcp).
    #[arg(long, global = true)]
    tcp: Option<SocketAddr>,
    /// Disable the plain TCP listener.
    #[arg(long, global = true, conflicts_with = "tcp")]
    no_tcp: bool,
    /// MQTT over WebSocket address (listeners.ws).
    #[arg(long, global = true)]
    ws: Option<SocketAddr>,
    /// Admin HTTP address (admin.bind).
    #[arg(long, global = true)]
    admin_bind: Option<SocketAddr>,
    /// Disable the admin HTTP endpoint.
    #[arg(long, global = true, conflicts_with = "admin_bind")]
    no_admin: bool,
    /// Log filter, e.g. `info` or `starling_broker=debug` (log.level).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format: text or json (log.format).
    #[arg(long, global = true)]
    log_format: Option<String>,
    /// Redis URL of the cluster store, e.g. redis://:password@redis:6379/ or rediss://
    /// (cluster.redis_url). Prefer STARLING_CLUSTER__REDIS_URL or a config file for a password.
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// File holding the Redis password: inserted into the Redis URL, or with Sentinel the data
    /// nodes' password (cluster.redis_sentinel.password_file); keeps it out of `ps`.
    #[arg(long, global = true)]
    redis_password_file: Option<PathBuf>,
    /// Gossip bind address, e.g. 0.0.0.0:7946 (cluster.gossip_bind).
    #[arg(long, global = true)]
    gossip_bind: Option<SocketAddr>,
    /// Gossip address other nodes reach this node at (cluster.gossip_advertise).
    #[arg(long, global = true)]
    gossip_advertise: Option<SocketAddr>,
    /// Gossip seeds as host:port, comma-separated (cluster.gossip_seeds).
    #[arg(long, global = true, value_delimiter = ',')]
    gossip_seeds: Vec<String>,
    /// File with the base64 gossip encryption key (cluster.gossip_key_file).
    #[arg(long, global = true)]
    gossip_key_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (the default).
    Run,
    /// Validate the configuration and print it as TOML.
    CheckConfig,
    /// Read a password from standard input and print a `username:hash` line for auth.password_file.
    Passwd {
        /// The user name.
        username: String,
    },
    /// Talk to a running broker's admin API (needs admin.token_file on the broker).
    Ctl(CtlArgs),
}

#[derive(clap::Args, Debug)]
struct CtlArgs {
    /// The broker's admin endpoint.
    #[arg(
        long,
        env = "STARLING_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    url: String,
    /// File holding the admin API's bearer token (default: admin.token_file of --config).
    #[arg(long, env = "STARLING_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// This node: id, version, uptime, connections, members, evacuation.
    Node,
    /// The cluster's nodes and their connections, as this node last read them (rebalancing).
    Cluster,
    /// The clients connected to the cluster (every node that answers).
    Clients {
        /// Only client ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// One connected client, on whichever node it is.
    Client {
        /// Its client id.
        id: String,
    },
    /// One session, online or offline: what the store holds, its connection, its subscriptions.
    Session {
        /// Its client id.
        id: String,
    },
    /// Subscriptions of the cluster's sessions, online and offline.
    Subscriptions {
        /// Only this client's.
        #[arg(long)]
        client: Option<String>,
        /// Only this filter, exactly as subscribed.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Retained messages a filter matches (topic, QoS, size).
    Retained {
        /// The topic filter (default `#`).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Delete a topic's retained message.
    DeleteRetained {
        /// The topic name.
        topic: String,
    },
    /// Disconnect a client (MQTT 5: DISCONNECT 0x98); its session is kept unless --discard-session.
    Disconnect {
        /// Its client id.
        id: String,
        /// Remove its session too.
        #[arg(long)]
        discard_session: bool,
    },
    /// Evacuate the node: refuse new clients, ask connected ones to reconnect elsewhere (MQTT 5:
    /// 0x9C), sessions kept.
    Evacuate {
        /// Clients asked per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Wait up to this many seconds for the node to be empty (exit status 1 if it is not).
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Where the evacuation stands.
    Evacuation,
}

fn load_config(args: &RunArgs) -> anyhow::Result<BrokerConfig> {
    if let Some(path) = &args.config {
        std::fs::File::open(path)
            .with_context(|| format!("configuration file {} (--config)", path.display()))?;
    }
    let figment = BrokerConfig::figment(args.config.as_deref());
    let mut config = BrokerConfig::extract(&figment)?;
    if let Some(id) = &args.node_id {
        config.node_id = id.clone();
    }
    if let Some(addr) = args.tcp {
        config.listeners.tcp = Some(addr);
    }
    if args.no_tcp {
        config.listeners.tcp = None;
    }
    if let Some(addr) = args.ws {
        config.listeners.ws = Some(addr);
    }
    if let Some(addr) = args.admin_bind {
        config.admin.bind = Some(addr);
    }
    if args.no_admin {
        config.admin.bind = None;
    }
    if let Some(level) = &args.log_level {
        config.log.level = level.clone();
    }
    if let Some(format) = &args.log_format {
        config.log.format = match format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => anyhow::bail!("--log-format: {other:?} is neither `text` nor `json`"),
        };
    }
    let cluster = &mut config.cluster;
    if let Some(url) = &args.redis_url {
        cluster.redis_url = Some(url.clone());
    }
    if let Some(path) = &args.redis_password_file {
        let password = std::fs::read_to_string(path)
            .with_context(|| format!("--redis-password-file {}", path.display()))?;
        if let Some(sentinel) = &mut cluster.redis_sentinel {
            // Read where the broker starts, like the file's other passwords.
            sentinel.password_file = Some(path.clone());
        } else {
            let Some(url) = &cluster.redis_url else {
                anyhow::bail!(
                    "--redis-password-file needs a Redis (--redis-url, cluster.redis_url or cluster.redis_sentinel)"
                );
            };
            cluster.redis_url = Some(starling_config::redis_url::with_password(
                url,
                password.trim(),
            )?);
        }
    }
    if let Some(addr) = args.gossip_bind {
        cluster.gossip_bind = Some(addr);
    }
    if let Some(addr) = args.gossip_advertise {
        cluster.gossip_advertise = Some(addr);
    }
    if !args.gossip_seeds.is_empty() {
        cluster.gossip_seeds = args.gossip_seeds.clone();
    }
    if let Some(path) = &args.gossip_key_file {
        cluster.gossip_key_file = Some(path.clone());
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(config: &BrokerConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("log.level: {:?} is not a valid filter", config.log.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message (with its causes) is what a user needs; no backtrace.
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Passwd { username } => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(
                !password.is_empty(),
                "the password on standard input is empty"
            );
            let hash = starling_broker::auth::hash_password(password)?;
            println!("{username}:{hash}");
            Ok(())
        }
        Command::Ctl(args) => {
            let token_file = match &args.token_file {
                Some(path) => path.clone(),
                None => load_config(&cli.run)?.admin.token_file.context(
                    "no admin token: pass --token-file, or --config with admin.token_file",
                )?,
            };
            let request = match &args.what {
                CtlCommand::Node => ctl::Request::Node,
                CtlCommand::Cluster => ctl::Request::Cluster,
                CtlCommand::Clients { prefix } => ctl::Request::Clients {
                    prefix: prefix.clone(),
                },
                CtlCommand::Client { id } => ctl::Request::Client { id: id.clone() },
                CtlCommand::Session { id } => ctl::Request::Session { id: id.clone() },
                CtlCommand::Subscriptions { client, filter } => ctl::Request::Subscriptions {
                    client: client.clone(),
                    filter: filter.clone(),
                },
                CtlCommand::Retained { filter } => ctl::Request::Retained {
                    filter: filter.clone(),
                },
                CtlCommand::DeleteRetained { topic } => ctl::Request::DeleteRetained {
                    topic: topic.clone(),
                },
                CtlCommand::Disconnect {
                    id,
                    discard_session,
                } => ctl::Request::Disconnect {
                    id: id.clone(),
                    discard_session: *discard_session,
                },
                CtlCommand::Evacuate { rate, wait } => ctl::Request::Evacuate {
                    rate: *rate,
                    wait_secs: *wait,
                },
                CtlCommand::Evacuation => ctl::Request::Evacuation,
            };
            let admin = ctl::Admin::new(&args.url, &token_file)?;
            print!("{}", admin.run(&request, args.json)?);
            Ok(())
        }
        Command::CheckConfig => {
            let config = load_config(&cli.run)?;
            print!("{}", config.redacted().to_toml_string()?);
            Ok(())
        }
        Command::Run => {
            let config = load_config(&cli.run)?;
            init_logging(&config)?;
            for warning in starling_config::exposure_warnings(&config) {
                tracing::warn!("{warning}");
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                // Starting may wait long for Redis; a stop request meanwhile ends it cleanly.
                let server = tokio::select! {
                    server = Server::bind(config) => server?,
                    _ = shutdown_signal() => {
                        tracing::info!("stopped while starting");
                        return anyhow::Ok(());
                    }
                };
                let a = server.addresses().clone();
                tracing::info!(tcp = ?a.tcp, tls = ?a.tls, ws = ?a.ws, admin = ?a.admin, "listening");
                server.run(shutdown_signal()).await;
                anyhow::Ok(())
            })
        }
    }
}
