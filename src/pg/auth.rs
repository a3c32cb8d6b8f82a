//! Connection start-up: the connection limit, TLS-only, SCRAM-SHA-256, and the session's role.
//!
//! With users configured every client authenticates with SCRAM-SHA-256 against the
//! verifier of its startup user name. Without users (loopback only, checked at bind) every
//! client is let in as admin. Either way the session is registered for cancel requests and
//! starts with the configured `statement_timeout`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, METADATA_USER, PgWireConnectionState, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::sync::Mutex;

use super::errors;
use super::limits::{STATEMENT_TIMEOUT_KEY, Sessions};
use super::scram::{ScramError, ServerFirst, Verifier};
use crate::config::{PgUser, Role};
use crate::error::{C360Error, Result};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// The configured accounts, with their verifiers parsed once at start-up.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, (Role, Verifier)>,
}

impl Users {
    pub fn from_config(users: &[PgUser]) -> Result<Users> {
        let mut by_name = HashMap::new();
        for user in users {
            let verifier: Verifier = user.scram.parse().map_err(|message| C360Error::PgUser {
                user: user.name.clone(),
                message,
            })?;
            if by_name
                .insert(user.name.clone(), (user.role, verifier))
                .is_some()
            {
                return Err(C360Error::PgUser {
                    user: user.name.clone(),
                    message: "listed twice in [[pg.users]]".to_string(),
                });
            }
        }
        Ok(Users { by_name })
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Prints what `c360 hash-password` prints: a verifier for `password`.
pub fn hash_password(password: &str) -> Result<String> {
    if password.is_empty() {
        return Err(C360Error::InvalidArgument(
            "empty password: type one on standard input".to_string(),
        ));
    }
    Verifier::from_password(password, super::scram::DEFAULT_ITERATIONS)
        .map(|v| v.to_string())
        .map_err(C360Error::InvalidArgument)
}

/// What every connection's start-up needs, shared by all of them.
pub struct StartupPolicy {
    pub users: Users,
    pub tls_required: bool,
    pub statement_timeout_ms: u64,
    pub authentication_timeout: std::time::Duration,
    pub sessions: Arc<Sessions>,
}

enum Stage {
    Initial,
    /// SASL mechanisms sent; waiting for the client-first-message.
    AwaitingFirst {
        user: String,
    },
    /// Server-first sent; waiting for the client's proof.
    AwaitingFinal {
        user: String,
        role: Option<Role>,
        exchange: Box<ServerFirst>,
    },
}

/// One connection's start-up (it keeps the state of that connection's SCRAM exchange).
pub struct Startup {
    policy: Arc<StartupPolicy>,
    /// Set when the connection came in past `max_connections`: it is refused with 53300.
    over_limit: bool,
    stage: Mutex<Stage>,
    /// Set once the client is in, so that the connection loop can enforce the
    /// authentication timeout on the rest.
    admitted: Arc<std::sync::atomic::AtomicBool>,
}

impl Startup {
    pub fn new(policy: Arc<StartupPolicy>, over_limit: bool) -> Startup {
        Startup {
            policy,
            over_limit,
            stage: Mutex::new(Stage::Initial),
            admitted: Arc::default(),
        }
    }

    /// Resolves when the connection has not authenticated within the policy's
    /// `authentication_timeout` (as PostgreSQL's: a client that opens connections and never
    /// finishes them cannot hold every place); never once it has.
    pub fn authentication_expired(&self) -> impl std::future::Future<Output = ()> + use<> {
        let admitted = Arc::clone(&self.admitted);
        let timeout = self.policy.authentication_timeout;
        async move {
            tokio::time::sleep(timeout).await;
            if admitted.load(std::sync::atomic::Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Authentication is done: give the session its role, its key for cancel requests and
    /// its default timeout, then tell the client it is in.
    async fn admit<C>(&self, client: &mut C, role: Role) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (control, registration) = self.policy.sessions.register(pid, &secret);
        let extensions = client.session_extensions();
        // Typed extensions, unlike metadata, cannot be set by a client's startup packet.
        extensions.insert(role);
        extensions.insert(control);
        extensions.insert(registration);
        if self.policy.statement_timeout_ms > 0 {
            client.metadata_mut().insert(
                STATEMENT_TIMEOUT_KEY.to_string(),
                self.policy.statement_timeout_ms.to_string(),
            );
        }
        // The client's own `-c` options come after the server's defaults, as in PostgreSQL.
        super::settings::apply_startup_options(client);
        self.admitted
            .store(true, std::sync::atomic::Ordering::Release);
        let mut parameters = DefaultServerParameterProvider::default();
        // Clients parse server_version; pgwire's "16.6-pgwire-x" trips some of them.
        parameters.server_version = "16.6".to_string();
        parameters.is_superuser = role == Role::Admin;
        parameters.default_transaction_read_only = role == Role::Analyst;
        finish_authentication(client, &parameters).await
    }
}

fn auth_failed(user: &str) -> PgWireError {
    errors::fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

#[async_trait::async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut stage = self.stage.lock().await;
        let current = std::mem::replace(&mut *stage, Stage::Initial);
        match (message, current) {
            (PgWireFrontendMessage::Startup(startup), Stage::Initial) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                if self.over_limit {
                    return Err(errors::fatal("53300", "sorry, too many clients already"));
                }
                if self.policy.tls_required && !client.is_secure() {
                    return Err(errors::fatal(
                        "28000",
                        "this server accepts TLS connections only (use sslmode=require)",
                    ));
                }
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                if self.policy.users.is_empty() {
                    return self.admit(client, Role::Admin).await;
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                        vec![SCRAM_SHA_256.to_string()],
                    )))
                    .await?;
                *stage = Stage::AwaitingFirst { user };
                Ok(())
            }
            (
                PgWireFrontendMessage::PasswordMessageFamily(message),
                Stage::AwaitingFirst { user },
            ) => {
                let initial = message.into_sasl_initial_response()?;
                if initial.auth_method != SCRAM_SHA_256 {
                    return Err(errors::fatal(
                        "28000",
                        format!("unsupported SASL mechanism {}", initial.auth_method),
                    ));
                }
                let known = self.policy.users.by_name.get(&user).cloned();
                let role = known.as_ref().map(|(role, _)| *role);
                let verifier = known.map_or_else(Verifier::decoy, |(_, verifier)| verifier);
                let data = initial.data.unwrap_or_default();
                let exchange = ServerFirst::new(&data, verifier).map_err(|e| match e {
                    ScramError::Protocol(why) => errors::fatal("08P01", why),
                    ScramError::WrongPassword => auth_failed(&user),
                })?;
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::SASLContinue(exchange.message().to_string().into()),
                    ))
                    .await?;
                *stage = Stage::AwaitingFinal {
                    user,
                    role,
                    exchange: Box::new(exchange),
                };
                Ok(())
            }
            (
                PgWireFrontendMessage::PasswordMessageFamily(message),
                Stage::AwaitingFinal {
                    user,
                    role,
                    exchange,
                },
            ) => {
                let response = message.into_sasl_response()?;
                let verified = exchange.finish(&response.data);
                let (Ok(server_final), Some(role)) = (verified, role) else {
                    tracing::info!(%user, peer = %client.socket_addr(), "pg authentication failed");
                    return Err(auth_failed(&user));
                };
                client
                    .feed(PgWireBackendMessage::Authentication(
                        Authentication::SASLFinal(server_final.into()),
                    ))
                    .await?;
                self.admit(client, role).await
            }
            // Anything else during start-up is a protocol violation.
            _ => Err(errors::fatal(
                "08P01",
                "unexpected message during authentication",
            )),
        }
    }
}
