//! Email through lettre's async SMTP transport: STARTTLS (default) or implicit TLS with
//! credentials from the environment in production, plain SMTP for a loopback relay.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::SendFailure;
use crate::secret::Secret;

pub use crate::config::acting::Security;

/// Recipients and the transport that reaches them.
pub struct EmailChannel {
    from: Mailbox,
    to: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl std::fmt::Debug for EmailChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailChannel").field("from", &self.from).field("to", &self.to).finish_non_exhaustive()
    }
}

impl EmailChannel {
    /// `relay` is `host:port` (port defaults to 587 for STARTTLS, 465 for TLS, 25 for none).
    pub fn new(
        relay: &str,
        security: Security,
        from: &str,
        to: &[String],
        credentials: Option<(String, Secret)>,
        timeout: Duration,
    ) -> Result<EmailChannel, String> {
        let from: Mailbox = from.parse().map_err(|e| format!("from {from:?}: {e}"))?;
        let to = to
            .iter()
            .map(|t| t.parse::<Mailbox>().map_err(|e| format!("to {t:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err("an email channel needs at least one recipient in to = [...]".into());
        }
        let (host, port) = match relay.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|e| format!("smtp port in {relay:?}: {e}"))?)),
            None => (relay, None),
        };
        let builder = match security {
            Security::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| format!("smtp {host:?}: {e}"))?
                .port(port.unwrap_or(587)),
            Security::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| format!("smtp {host:?}: {e}"))?
                .port(port.unwrap_or(465)),
            Security::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port.unwrap_or(25)),
        };
        let builder = match credentials {
            Some((user, password)) => builder.credentials(Credentials::new(user, password.0)),
            None => builder,
        };
        Ok(EmailChannel { from, to, transport: builder.timeout(Some(timeout)).build() })
    }

    /// Sends one message; the subject is the text's first line.
    pub async fn send(&self, text: &str) -> Result<(), SendFailure> {
        let subject = text.lines().next().unwrap_or("rollwatch").trim();
        let mut builder = Message::builder().from(self.from.clone()).subject(subject).header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let message = builder.body(text.to_string()).map_err(|e| SendFailure {
            message: format!("building the message: {e}"),
            retry_after: None,
            permanent: true,
        })?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            // A permanent SMTP reply (5xx) will not change on retry; everything else may (a
            // refused connection is neither transient nor permanent to lettre).
            Err(e) if e.is_permanent() => {
                Err(SendFailure { message: format!("SMTP: {e}"), retry_after: None, permanent: true })
            }
            Err(e) => Err(SendFailure::transient(format!("SMTP: {}", crate::error_chain(&e)))),
        }
    }
}
