//! The CLI as a client of `mayfly serve`: `run --server`, `ls`, `kill`,
//! `token` and the remote `audit` commands.

pub mod http;
mod run;
mod sanitize;
pub mod shell;
mod table;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use hyper::Method;
use mayfly_core::ExitCode;
use serde_json::{json, Value};

use http::{Client, Failure};
use table::Table;

pub use run::run;

/// How to prove who you are to a server, and which certificate to trust.
#[derive(Debug, Args, Clone)]
pub struct AuthArgs {
    /// File holding the API token; MAYFLY_TOKEN is read when absent.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https:// server.
    #[arg(long, env = "MAYFLY_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

impl AuthArgs {
    pub fn client(&self, url: &str) -> Result<Client, Failure> {
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("cannot read the token file {}: {e}", path.display())))?,
            None => std::env::var("MAYFLY_TOKEN")
                .ok()
                .filter(|token| !token.trim().is_empty())
                .ok_or_else(|| Failure::usage("no API token: set MAYFLY_TOKEN or pass --token-file FILE"))?,
        };
        Client::new(url, token.trim().to_string(), self.ca_cert.as_ref())
    }
}

/// How to reach the server.
#[derive(Debug, Args, Clone)]
pub struct RemoteArgs {
    /// Server URL, such as http://127.0.0.1:8470.
    #[arg(long = "server", env = "MAYFLY_URL", value_name = "URL")]
    pub server: Option<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl RemoteArgs {
    pub fn client(&self) -> Result<Client, Failure> {
        let Some(url) = &self.server else {
            return Err(Failure::usage("no server given: pass --server URL or set MAYFLY_URL"));
        };
        self.auth.client(url)
    }
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Only sessions in this state: pending, starting, running, terminating, destroyed or failed.
    #[arg(long)]
    pub state: Option<String>,
    /// Only sessions of this owner; listing others' sessions needs permission.
    #[arg(long)]
    pub owner: Option<String>,
    /// List at most this many sessions, the newest ones, from 1 to 10000.
    #[arg(long, default_value_t = 200)]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Ids of the sessions to destroy.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; its secret is printed once.
    Create(TokenCreateArgs),
    /// List API tokens (prefix, name, expiry); secrets are never shown.
    List(TokenListArgs),
    /// Revoke an API token by id.
    Revoke(TokenRevokeArgs),
    /// Print a new random token for MAYFLY_BOOTSTRAP_TOKEN, without contacting a server.
    Generate,
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// A name that says what the token is for, such as ci-runner.
    #[arg(long)]
    pub name: String,
    /// Whose token; your own when absent.
    #[arg(long)]
    pub principal: Option<String>,
    /// Groups of the principal, comma-separated; setting them needs permission.
    #[arg(long, value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// Lifetime, such as 30d or 12h; at most 366d.
    #[arg(long, default_value = "30d")]
    pub expires_in: String,
    /// Print the token and its record as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Whose tokens; your own when absent.
    #[arg(long)]
    pub principal: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Print the revoked token's record as JSON.
    #[arg(long)]
    pub json: bool,
    /// Id of the token, as `mayfly token list` shows it (tok-...).
    pub id: String,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs an async client command on a small runtime.
pub fn run_async(future: impl std::future::Future<Output = Result<i32, Failure>>) -> Result<i32, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure { code: ExitCode::SETUP_FAILED, message: format!("cannot start the async runtime: {error}") })?;
    runtime.block_on(future)
}

/// Runs an async client command and maps failures to messages and exit codes.
pub fn block_on(future: impl std::future::Future<Output = Result<i32, Failure>>) -> i32 {
    match run_async(future) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("mayfly: {}", failure.message);
            failure.code
        }
    }
}

pub(crate) fn encode(value: &str) -> String {
    value.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// "4m12s left", "ended 3m ago" and the like.
pub fn describe_time(session: &Value, now: i64) -> String {
    let ms = |key: &str| session.get(key).and_then(Value::as_i64);
    let short = |millis: i64| mayfly_core::Ttl::from_secs((millis.max(0) / 1000) as u64).to_string();
    match (ms("ended_unix_ms"), ms("deadline_unix_ms")) {
        (Some(ended), _) => format!("ended {} ago", short(now - ended)),
        (None, Some(deadline)) => format!("{} left", short(deadline - now)),
        _ => String::new(),
    }
}

pub fn ls(args: LsArgs) -> i32 {
    block_on(async move {
        if !(1..=10_000).contains(&args.limit) {
            return Err(Failure::usage(format!("--limit {} is out of range: allowed is 1 to 10000", args.limit)));
        }
        let client = args.remote.client()?;
        let mut sessions: Vec<Value> = Vec::new();
        let mut after: Option<String> = None;
        while sessions.len() < args.limit as usize {
            let page = (args.limit as usize - sessions.len()).min(500);
            let mut query = format!("/v1/sessions?order=newest&limit={page}");
            for (key, value) in [("state", &args.state), ("owner", &args.owner), ("after", &after)] {
                if let Some(value) = value {
                    query.push_str(&format!("&{key}={}", encode(value)));
                }
            }
            let body = client.expect(Method::GET, &query, None).await?;
            sessions.extend(body["sessions"].as_array().cloned().unwrap_or_default());
            after = body["next"].as_str().map(str::to_string);
            if after.is_none() {
                break;
            }
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&json!({ "sessions": sessions })).expect("serializes"));
            return Ok(0);
        }
        let now = now_ms();
        // Pages come in id order; people read sessions by creation time.
        sessions.sort_by_key(|s| s["created_unix_ms"].as_i64().unwrap_or(0));
        let mut table = Table::new(&["ID", "OWNER", "PROFILE", "STATE", "TIME", "END", "COMMAND"]);
        for s in &sessions {
            let end = match s.get("end") {
                Some(Value::Object(end)) => end.get("reason").and_then(Value::as_str).unwrap_or("").to_string(),
                _ => String::new(),
            };
            let command: Vec<&str> = s["command"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            table.row(vec![
                s["id"].as_str().unwrap_or("").into(),
                s["owner"].as_str().unwrap_or("").into(),
                s["profile"].as_str().unwrap_or("").into(),
                s["state"].as_str().unwrap_or("").into(),
                describe_time(s, now),
                end,
                table::clip(&command.join(" "), 40),
            ]);
        }
        if sessions.is_empty() {
            println!("no sessions");
        } else {
            print!("{}", table.render());
        }
        Ok(0)
    })
}

pub fn kill(args: KillArgs) -> i32 {
    block_on(async move {
        let client = args.remote.client()?;
        let mut worst = 0;
        let mut results = Vec::new();
        for id in &args.ids {
            match client.expect(Method::DELETE, &format!("/v1/sessions/{}", encode(id)), None).await {
                Ok(session) => {
                    if !args.json {
                        let state = session["state"].as_str().unwrap_or("?");
                        let reason = session["end"]["detail"].as_str().or(session["end"]["reason"].as_str()).unwrap_or("");
                        println!("{id}: {state}{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") });
                    }
                    results.push(session);
                }
                Err(failure) => {
                    eprintln!("mayfly: {id}: {}", failure.message);
                    worst = worst.max(failure.code);
                    results.push(json!({ "id": id, "error": failure.message }));
                }
            }
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&json!({ "sessions": results })).expect("serializes"));
        }
        Ok(worst)
    })
}

pub fn token(command: TokenCommand) -> i32 {
    match command {
        TokenCommand::Generate => {
            println!("{}", mayfly_control::tokens::generate_text());
            0
        }
        TokenCommand::Create(args) => block_on(async move {
            let client = args.remote.client()?;
            let mut body = json!({ "name": args.name, "expires_in": args.expires_in });
            if let Some(principal) = &args.principal {
                body["principal"] = json!(principal);
            }
            if let Some(groups) = &args.groups {
                body["groups"] = json!(groups);
            }
            let created = client.expect(Method::POST, "/v1/tokens", Some(&body)).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&created).expect("serializes"));
            } else {
                let record = &created["record"];
                eprintln!(
                    "mayfly: created token {} ({}) for {}; it is shown only this once:",
                    record["id"].as_str().unwrap_or(""),
                    record["name"].as_str().unwrap_or(""),
                    record["principal"].as_str().unwrap_or("")
                );
                println!("{}", created["token"].as_str().unwrap_or(""));
            }
            Ok(0)
        }),
        TokenCommand::List(args) => block_on(async move {
            let client = args.remote.client()?;
            let path = match &args.principal {
                Some(p) => format!("/v1/tokens?principal={}", encode(p)),
                None => "/v1/tokens".into(),
            };
            let body = client.expect(Method::GET, &path, None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body).expect("serializes"));
                return Ok(0);
            }
            let now = now_ms();
            let mut table = Table::new(&["ID", "PREFIX", "PRINCIPAL", "NAME", "STATUS"]);
            for t in body["tokens"].as_array().cloned().unwrap_or_default() {
                let status = if t["revoked_unix_ms"].is_i64() {
                    "revoked".to_string()
                } else {
                    match t["expires_unix_ms"].as_i64() {
                        Some(e) if e <= now => "expired".into(),
                        Some(e) => format!("expires in {}", mayfly_core::Ttl::from_secs(((e - now) / 1000) as u64)),
                        None => "never expires".into(),
                    }
                };
                table.row(vec![
                    t["id"].as_str().unwrap_or("").into(),
                    t["prefix"].as_str().unwrap_or("").into(),
                    t["principal"].as_str().unwrap_or("").into(),
                    t["name"].as_str().unwrap_or("").into(),
                    status,
                ]);
            }
            print!("{}", table.render());
            Ok(0)
        }),
        TokenCommand::Revoke(args) => block_on(async move {
            let client = args.remote.client()?;
            let token = client.expect(Method::DELETE, &format!("/v1/tokens/{}", encode(&args.id)), None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&token).expect("serializes"));
            } else {
                println!("{}: revoked", args.id);
            }
            Ok(0)
        }),
    }
}

/// `mayfly audit verify --server`: requests the server's verification of its log.
pub fn audit_verify(url: &str, auth: &AuthArgs, json_output: bool) -> i32 {
    block_on(async move {
        let client = auth.client(url)?;
        let body = client.expect(Method::GET, "/v1/audit/verify", None).await?;
        let intact = body["intact"].as_bool().unwrap_or(false);
        if json_output {
            println!("{body}");
        } else if intact {
            let v = &body["verified"];
            println!("audit log intact: {} records, {} checkpoints, last {}", v["records"], v["checkpoints"], v["last_seq"]);
        } else {
            println!("audit log BROKEN at line {}: {}", body["line"], body["reason"].as_str().unwrap_or(""));
        }
        Ok(if intact { 0 } else { crate::audit::BROKEN })
    })
}

/// `mayfly audit export --server`: prints the server's records as JSON lines.
pub fn audit_export(url: &str, auth: &AuthArgs, since: u64) -> i32 {
    block_on(async move {
        let client = auth.client(url)?;
        let mut next = Some(since);
        while let Some(from) = next {
            let body = client.expect(Method::GET, &format!("/v1/audit?since={from}&limit=1000"), None).await?;
            for record in body["records"].as_array().cloned().unwrap_or_default() {
                println!("{record}");
            }
            next = body["next"].as_u64();
        }
        Ok(0)
    })
}
