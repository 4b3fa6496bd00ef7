//! `occupancy key` and `occupancy token`: make an API key (the secret for
//! the client and the key file entry for the service) and sign a token
//! with one, so operators need no other tool.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::Args;

use super::capability::Capabilities;
use super::keys::{check_id, secret_digest_hex};
use crate::cli::output::{out, outln};

/// `occupancy key`.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// The key's id (letters, digits, '.', '_', '-').
    pub id: String,
    /// A capability, `PATTERN=OP[,OP…]` (`rooms:*=read,subscribe`); repeat
    /// for more. Operations: report, read, subscribe, admin, * (all).
    #[arg(long = "capability", short = 'c', required = true)]
    pub capabilities: Vec<String>,
}

/// `occupancy token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The signing API key, `KEY_ID:SECRET`.
    #[arg(long, env = "OCCUPANCY_KEY", hide_env_values = true)]
    pub key: String,
    /// A capability, `PATTERN=OP[,OP…]`; none: the key's own. A token can
    /// only narrow its key.
    #[arg(long = "capability", short = 'c')]
    pub capabilities: Vec<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

/// Parses `PATTERN=OP[,OP…]` arguments into the key file's shape.
///
/// # Errors
/// A message naming the bad argument.
pub fn parse_capabilities(args: &[String]) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in args {
        let (pattern, ops) = a
            .rsplit_once('=')
            .ok_or_else(|| format!("--capability {a:?}: expected PATTERN=OP[,OP…], e.g. rooms:*=read,subscribe"))?;
        map.entry(pattern.to_string())
            .or_default()
            .extend(ops.split(',').map(|o| o.trim().to_string()).filter(|o| !o.is_empty()));
    }
    Capabilities::parse(&map).map_err(|e| format!("--capability: {e}"))?;
    Ok(map)
}

fn toml_caps(map: &BTreeMap<String, Vec<String>>) -> String {
    let parts: Vec<String> = map
        .iter()
        .map(|(p, ops)| {
            let ops: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
            format!("{p:?} = [{}]", ops.join(", "))
        })
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

/// Makes a key: prints the credential for the client and the entry for
/// the key file. Returns the exit code.
pub fn key(args: &KeyArgs) -> i32 {
    let run = || -> Result<String, String> {
        check_id(&args.id)?;
        let caps = parse_capabilities(&args.capabilities)?;
        let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        Ok(format!(
            "# the client's credential (keep it secret; OCCUPANCY_KEY for the CLI):\n\
             # {id}:{secret}\n\
             # the key file entry (holds only the secret's SHA-256 digest):\n\
             [keys.{id}]\n\
             secret_sha256 = \"{digest}\"\n\
             capabilities = {caps}\n",
            id = args.id,
            digest = secret_digest_hex(&secret),
            caps = toml_caps(&caps),
        ))
    };
    match run() {
        Ok(out) => {
            out!("{out}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// Signs an HS256 token with an API key and prints it. Returns the exit
/// code.
pub fn token(args: &TokenArgs) -> i32 {
    let run = || -> Result<String, String> {
        let (id, secret) = args.key.trim().split_once(':').ok_or("--key: expected KEY_ID:SECRET")?;
        let caps = if args.capabilities.is_empty() {
            None
        } else {
            Some(parse_capabilities(&args.capabilities)?)
        };
        super::token::mint(id, secret, caps, args.ttl)
    };
    match run() {
        Ok(t) => {
            outln!("{t}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_arguments_parse_or_name_the_fault() {
        let m = parse_capabilities(&["rooms:*=read,subscribe".into(), "lobby=read".into()]).unwrap();
        assert_eq!(m["rooms:*"], ["read", "subscribe"]);
        assert!(parse_capabilities(&["rooms:*".into()])
            .unwrap_err()
            .contains("PATTERN=OP"));
        assert!(parse_capabilities(&["rooms:*=write".into()])
            .unwrap_err()
            .contains("write"));
        assert_eq!(
            toml_caps(&m),
            r#"{ "lobby" = ["read"], "rooms:*" = ["read", "subscribe"] }"#
        );
    }
}
