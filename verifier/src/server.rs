//! The verifier process: start-up, the HTTPS accept loop, and shutdown.
//!
//! Owns the order of start-up (data directory, HPKE key, TLS, database, first token, webhook
//! clients, stored population, listening socket), the connections, and the two background
//! tasks: the [`Scorer`] (which first scores whatever was stored but not scored before this
//! start) and the webhook [`Dispatcher`]. Hands each request to the [`api`] router, merged
//! with the [`dashboard`]'s (pages, admin API, `/metrics`, `/readyz`); ingest, the scorer and
//! `/metrics` share one [`Metrics`]. Never starts serving before the database is open and
//! migrated, and on shutdown stops accepting, lets open requests finish (each commits before
//! it answers) for up to [`SHUTDOWN_DEADLINE`], then stops the background tasks (a scorer
//! pass in progress finishes; an unfinished delivery attempt is made again next start) and
//! closes the database.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use cadence_wire::VerifierPublicKey;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::alerts::Dispatcher;
use crate::api::{self, AppState, now_ms};
use crate::config::{Settings, TlsSource};
use crate::dashboard::{self, DashboardState, auth::AdminAuth};
use crate::ingest::Ingest;
use crate::keys::{self, Token};
use crate::metrics::Metrics;
use crate::scorer::Scorer;
use crate::store::Store;
use crate::{Error, tls};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send its request headers (slow clients hold a connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open requests get to finish once shutdown starts.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// What an operator needs to know once the verifier is up.
#[derive(Debug, Clone)]
pub struct Startup {
    /// The address actually bound (the port is real even when `:0` was asked for).
    pub addr: SocketAddr,
    /// The development CA to pin in agents, when one is used.
    pub ca_cert: Option<PathBuf>,
    /// The verifier's HPKE public key, to configure in agents.
    pub public_key: VerifierPublicKey,
    /// A first enrollment token, made because none existed (and none was configured).
    pub first_token: Option<Token>,
    /// The data directory in use.
    pub data_dir: PathBuf,
}

/// A verifier that is bound and ready; [`run`](Verifier::run) serves until shutdown.
pub struct Verifier {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    store: Store,
    scorer: Scorer,
    dispatcher: Dispatcher,
    startup: Startup,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("startup", &self.startup)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Prepares everything and binds the listening socket; nothing is served yet.
    pub async fn start(settings: &Settings) -> Result<Verifier, Error> {
        tls::install_crypto_provider();
        keys::create_data_dir(&settings.data_dir)?;
        let (hpke, created) = keys::load_or_create_hpke(&settings.data_dir)?;
        if created {
            tracing::info!(public_key = %hpke.public_key(), "made the verifier's HPKE key pair");
        }
        let (cert, key) = match &settings.tls {
            TlsSource::DevCa => {
                let (cert, key, made) = tls::ensure_dev_ca(&settings.data_dir)?;
                if made {
                    tracing::info!("made a development CA and server certificate");
                }
                (cert, key)
            }
            TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        };
        let acceptor = TlsAcceptor::from(tls::server_config(&cert, &key)?);

        let store = Store::open(&settings.database).await?;
        store
            .check_verifier_key(&hpke.public_key(), now_ms())
            .await?;
        let first_token = if settings.extra_tokens.is_empty() && store.token_count().await? == 0 {
            let token = Token::generate()?;
            store.add_token(&token.hash(), now_ms()).await?;
            Some(token)
        } else {
            None
        };

        let (dispatcher, outbox) = Dispatcher::new(store.clone(), &settings.webhooks)?;
        let metrics = Arc::new(Metrics::default());
        let scorer = Scorer::load_with_metrics(
            store.clone(),
            settings.scoring.clone(),
            outbox.clone(),
            metrics.clone(),
        )
        .await?;
        let dashboard = Arc::new(DashboardState {
            store: store.clone(),
            metrics: metrics.clone(),
            auth: AdminAuth::new(&settings.admin_tokens, &settings.metrics_tokens)?,
            lockout: settings.scoring.trust.lockout,
            silent_after_secs: settings.silent_after_secs,
        });

        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: settings.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: settings.listen,
            source,
        })?;

        let public_key = hpke.public_key();
        let state = Arc::new(AppState {
            ingest: Ingest::new(store.clone(), Arc::new(hpke))
                .with_scoring(scorer.clone(), outbox)
                .with_metrics(metrics),
            store: store.clone(),
            public_key,
            extra_token_hashes: settings
                .extra_tokens
                .iter()
                .map(|t| keys::token_hash(t))
                .collect(),
            max_body_bytes: settings.max_body_bytes,
        });
        Ok(Verifier {
            listener,
            acceptor,
            router: api::router(state).merge(dashboard::router(dashboard)),
            store,
            scorer,
            dispatcher,
            startup: Startup {
                addr,
                ca_cert: settings.dev_ca_path(),
                public_key,
                first_token,
                data_dir: settings.data_dir.clone(),
            },
        })
    }

    /// What was set up.
    pub fn startup(&self) -> &Startup {
        &self.startup
    }

    /// Serves until `shutdown` completes, then finishes open requests and closes the store.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Verifier {
            listener,
            acceptor,
            router,
            store,
            scorer,
            dispatcher,
            startup,
        } = self;
        let (stop_tasks, tasks_stopped) = watch::channel(false);
        let scoring = tokio::spawn(scorer.run(tasks_stopped.clone()));
        let delivery = tokio::spawn(dispatcher.run(tasks_stopped));
        tracing::info!(addr = %startup.addr, "serving");
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // Out of file descriptors and the like: wait instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let acceptor = acceptor.clone();
                    let service = TowerToHyperService::new(router.clone());
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: finishing open requests");
        if tokio::time::timeout(SHUTDOWN_DEADLINE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("requests still open at the shutdown deadline; closing them");
        }
        let _ = stop_tasks.send(true);
        let tasks = async {
            for (name, task) in [("scorer", scoring), ("webhook delivery", delivery)] {
                if let Err(e) = task.await {
                    tracing::error!(task = name, error = %e, "background task ended abnormally");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_DEADLINE, tasks)
            .await
            .is_err()
        {
            tracing::warn!("background tasks still running at the shutdown deadline");
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Starts a verifier and serves until `shutdown` completes.
pub async fn serve(settings: &Settings, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Verifier::start(settings).await?.run(shutdown).await
}

/// Completes on Ctrl-C, or on SIGTERM on Unix.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
