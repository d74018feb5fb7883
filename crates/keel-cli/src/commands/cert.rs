//! `keelctl cert`: development certificates (see the keel-certs crate), written where keel's
//! TLS flags can point at them.

use anyhow::Context;
use keel_certs::{Request, Validity};

use super::Outcome;
use crate::args::CertCommand;

pub fn run(command: &CertCommand) -> anyhow::Result<Outcome> {
    match command {
        CertCommand::Ca { out, name, days } => {
            let ca = keel_certs::new_ca(name, Validity::days(*days)).context("making the CA")?;
            keel_certs::write_pair(out, &ca, keel_certs::CA_CERT, keel_certs::CA_KEY)?;
            Ok(Outcome::Done(format!(
                "{}\n{}\n",
                out.join(keel_certs::CA_CERT).display(),
                out.join(keel_certs::CA_KEY).display()
            )))
        }
        CertCommand::Issue {
            ca,
            name,
            san,
            client,
            days,
            expired,
            out,
        } => {
            let authority = keel_certs::read_ca(ca)?;
            let request = Request {
                name: name.clone(),
                sans: san.iter().filter(|s| !s.trim().is_empty()).cloned().collect(),
                client_only: *client,
                validity: if *expired {
                    Validity::expired()
                } else {
                    Validity::days(*days)
                },
            };
            let pair = keel_certs::issue(&authority, &request)
                .with_context(|| format!("issuing a certificate for {name} with the CA in {}", ca.display()))?;
            keel_certs::write_pair(out, &pair, keel_certs::CERT, keel_certs::KEY)?;
            Ok(Outcome::Done(format!(
                "{}\n{}\n",
                out.join(keel_certs::CERT).display(),
                out.join(keel_certs::KEY).display()
            )))
        }
    }
}
