//! `tollgate issuer`: make a signing key; sign license files.

use super::{Exit, Failure};
use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use tollgate::Seats;
use tollgate::license::issuer::{IssuerKey, LicenseTerms, parse_time, read_small_text};
use tollgate::license::{Clock, SystemClock};

/// `tollgate issuer …`
#[derive(Debug, Subcommand)]
pub(crate) enum IssuerCommand {
    /// Create an Ed25519 issuer key pair: DIR/issuer.key (secret, mode 0600) and DIR/issuer.pub.
    Keygen {
        /// Directory to write the key files into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a license file with an issuer key.
    Sign(SignArgs),
}

/// Arguments of `tollgate issuer sign`.
#[derive(Debug, Args)]
#[command(after_help = "\
Times are RFC 3339 (2027-01-31T00:00:00Z), a date (2027-01-31) or unix seconds.

Example:
  tollgate issuer sign --key keys/issuer.key --license-id acme-pro --seats 5 \\
      --expires 2027-12-31 --plugin hello-licensed --customer 'ACME Corp' --out acme.license")]
pub(crate) struct SignArgs {
    /// The issuer's secret key file (from `tollgate issuer keygen`).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// The license id plugins ask for.
    #[arg(long, value_name = "ID")]
    license_id: String,
    /// Seats granted: a whole number, or `unlimited`.
    #[arg(long, value_name = "N|unlimited", value_parser = parse_seats)]
    seats: Seats,
    /// Not valid before this time.
    #[arg(long, value_name = "T", value_parser = parse_time)]
    not_before: Option<u64>,
    /// Not valid after this time.
    #[arg(long, value_name = "T", value_parser = parse_time)]
    expires: Option<u64>,
    /// Only this plugin may use it, by name or sha256:DIGEST; repeatable. Default: any plugin.
    #[arg(long = "plugin", value_name = "NAME|sha256:DIGEST")]
    plugins: Vec<String>,
    /// Who the license is issued to.
    #[arg(long, value_name = "NAME")]
    customer: Option<String>,
    /// Where to write the license file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub(crate) fn parse_seats(s: &str) -> Result<Seats, String> {
    match s {
        "unlimited" => Ok(Seats::Unlimited),
        n => n.parse().map(Seats::Counted).map_err(|_| {
            format!("seat count {n:?} is not a whole number from 0 to 4294967295 or 'unlimited'")
        }),
    }
}

fn write_new(path: &Path, text: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() && !force {
            format!(
                "{} exists already; pass --force to replace it",
                path.display()
            )
        } else {
            format!("cannot write {}", path.display())
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn run(cmd: IssuerCommand) -> Result<Exit, Failure> {
    match cmd {
        IssuerCommand::Keygen { out, force } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))
                .map_err(Failure::usage)?;
            let key = IssuerKey::generate().map_err(Failure::usage)?;
            let secret = out.join("issuer.key");
            let public = out.join("issuer.pub");
            write_new(&secret, &key.to_file_text(), 0o600, force).map_err(Failure::usage)?;
            write_new(&public, &key.public().to_file_text(), 0o644, force)
                .map_err(Failure::usage)?;
            println!("issuer key {} written:", key.public().key_id());
            println!("  secret: {} (mode 0600; keep it safe)", secret.display());
            println!(
                "  public: {} (hosts trust it with `tollgate trust add`)",
                public.display()
            );
            Ok(Exit::Ok)
        }
        IssuerCommand::Sign(a) => {
            let text = read_small_text(&a.key).map_err(Failure::usage)?;
            let key = IssuerKey::from_file_text(&text)
                .with_context(|| format!("{} is not an issuer secret key", a.key.display()))
                .map_err(Failure::usage)?;
            let mut terms = LicenseTerms::new(a.license_id, a.seats);
            terms.not_before = a.not_before;
            terms.expires_at = a.expires;
            terms.plugins = a.plugins;
            terms.customer = a.customer;
            let signed = key
                .sign(terms, SystemClock.now_secs())
                .map_err(|e| Failure::usage(anyhow!("cannot sign these terms: {e}")))?;
            write_new(&a.out, &signed.to_file_text(), 0o644, true).map_err(Failure::usage)?;
            println!(
                "license {} (grant {}) signed by issuer {} -> {}",
                signed.terms.license_id,
                signed.terms.grant,
                signed.terms.issuer,
                a.out.display()
            );
            Ok(Exit::Ok)
        }
    }
}
